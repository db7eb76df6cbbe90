"""Two processes, one identical request, one slow upload: exactly one submit reaches the provider.

Each run is a real `python -m hunyuancustom ref2v` process against the loopback API, whose media
upload is held (or answered 429 with a Retry-After) while the other process decides. The child
processes shorten the journal's claim timings through its module attributes, as a test may.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import TaskTimeoutError
from hunyuancustom.journal import Journal, default_path, file_identity
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, os, sys
from hunyuancustom import journal
for name, value in json.loads(os.environ["JOURNAL_OVERRIDES"]).items():
    setattr(journal, name, value)
from hunyuancustom.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0, distinct_videos=True)) as server:
        yield server


def start(api, ref, out, **overrides) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY="test-key",
               JOURNAL_OVERRIDES=json.dumps(overrides))
    return subprocess.Popen([sys.executable, "-c", CHILD, "ref2v", "--image", str(ref), "--prompt",
                             "The same request from two processes", "--seed", "42", "-o", str(out),
                             "--api-base", api.base_url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def submits(api) -> int:
    return sum(1 for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)


def wait_for_line(proc: subprocess.Popen, text: str) -> tuple[bool, list[str]]:
    """Read the process's status lines until one contains `text` (True) or it exits (False)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return True, seen
    return False, seen


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, err


def test_a_live_owner_on_this_machine_is_never_taken_over_during_a_slow_upload(api, ref, tmp_path):
    api.set_scenario(upload_stall_s=120.0, upload_stall_first_n=1)
    first = start(api, ref, tmp_path / "a.mp4")
    try:
        assert api.stalled.wait(60), "the first process never started its upload"
        # The second process treats every heartbeat as stale: only the owner's pid keeps the claim.
        second = start(api, ref, tmp_path / "b.mp4", STALE_CLAIM_S=0.0)
        waited, lines = wait_for_line(second, "Waiting for the identical job")
    finally:
        api.release_stalls()
    finish(first)
    out, _ = finish(second)
    assert submits(api) == 1, "two tasks were submitted (and billed) for one request"
    assert waited, "".join(lines)
    assert file_identity(tmp_path / "a.mp4") == file_identity(tmp_path / "b.mp4")


def test_an_owner_that_lost_its_claim_does_not_submit(api, ref, tmp_path):
    """A process on another machine sharing the folder (its heartbeat older than the stale time) is
    taken over by right; when its upload finally ends it must not submit too."""
    api.set_scenario(upload_stall_s=120.0, upload_stall_first_n=1)
    first = start(api, ref, tmp_path / "a.mp4", _HOST="another-machine")
    try:
        assert api.stalled.wait(60), "the first process never started its upload"
        second = start(api, ref, tmp_path / "b.mp4", STALE_CLAIM_S=0.0)
        finish(second)  # took the job over and ran it to the end
        assert submits(api) == 1
    finally:
        api.release_stalls()
    _, err = finish(first)
    assert submits(api) == 1, "the process that lost its claim submitted anyway"
    assert "was taken over by another process before the submit" in err
    # It then serves the other process's result instead: the same task's video.
    assert file_identity(tmp_path / "a.mp4") == file_identity(tmp_path / "b.mp4")


@pytest.mark.parametrize("slow", ["upload stall", "429 with Retry-After"])
def test_the_claim_is_refreshed_while_an_upload_is_slow(api, ref, tmp_path, slow):
    if slow == "upload stall":
        api.set_scenario(upload_stall_s=120.0, upload_stall_first_n=1)
    else:
        api.set_scenario(upload_responses=[{"status": 429, "headers": {"Retry-After": "2"}}] * 2)
    proc = start(api, ref, tmp_path / "a.mp4", HEARTBEAT_S=0.2)
    refreshed = False
    try:
        deadline = time.monotonic() + 30
        with Journal(default_path()) as j:
            while time.monotonic() < deadline and proc.poll() is None:
                rows = j.list()
                if rows and rows[0].status != "uploading":
                    break  # the upload is over: it had to be refreshed before this
                if rows and rows[0].heartbeat_at and rows[0].heartbeat_at > rows[0].created_at:
                    refreshed = True
                    break
                time.sleep(0.05)
    finally:
        api.release_stalls()
    finish(proc)
    assert refreshed, "the claim's heartbeat was never refreshed during the slow upload"
    assert submits(api) == 1


def test_waiting_for_an_identical_job_elsewhere_keeps_the_deadline(api, ref, tmp_path):
    """timeout_s bounds the whole run, the wait for another process's identical job included; the
    waiting run submits nothing and the other job's video serves the next run."""
    api.set_scenario(upload_stall_s=120.0, upload_stall_first_n=1)
    first = start(api, ref, tmp_path / "a.mp4")
    try:
        assert api.stalled.wait(60), "the first process never started its upload"
        params = {"prompt": "The same request from two processes", "seed": 42}
        with Journal.open_default() as journal, pytest.raises(TaskTimeoutError) as e:
            run_ref2v(REF2V_720P, ImageInput(png=ref.read_bytes()), params, tmp_path / "b.mp4",
                      settings=Settings(api_base=api.base_url, timeout_s=1.0),
                      api_key=ApiKey("test-key", "test"), journal=journal, decode=False)
        assert "waiting for the identical job" in str(e.value) and "timeout_s" in str(e.value)
        assert 1.0 <= e.value.elapsed_s < 10.0
        assert submits(api) == 0 and not (tmp_path / "b.mp4").exists()
    finally:
        api.release_stalls()
    finish(first)
    assert submits(api) == 1
