"""Containers that share a host name and a folder (issue 17, item 10): a live writer in another
pid namespace is never taken for dead, whatever its pid means here.

Real processes in a real second pid namespace (`unshare --pid --fork --mount-proc`, as in a
container: the writer is pid 1 there, while pid 1 here is another, live process). Skipped where
unshare is not allowed (not root, no user namespaces).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hunyuancustom.atomic import remove_stale_temps
from hunyuancustom.journal import Journal

REPO = Path(__file__).resolve().parent.parent
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="unshare --pid is not allowed here")


def in_other_namespace(code: str, *args) -> subprocess.Popen:
    """A Python process as pid 1 of a new pid namespace; it runs `code` until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*UNSHARE, sys.executable, "-c", code, *map(str, args)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


WRITER = """
import os, sys
from hunyuancustom.atomic import replacing
with replacing(sys.argv[1]) as tmp:
    tmp.write_bytes(b"written in another pid namespace")
    print(os.getpid(), tmp, flush=True)
    sys.stdin.read()  # still writing, until the test says
"""


def test_a_live_writers_temp_in_another_pid_namespace_is_never_removed(tmp_path):
    target = tmp_path / "out.mp4"
    writer = in_other_namespace(WRITER, target)
    try:
        pid, tmp = writer.stdout.readline().split(maxsplit=1)
        tmp = Path(tmp.strip())
        # An honest collision: the same host name, and its pid is a live other process here.
        assert pid == "1" and ".hc1-" in tmp.name and Path("/proc/1").exists()
        assert remove_stale_temps(tmp_path) == [] and tmp.exists()
        writer.stdin.close()  # the writer finishes: its file reaches its name whole
        assert writer.wait(30) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    assert target.read_bytes() == b"written in another pid namespace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_a_dead_writers_temp_in_another_pid_namespace_is_still_removed(tmp_path):
    writer = in_other_namespace(WRITER, tmp_path / "out.mp4")
    try:
        _, tmp = writer.stdout.readline().split(maxsplit=1)
        tmp = Path(tmp.strip())
        writer.send_signal(signal.SIGKILL)  # --kill-child: the namespace's pid 1 dies with it
        writer.wait(30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert tmp.exists()
    # The writer (pid 1 there) is killed by the kernel as its parent dies: give it a moment.
    deadline = time.monotonic() + 20
    while not remove_stale_temps(tmp_path):
        assert time.monotonic() < deadline, "a dead writer's temp was never removed"
        time.sleep(0.05)
    assert not tmp.exists()


CLAIMER = """
import sys
from hunyuancustom.journal import Journal
j = Journal(sys.argv[1])
d = j.acquire("fp-ns", model="m", request="{}", image_ref="sha256:x", seed=7)
print(d.kind, flush=True)
sys.stdin.read()  # the job runs (a long upload, say), until the test says
"""


def test_a_live_claim_made_in_another_pid_namespace_does_not_look_dead(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    Journal(path).close()
    owner = in_other_namespace(CLAIMER, path)
    try:
        assert owner.stdout.readline().strip() == "new", owner.stderr.read()
        with Journal(path) as journal:
            [row] = journal.list()
            assert row.owner_pid == 1 and row.owner_host.startswith(socket.gethostname())
            # The identical fixed-seed request here waits for that job instead of taking it over
            # (taking over a live job is how one request gets paid for twice).
            decision = journal.acquire("fp-ns", model="m", request="{}", image_ref="sha256:x",
                                       seed=7)
            assert decision.kind == "busy" and decision.row.id == row.id
            assert len(journal.list()) == 1
    finally:
        owner.stdin.close()
        owner.wait(30)
