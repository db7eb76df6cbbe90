"""Reference image files read from disk (CLI ref2v and jobs files): each distinct file is read once,
through a bounded read with a size cap, and shared by every jobs-file line that names it.

Real files (PNG written with imageio, /dev/zero), the real CLI in a subprocess, the loopback API.
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import requests
from test_cli import cli, write_jobs

from hunyuancustom.batch import validate_jobs
from hunyuancustom.cli import read_jobs_file
from hunyuancustom.errors import ValidationError
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import read_image_file

ZERO = Path("/dev/zero")
CAP = 30 << 20  # the documented cap on an image file (README)
needs_dev_zero = pytest.mark.skipif(not ZERO.exists(), reason="needs /dev/zero")


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0)) as server:
        yield server


@pytest.fixture
def big_png(tmp_path):
    """A noisy PNG of about 300 KB: big enough that 300 private copies are plain to see."""
    rng = np.random.default_rng(7)
    path = tmp_path / "ref.png"
    iio.imwrite(path, rng.integers(0, 256, (320, 320, 3), dtype=np.uint8))
    assert path.stat().st_size > 250_000
    return path


def test_three_hundred_lines_naming_one_png_share_one_copy_and_run(api, big_png, tmp_path):
    # The same file named three ways: by a relative name, with ./, and by its absolute path.
    names = [big_png.name, f"./{big_png.name}", str(big_png)]
    jobs_file = write_jobs(tmp_path / "jobs.jsonl",
                           [{"image": names[i % 3], "prompt": f"prompt {i}"} for i in range(300)])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        jobs = read_jobs_file(jobs_file, tmp_path / "out", "720p")
        validate_jobs(jobs)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = big_png.stat().st_size
    assert len(jobs) == 300
    assert len({id(job.image.png) for job in jobs}) == 1
    assert jobs[0].image.png == big_png.read_bytes()
    assert grown < 2 * size, f"{grown} bytes held for 300 lines of one {size}-byte image"

    # The whole file through the CLI: every line done, the one image uploaded once.
    proc = cli("batch", jobs_file, "--concurrency", 16, "--api-base", api.base_url, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["done"] == 300 and summary["failed"] == 0
    assert api.stats()["submits"] == 300 and api.stats()["uploads"] == 1
    assert [data for data, *_ in api._files.values() if isinstance(data, bytes)] == [big_png.read_bytes()]


def test_an_image_file_over_the_cap_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:  # sparse: the size is there, the bytes are not
        f.truncate(CAP + 1)
    with pytest.raises(ValidationError, match=r"image: .*huge\.png is over the 30 MiB limit"):
        read_image_file(huge)


@needs_dev_zero
def test_dev_zero_as_the_image_fails_fast_with_the_cap(tmp_path):
    start = time.monotonic()
    with pytest.raises(ValidationError, match=r"image: /dev/zero is over the 30 MiB limit"):
        read_image_file(ZERO)
    assert time.monotonic() - start < 10


@needs_dev_zero
def test_ref2v_with_dev_zero_as_the_image_exits_2_before_any_request(api, tmp_path):
    proc = cli("ref2v", "--image", ZERO, "--prompt", "x", "-o", tmp_path / "o.mp4",
               "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "image: /dev/zero is over the 30 MiB limit for an image file" in proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert api.requests == [] and not (tmp_path / "o.mp4").exists()


@needs_dev_zero
def test_a_jobs_line_naming_dev_zero_fails_naming_the_line_before_any_request(api, big_png, tmp_path):
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", [
        {"image": big_png.name, "prompt": "fine"},
        {"image": str(ZERO), "prompt": "endless"},
    ])
    proc = cli("batch", jobs_file, "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "image: /dev/zero is over the 30 MiB limit for an image file" in proc.stderr
    assert "(line 2)" in proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert api.requests == [] and not (tmp_path / "jobs_videos").exists()


def test_a_directory_as_the_image_is_a_clear_error(tmp_path):
    with pytest.raises(ValidationError, match=r"image: cannot read .*: Is a directory"):
        read_image_file(tmp_path)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_an_image_file_is_uploaded_with_the_type_its_bytes_are(api, tmp_path, suffix):
    # A JPEG goes up as it is and says so; a format an API may not read (TIFF) goes up as PNG.
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / f"ref{suffix}"
    iio.imwrite(path, pixels)
    proc = cli("ref2v", "--image", path, "--prompt", "x", "--seed", 1, "-o", tmp_path / "o.mp4",
               "--api-base", api.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = next(r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)
    served = requests.get(body["image"], timeout=10)
    if suffix == ".jpg":
        assert served.headers["Content-Type"] == "image/jpeg"
        assert served.content == path.read_bytes()
    else:
        assert served.headers["Content-Type"] == "image/png"
        assert served.content.startswith(b"\x89PNG\r\n\x1a\n")  # really a PNG, not TIFF bytes
        assert np.array_equal(iio.imread(served.content), pixels)
