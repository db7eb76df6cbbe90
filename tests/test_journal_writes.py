"""The journal records what a paid task needs, whatever goes wrong around it (issue 17, items 2
and 7): the submit's task id reaches the journal even while its write lock is held by another
program or its disk is full for a moment, and any text from the provider can be stored.

Real loopback API server (each task its own real MP4), real SQLite journal; the lock is held by a
real second connection, the full disk is SQLite refusing every write.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom import ref2v
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.errors import TaskFailedError
from hunyuancustom.journal import Journal, default_path
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from journal_jobs import is_video_of, run_job

A = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
FAST = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))
SURROGATE = "\ud800"  # sent by the server as the JSON escape "\\ud800"


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=1, distinct_videos=True)) as server:
        yield server


def run(api, image, dest, journal, params=A, reporter=None, **kw):
    return run_job(api, image, dest, journal, params, reporter, options=FAST, **kw)


# --- item 7: any text from the provider can be stored ----------------------------------------------


def test_lone_surrogates_in_every_answer_are_stored_and_the_video_delivered(api, image, tmp_path,
                                                                            journal):
    # In the submit's answer and in every poll, the completed one included.
    api.set_scenario(task_fields={"created_at": "2026" + SURROGATE, "model": SURROGATE + "m",
                                  "note": {"x": [SURROGATE]}})
    result = run(api, image, tmp_path / "a.mp4", journal)
    task = result.prediction.id
    assert is_video_of(api, tmp_path / "a.mp4", task)
    row = journal.get(task)
    assert row.status == "downloaded" and row.output_path == str((tmp_path / "a.mp4").resolve())
    assert row.info["created_at"] == "2026\\ud800"  # kept, as its escape text
    assert not result.extra.get("journal_warning")
    api.reset()
    assert run(api, image, tmp_path / "b.mp4", journal).extra["source"] == "cache"


def test_a_failure_reason_with_a_lone_surrogate_is_recorded(api, image, tmp_path, journal):
    api.set_scenario(fail_error="GPU fault " + SURROGATE)
    with pytest.raises(TaskFailedError, match="GPU fault"):
        run(api, image, tmp_path / "a.mp4", journal)
    row = journal.get(api.task_ids()[0])
    assert row.status == "failed" and "GPU fault \\ud800" in row.error


# --- item 2: the task id is never lost ---------------------------------------------------------------

HOLD_LOCK = ("import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
             "time.sleep(float(sys.argv[2])); c.execute('COMMIT')")


def task_in_row_at_first_status(api, journal_path):
    """A reporter that, at the first status line after the submit ("Queued · 0 s · task X"),
    reads through its own connection what the journal holds for task X."""
    seen = {}

    class Reporter(RecordingReporter):
        def status(self, text):
            super().status(text)
            if " · task " in text and "row" not in seen:
                task = text.rsplit(" · task ", 1)[1]
                with Journal(journal_path) as other:
                    seen["row"] = other.get(task)
    return Reporter(), seen


def test_the_task_id_reaches_the_journal_while_another_program_holds_its_lock(api, image, tmp_path,
                                                                              isolated_config):
    path = default_path()
    holder = []
    reporter, seen = task_in_row_at_first_status(api, path)
    inner = reporter.status

    def status(text):
        if text == "Submitting task":  # the SUBMITTING row is written: lock the journal now
            proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "1.5"],
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "locked"
            holder.append(proc)
        inner(text)
    reporter.status = status
    # The journal waits 0.3 s for its lock, the other program holds it for 1.5 s.
    with Journal(path, busy_timeout_s=0.3) as journal:
        result = run(api, image, tmp_path / "a.mp4", journal, reporter=reporter)
    holder[0].wait(30)
    task = result.prediction.id
    assert seen["row"] is not None and seen["row"].task_id == task  # before the first poll
    assert not result.extra.get("journal_warning")  # recorded after all: nothing to warn about
    with Journal(path) as journal:
        assert journal.get(task).status == "downloaded"
    assert not list(path.parent.glob("*.task-*"))  # the slot is gone once the row has the id


def test_the_task_id_reaches_the_journal_after_a_moment_of_full_disk(api, image, tmp_path,
                                                                     isolated_config):
    path = default_path()
    reporter, seen = task_in_row_at_first_status(api, path)
    inner = reporter.status
    journal = Journal(path)

    def writable_again():
        with journal._lock:
            journal._conn.execute("PRAGMA query_only = 0")

    def status(text):
        if text == "Submitting task":  # from the submit on, writes fail for 0.6 s
            journal._conn.execute("PRAGMA query_only = 1")
            threading.Timer(0.6, writable_again).start()
        inner(text)
    reporter.status = status
    with journal:
        result = run(api, image, tmp_path / "a.mp4", journal, reporter=reporter)
        assert journal.get(result.prediction.id).status == "downloaded"
    assert seen["row"] is not None and seen["row"].task_id == result.prediction.id
    assert not result.extra.get("journal_warning")


def test_a_journal_full_for_the_whole_run_still_delivers_and_the_rerun_pays_nothing(
        api, image, tmp_path, isolated_config, monkeypatch):
    monkeypatch.setattr(ref2v, "TASK_ID_RETRY_S", 0.5)
    journal = Journal.open_default()

    def refuse_writes_from_the_submit_on(text):
        if text == "Submitting task":
            journal._conn.execute("PRAGMA query_only = 1")  # every later write fails
        return False

    result = run(api, image, tmp_path / "a.mp4", journal,
                 reporter=RecordingReporter(cancel_when=refuse_writes_from_the_submit_on))
    task = result.prediction.id
    assert is_video_of(api, tmp_path / "a.mp4", task)  # the paid video is saved ...
    assert "could not" in result.extra["journal_warning"]  # ... with a warning
    journal.close()  # the disk is freed; the next run opens the journal anew
    with Journal.open_default() as fresh:
        assert fresh.get(task).id == fresh.list()[0].id  # `jobs abandon <task id>` finds it
        again = run(api, image, tmp_path / "b.mp4", fresh)
    assert again.prediction.id == task and again.extra["source"] == "resumed"
    assert api.stats()["submits"] == 1 and is_video_of(api, tmp_path / "b.mp4", task)


def test_a_row_that_never_got_its_task_id_blocks_as_uncertain(api, image, tmp_path, isolated_config,
                                                              monkeypatch):
    """Without the slot (e.g. removed), a row still `submitting` never leads to a blind resubmit."""
    monkeypatch.setattr(ref2v, "TASK_ID_RETRY_S", 0.2, raising=False)
    journal = Journal.open_default()

    def refuse(text):
        if text == "Submitting task":
            journal._conn.execute("PRAGMA query_only = 1")
        return False

    run(api, image, tmp_path / "a.mp4", journal, reporter=RecordingReporter(cancel_when=refuse))
    journal.close()
    for slot in default_path().parent.glob("*.task-*"):
        slot.unlink()
    with Journal.open_default() as fresh, pytest.raises(ref2v.SubmitUncertainError, match="may or"):
        run(api, image, tmp_path / "b.mp4", fresh)
    assert api.stats()["submits"] == 1


def test_a_pending_row_without_its_task_id_blocks_as_uncertain(api, image, tmp_path, journal):
    """A row an older version left `processing` without the task id (its id write failed, a later
    write went through): the task exists, so the request is not submitted again blindly."""
    cancel = RecordingReporter(cancel_when=lambda s: s.startswith("Processing"))
    with pytest.raises(ref2v.Interrupted):
        run(api, image, tmp_path / "a.mp4", journal, reporter=cancel)
    journal._conn.execute("UPDATE jobs SET task_id = NULL")
    assert journal.list()[0].status == "processing"
    with pytest.raises(ref2v.SubmitUncertainError, match="task id never reached the journal"):
        run(api, image, tmp_path / "a.mp4", journal)
    assert api.stats()["submits"] == 1


def test_a_cli_killed_while_the_journal_refuses_its_task_id_resumes_that_task(api, ref, tmp_path,
                                                                              isolated_config):
    """A real CLI process: the submit is answered while another program holds the journal's lock,
    the CLI is killed (kill -9) before the journal takes the id, the lock goes; the rerun resumes
    the task from the id in its slot instead of stopping as "uncertain" or paying again."""
    import os
    import signal
    import time

    from test_cli import REPO, cli

    api.set_scenario(submit_stall_s=60.0)  # the task is made, its answer held
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY=TEST_KEY)
    args = ["ref2v", "--image", ref, "--prompt", "killed", "--seed", 3, "--api-base", api.base_url]
    first = subprocess.Popen([sys.executable, "-m", "hunyuancustom", *map(str, args), "-o",
                              tmp_path / "a.mp4"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        assert api.stalled.wait(60), "the submit never reached the server"
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(default_path()), "120"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        api.release_stalls()  # the answer arrives; the journal is locked
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                p.read_text().strip() for p in default_path().parent.glob("*.task-*")):
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        if holder is not None:
            holder.kill()
            holder.wait(30)
    [task] = api.task_ids()
    api.set_scenario(submit_stall_s=0.0)
    again = cli(*args, "-o", tmp_path / "b.mp4")
    assert again.returncode == 0, again.stderr
    assert f"Resuming task {task}" in again.stderr and api.stats()["submits"] == 1
    assert is_video_of(api, tmp_path / "b.mp4", task)
