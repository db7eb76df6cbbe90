"""Paths that name no ordinary file: a FIFO nobody writes to, /dev/zero as the jobs file, a pipe.

The CLI runs as a user runs it, against the loopback API, with its data memory capped at 2 GiB so
that a read that never ends fails there (MemoryError) instead of exhausting the test machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from test_cli import REPO, write_jobs

from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import read_image_file

pytestmark = pytest.mark.skipif(os.name != "posix" or not Path("/dev/zero").exists(),
                                reason="FIFOs, /dev/zero and /dev/fd are POSIX")


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0)) as server:
        yield server


def _cap_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY="test-key")
    return subprocess.run([sys.executable, "-m", "hunyuancustom", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60, preexec_fn=_cap_memory)


def test_a_fifo_nobody_writes_to_as_the_image_fails_at_once_before_any_request(api, tmp_path):
    fifo = tmp_path / "ref.png"
    os.mkfifo(fifo)  # a plain open() would wait forever for a writer
    proc = run_cli("ref2v", "--image", fifo, "--prompt", "x", "-o", tmp_path / "o.mp4",
                   "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"image: {fifo} is a pipe (FIFO) that nothing was written to" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert api.requests == [] and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_jobs_file_that_is_a_fifo_or_dev_zero_is_refused_before_any_request(api, tmp_path, kind):
    if kind == "fifo":
        jobs = tmp_path / "jobs.jsonl"
        os.mkfifo(jobs)
        message = f"jobs_file: {jobs} is a pipe (FIFO) that nothing was written to"
    else:
        jobs = Path("/dev/zero")  # never ends: read whole, it runs out of memory
        message = "jobs_file: /dev/zero is over the 64 MiB limit for a jobs file"
    proc = run_cli("batch", jobs, "-o", tmp_path / "videos", "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert api.requests == [] and not (tmp_path / "videos").exists()


def test_an_image_through_a_pipe_with_a_writer_is_read_whole(tmp_path):
    # As `--image <(command)` passes it: a pipe whose writer sends more than the pipe holds, so
    # the reads must wait for it (the open must not, the reads must).
    png = iio.imwrite("<bytes>", np.random.default_rng(3).integers(0, 256, (256, 256, 3), np.uint8),
                      extension=".png")
    assert len(png) > 2 * 65536  # a pipe holds 64 KiB by default
    r, w = os.pipe()

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(png)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert read_image_file(f"/dev/fd/{r}") == png
    finally:
        thread.join(30)
        os.close(r)


def test_a_jobs_file_through_a_pipe_with_a_writer_is_read(api, tmp_path):
    from hunyuancustom.cli import read_jobs_file
    from hunyuancustom.testing.media import make_test_image

    make_test_image(tmp_path / "ref.png", 32, 32)
    text = write_jobs(tmp_path / "src.jsonl", [{"image": str(tmp_path / "ref.png"), "prompt": "x"}]
                      ).read_bytes()
    r, w = os.pipe()
    os.write(w, text)
    os.close(w)
    try:
        jobs = read_jobs_file(Path(f"/dev/fd/{r}"), tmp_path / "out", "720p")
    finally:
        os.close(r)
    assert [j.params["prompt"] for j in jobs] == ["x"]
