"""The job journal itself: fingerprints, claims, several OS processes at once, and its faults."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hunyuancustom.errors import ConfigError
from hunyuancustom.journal import Journal, JournalError, content_ref, default_path, fingerprint

REPO = Path(__file__).resolve().parent.parent
BODY = {"image": "https://x.test/a.png", "prompt": "p", "negative_prompt": "", "size": "1280*720",
        "guidance_scale": 7.5, "flow_shift": 13.0, "seed": 5, "enable_safety_checker": True}


def acquire(j, fp="f" * 64, seed=5, **kw):
    return j.acquire(fp, model="m", request="{}", image_ref="sha256:00", seed=seed, **kw)


def python(script: str, *args, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_journal_lives_in_the_data_folder_in_wal_mode(isolated_config):
    with Journal.open_default() as j:
        assert j.path == default_path() == isolated_config / "jobs.sqlite3"
        assert j._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_fingerprint_ignores_the_upload_url_and_key_order_but_not_content():
    a, req = fingerprint("m", BODY, content_ref(b"png-1"))
    b, _ = fingerprint("m", {**dict(reversed(BODY.items())), "image": "https://y.test/b.png"},
                       content_ref(b"png-1"))
    assert a == b and "image" not in json.loads(req)
    assert fingerprint("m", BODY, content_ref(b"png-2"))[0] != a
    assert fingerprint("m", {**BODY, "seed": 6}, content_ref(b"png-1"))[0] != a
    assert fingerprint("other", BODY, content_ref(b"png-1"))[0] != a


def test_rows_are_listed_and_found_by_id_or_task_id(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        rows = [acquire(j, fp=str(i) * 64).row for i in range(3)]
        j.update(rows[1].id, status="created", task_id="task-abc")
        j.update(rows[2].id, status="downloaded", output_path="/x.mp4", inference_ms=1234, release=True)
        assert [r.id for r in j.list()] == [rows[2].id, rows[1].id, rows[0].id]
        assert [r.id for r in j.list(status="created")] == [rows[1].id]
        assert j.get("task-abc").id == rows[1].id and j.get(str(rows[0].id)).id == rows[0].id
        assert j.get("nope") is None
        summary = j.get(rows[2].id).summary()
        assert summary["inference_ms"] == 1234 and summary["created"].endswith("Z")


def test_a_live_claim_is_busy_for_a_fixed_seed_and_ignored_for_seed_minus_one(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        first = acquire(j)
        j.update(first.row.id, status="processing", task_id="t1")
        assert acquire(j).kind == "busy"
        assert acquire(j, seed=-1, fp="e" * 64).kind == "new"
        j.update(first.row.id, release=True)
        resumed = acquire(j)
        assert resumed.kind == "resume" and resumed.row.task_id == "t1"


def test_a_release_whose_write_failed_does_not_block_this_process(tmp_path):
    # A real fault: another connection holds the write lock while the job ends, so the release
    # cannot be written. The process still knows it let go: the next identical run resumes the
    # task instead of waiting for itself forever.
    path = tmp_path / "j.sqlite3"
    with Journal(path, busy_timeout_s=0.2) as j:
        first = acquire(j)
        j.update(first.row.id, status="processing", task_id="t1")
        blocker = sqlite3.connect(str(path), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(JournalError, match="locked"):
            j.update(first.row.id, release=True)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert j.get(first.row.id).owner_token is not None  # the file still names this process
        resumed = acquire(j)
        assert resumed.kind == "resume" and resumed.row.id == first.row.id
        assert acquire(j).kind == "busy"  # and now it is held again, by the resumed job


def test_a_claim_of_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = python("""
        import sys
        from hunyuancustom.journal import Journal
        j = Journal(sys.argv[1])
        d = j.acquire("a" * 64, model="m", request="{}", image_ref="r", seed=5)
        j.update(d.row.id, status="processing", task_id="task-of-the-dead")
        print("CLAIMED", flush=True)
        sys.stdin.readline()
        """, path, stdin=subprocess.PIPE)
    assert child.stdout.readline().strip() == "CLAIMED"
    with Journal(path) as j:
        assert acquire(j, fp="a" * 64).kind == "busy"  # its owner is alive
        child.kill()
        child.wait()  # reaped: a zombie would still count as alive
        d = acquire(j, fp="a" * 64)
        assert d.kind == "resume" and d.row.task_id == "task-of-the-dead"


def claim_in_child(path, fp):
    child = python("""
        import sys
        from hunyuancustom.journal import Journal
        j = Journal(sys.argv[1])
        d = j.acquire(sys.argv[2], model="m", request="{}", image_ref="r", seed=5)
        j.update(d.row.id, status="processing", task_id="task-of-the-child")
        print("CLAIMED", flush=True)
        sys.stdin.readline()
        """, path, fp, stdin=subprocess.PIPE)
    assert child.stdout.readline().strip() == "CLAIMED"
    return child


def test_a_claim_on_this_machine_stands_while_its_process_lives_however_old_its_heartbeat(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = claim_in_child(path, "h" * 64)
    try:
        with sqlite3.connect(path) as c:  # an hour in a slow upload or Retry-After wait
            c.execute("UPDATE jobs SET heartbeat_at = heartbeat_at - 3600")
        c.close()
        with Journal(path) as j:
            assert acquire(j, fp="h" * 64).kind == "busy"
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times: Linux /proc")
def test_a_pid_now_used_by_another_process_does_not_keep_a_claim(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = claim_in_child(path, "p" * 64)
    try:
        # The same pid, but a process started at another time: the claim's process is gone.
        with sqlite3.connect(path) as c:
            token = c.execute("SELECT owner_token FROM jobs").fetchone()[0]
            base, _, started = token.rpartition("@")
            assert base and started.isdigit()
            c.execute("UPDATE jobs SET owner_token = ?", (f"{base}@{int(started) + 1}",))
        c.close()
        with Journal(path) as j:
            d = acquire(j, fp="p" * 64)
            assert d.kind == "resume" and d.row.task_id == "task-of-the-child"
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process states: Linux /proc")
def test_a_claim_of_an_exited_but_unreaped_process_is_taken_over(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = claim_in_child(path, "z" * 64)
    child.stdin.close()  # it exits; not reaped, it stays in the process table as a zombie
    stat = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 30
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        with Journal(path) as j:
            assert acquire(j, fp="z" * 64).kind == "resume"
    finally:
        child.wait()


def test_writes_of_a_job_whose_row_was_taken_over_are_refused(tmp_path):
    path = tmp_path / "j.sqlite3"
    with Journal(path) as j:
        mine = acquire(j).row
        # Another process takes the row over (what acquire does to a claim it finds dead).
        with sqlite3.connect(path) as c:
            c.execute("UPDATE jobs SET owner_token = 'another-process', owner_pid = 1")
        c.close()
        assert not j.update_owned(mine.id, expect_status="uploading", status="submitting")
        assert not j.heartbeat(mine.id) and not j.update_owned(mine.id, release=True)
        assert not j.delete_owned(mine.id)
        row = j.get(mine.id)
        assert (row.status, row.owner_token) == ("uploading", "another-process")
        # And a row still held, but no longer in the state the write expects, is not changed.
        other = acquire(j, fp="o" * 64).row
        assert j.update_owned(other.id, status="abandoned")
        assert not j.update_owned(other.id, expect_status="uploading", status="submitting")
        assert j.get(other.id).status == "abandoned"


def test_a_submit_interrupted_by_a_crash_is_reported_as_uncertain(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = python("""
        import os, sys
        from hunyuancustom.journal import Journal
        j = Journal(sys.argv[1])
        d = j.acquire("b" * 64, model="m", request="{}", image_ref="r", seed=-1)
        j.update(d.row.id, status="submitting")
        os._exit(9)  # gone between the submit and its answer
        """, path)
    assert child.wait() == 9
    with Journal(path) as j:
        d = acquire(j, fp="b" * 64, seed=-1)
        assert d.kind == "uncertain" and "may or may not" in d.row.error
        assert acquire(j, fp="b" * 64, seed=-1, force_new=True).kind == "new"
        assert j.get(d.row.id).status == "abandoned"


def test_concurrent_processes_never_corrupt_it_and_exactly_one_submits(tmp_path):
    """Six OS processes hammer one journal: private jobs, shared uploads, and a race for the same
    fixed-seed request in which exactly one may go ahead."""
    path = tmp_path / "shared" / "jobs.sqlite3"
    Journal(path).close()
    worker = """
        import sys
        from hunyuancustom.journal import Journal
        path, me = sys.argv[1], int(sys.argv[2])
        j = Journal(path, busy_timeout_s=30)
        sys.stdin.readline()  # start together
        race = j.acquire("r" * 64, model="m", request="{}", image_ref="r", seed=7)
        print(race.kind, flush=True)
        sys.stdin.readline()  # the winner holds its claim until every process has raced
        for i in range(40):
            fp = f"{me:02d}{i:062d}"
            d = j.acquire(fp, model="m", request="{}", image_ref="r", seed=1)
            j.update(d.row.id, status="created", task_id=f"t-{me}-{i}")
            j.update(d.row.id, status="downloaded", output_path=f"/v/{me}-{i}.mp4", release=True)
            j.record_upload(f"{i:064d}", "http://api", f"http://files/{me}/{i}")
        print("DONE", flush=True)
        """
    procs = [python(worker, path, n, stdin=subprocess.PIPE) for n in range(6)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    kinds = sorted(p.stdout.readline().strip() for p in procs)
    outs = [p.communicate("go\n", timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert kinds == ["busy"] * 5 + ["new"]  # only one of them would submit
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM jobs WHERE status='downloaded'").fetchone()[0] == 240
    assert conn.execute("SELECT count(DISTINCT task_id) FROM jobs").fetchone()[0] == 240
    assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 40


# --- faults ------------------------------------------------------------------------------------------


def test_a_damaged_file_is_a_clear_error(isolated_config):
    isolated_config.mkdir(parents=True)
    (isolated_config / "jobs.sqlite3").write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(JournalError) as err:
        Journal.open_default()
    message = str(err.value)
    assert "jobs.sqlite3" in message and "damaged" in message and "Move it aside" in message
    assert "pending or uncertain" in message and "pays for" in message
    assert isinstance(err.value, ConfigError)


def test_a_journal_locked_by_another_process_is_a_clear_error(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    holder = python("""
        import sqlite3, sys
        c = sqlite3.connect(sys.argv[1], isolation_level=None)
        c.execute("BEGIN EXCLUSIVE")
        print("LOCKED", flush=True)
        sys.stdin.readline()
        """, path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(JournalError, match="locked by another process for over 0.2 s"):
            Journal(path, busy_timeout_s=0.2)
    finally:
        holder.kill()
        holder.wait()
    with Journal(path, busy_timeout_s=0.2) as j:  # usable again once the other process let go
        assert acquire(j).kind == "new"


def test_a_full_disk_is_a_clear_error(tmp_path):
    path = tmp_path / "j.sqlite3"
    with Journal(path) as j:
        acquire(j)
    size = path.stat().st_size  # checkpointed on close
    with Journal(path, max_bytes=size) as j:
        with pytest.raises(JournalError, match="full. Free some space"):
            for i in range(500):
                acquire(j, fp=f"{i:064d}", seed=-1)


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(JournalError, match="Cannot create the folder of the job journal"):
        Journal(blocker / "data" / "jobs.sqlite3")
