"""Never pay twice: the job journal makes run_ref2v resume pending tasks and serve saved results.

Every test talks to the real loopback API server and a real SQLite journal in the test's data folder.
"""

from __future__ import annotations

import sqlite3

import pytest

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom import journal as journal_module
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import (
    ApiError,
    Interrupted,
    MissingApiKeyError,
    OutputExpiredError,
    SubmitUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from hunyuancustom.journal import Journal
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.media import make_test_image, png_bytes
from hunyuancustom.video import probe

FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
RANDOM = {"prompt": "A man is writing a letter at his desk.", "seed": -1}


def run(api, image, dest, opts, journal, params=FIXED, reporter=None, timeout_s=60.0,
        key=TEST_KEY, settings=None, **kw):
    settings = settings or Settings(api_base=api.base_url, timeout_s=timeout_s)
    kw.setdefault("api_key", ApiKey(key, "test") if key else None)
    return run_ref2v(REF2V_720P, image, params, dest, reporter=reporter, settings=settings,
                     options=opts, journal=journal, decode=False, **kw)


def posts(api):
    return [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]


# Polls 10 ms apart, so a test reaches "processing" at once.
FAST_POLLS = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))


def cancelled_mid_poll(api, image, tmp_path, journal, params=FIXED) -> str:
    """Submit a job and press Cancel while it is processing; return its (still pending) task id."""
    api.set_scenario(Scenario(processing_polls=3))
    cancel = RecordingReporter(cancel_when=lambda s: s.startswith("Processing"))
    with pytest.raises(Interrupted):
        run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal, params=params, reporter=cancel)
    return api.task_ids()[0]


# --- the result cache ---------------------------------------------------------------------------


def test_fixed_seed_rerun_is_served_from_disk_with_zero_requests(api, image, tmp_path, fast, journal,
                                                                 monkeypatch):
    first = run(api, image, tmp_path / "a.mp4", fast, journal)
    assert first.extra["source"] == "new"
    api.set_scenario(output_status=404)  # the provider's output URL has expired since
    api.reset()
    # No key either: a saved result needs nothing from the provider.
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    reporter = RecordingReporter()
    again = run(api, image, tmp_path / "b.mp4", fast, journal, key=None, reporter=reporter)
    assert api.requests == []
    assert again.extra["source"] == "cache"
    assert again.prediction.id == first.prediction.id and again.url == first.url
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()
    assert reporter.statuses[-1].startswith("Cached")


def test_each_result_says_whether_it_was_billed(api, image, tmp_path, fast, journal):
    """New task: billed. The saved result and a resumed task (paid when first submitted): free."""
    reporter = RecordingReporter()
    new = run(api, image, tmp_path / "a.mp4", fast, journal, reporter=reporter)
    task = new.prediction.id
    assert new.info()["billed"] is True and new.info()["source"] == "new"
    assert reporter.statuses[-1].startswith(f"Done · billed: new task {task} · ")

    reporter = RecordingReporter()
    cached = run(api, image, tmp_path / "b.mp4", fast, journal, reporter=reporter)
    assert cached.info()["billed"] is False and cached.info()["source"] == "cache"
    assert reporter.statuses[-1] == f"Cached · free: saved result of task {task} (nothing submitted)"

    cancelled_mid_poll(api, image, tmp_path, journal, params=RANDOM)
    pending = api.task_ids()[-1]
    reporter = RecordingReporter()
    resumed = run(api, image, tmp_path / "c.mp4", FAST_POLLS, journal, params=RANDOM, reporter=reporter)
    assert resumed.info()["billed"] is False and resumed.info()["source"] == "resumed"
    assert reporter.statuses[-1].startswith(
        f"Done · free: resumed task {pending} (already paid; not billed again)")
    assert len(posts(api)) == 2  # the two tasks the lines call new; none for the free ones


def test_cache_can_hand_back_the_saved_file_itself(api, image, tmp_path, fast, journal):
    run(api, image, tmp_path / "a.mp4", fast, journal)
    again = run(api, image, tmp_path / "unused.mp4", fast, journal, cache_copy=False)
    assert again.video_path == (tmp_path / "a.mp4").resolve() and not (tmp_path / "unused.mp4").exists()


def test_a_changed_value_or_image_is_a_new_request(api, image, tmp_path, fast, journal):
    run(api, image, tmp_path / "a.mp4", fast, journal)
    run(api, image, tmp_path / "b.mp4", fast, journal, params={**FIXED, "guidance_scale": 6.0})
    other = ImageInput(png=png_bytes(make_test_image(None, 32, 32)))
    run(api, other, tmp_path / "c.mp4", fast, journal)
    assert api.stats()["submits"] == 3


def test_seed_minus_one_is_a_new_video_every_run(api, image, tmp_path, fast, journal):
    a = run(api, image, tmp_path / "a.mp4", fast, journal, params=RANDOM)
    b = run(api, image, tmp_path / "b.mp4", fast, journal, params=RANDOM)
    assert api.stats()["submits"] == 2 and a.prediction.id != b.prediction.id
    # ... and the upload of the same bytes was reused.
    assert api.stats()["uploads"] == 1


def test_force_new_bypasses_the_cache(api, image, tmp_path, fast, journal):
    a = run(api, image, tmp_path / "a.mp4", fast, journal)
    b = run(api, image, tmp_path / "b.mp4", fast, journal, force_new=True)
    assert api.stats()["submits"] == 2 and b.prediction.id != a.prediction.id
    assert b.extra["source"] == "new"


def test_deleted_saved_video_is_not_a_cache_hit_but_fetched_again(api, image, tmp_path, fast, journal):
    first = run(api, image, tmp_path / "a.mp4", fast, journal)
    (tmp_path / "a.mp4").unlink()
    again = run(api, image, tmp_path / "b.mp4", fast, journal)
    assert again.extra["source"] == "resumed" and again.prediction.id == first.prediction.id
    assert (tmp_path / "b.mp4").exists() and len(posts(api)) == 1


def test_a_damaged_saved_video_is_fetched_again_from_its_task(api, image, tmp_path, fast, journal):
    first = run(api, image, tmp_path / "a.mp4", fast, journal)
    (tmp_path / "a.mp4").write_bytes(b"\x00" * 1000)  # e.g. clobbered by another program
    reporter = RecordingReporter()
    again = run(api, image, tmp_path / "b.mp4", fast, journal, reporter=reporter)
    assert again.extra["source"] == "resumed" and again.prediction.id == first.prediction.id
    assert len(posts(api)) == 1 and api.stats()["downloads"] == 2  # fetched, not paid again
    assert probe(tmp_path / "b.mp4").frames > 1
    assert any(s.startswith(f"Fetching the video of task {first.prediction.id} again")
               for s in reporter.statuses)
    third = run(api, image, tmp_path / "c.mp4", fast, journal)  # and the cache works again
    assert third.extra["source"] == "cache" and api.stats()["downloads"] == 2


# --- resume instead of resubmit ------------------------------------------------------------------


@pytest.mark.parametrize("params", [FIXED, RANDOM], ids=["fixed-seed", "seed-minus-one"])
def test_rerun_after_cancel_polls_the_same_task(api, image, tmp_path, journal, params):
    task_id = cancelled_mid_poll(api, image, tmp_path, journal, params=params)
    assert journal.get(task_id).status == "processing"

    reporter = RecordingReporter()
    result = run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal, params=params, reporter=reporter)
    assert len(posts(api)) == 1 and api.stats()["uploads"] == 1
    assert result.prediction.id == task_id and result.extra["source"] == "resumed"
    assert any(s.startswith(f"Resuming task {task_id}") for s in reporter.statuses)
    row = journal.get(task_id)
    assert row.status == "downloaded" and row.output_path == str((tmp_path / "a.mp4").resolve())


def test_rerun_after_a_timeout_polls_the_same_task(api, image, tmp_path, journal):
    api.set_scenario(Scenario(processing_polls=6))
    opts = ClientOptions(schedule=PollSchedule(initial_s=0.05, max_interval_s=0.05))
    with pytest.raises(TaskTimeoutError):
        run(api, image, tmp_path / "a.mp4", opts, journal, timeout_s=0.12)
    result = run(api, image, tmp_path / "a.mp4", opts, journal)
    assert api.stats()["submits"] == 1 and result.prediction.id == api.task_ids()[0]


def test_a_failed_task_is_submitted_again(api, image, tmp_path, fast, journal):
    api.set_scenario(Scenario(fail_error="worker lost"))
    with pytest.raises(TaskFailedError):
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert journal.get(api.task_ids()[0]).status == "failed"
    api.set_scenario(Scenario())
    run(api, image, tmp_path / "a.mp4", fast, journal)
    assert api.stats()["submits"] == 2


def test_completed_but_not_downloaded_is_fetched_without_a_new_submit(api, image, tmp_path, fast,
                                                                     journal):
    api.set_scenario(Scenario(output_drop_first_n=10))  # every download breaks off
    with pytest.raises(Exception, match="Could not download"):
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert journal.get(api.task_ids()[0]).status == "completed"
    api.set_scenario(Scenario())
    result = run(api, image, tmp_path / "a.mp4", fast, journal)
    assert api.stats()["submits"] == 1 and result.extra["source"] == "resumed"


def test_a_410_from_the_video_host_keeps_the_task_resumable(api, image, tmp_path, fast, journal):
    # The video host's page is not the API's word (issue 17 item 1): nothing is marked expired.
    api.set_scenario(Scenario(output_status=410))
    with pytest.raises(OutputExpiredError):
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert journal.get(api.task_ids()[0]).status == "completed"


# --- a lost submit answer is never silently resubmitted -------------------------------------------


def test_uncertain_submit_blocks_a_blind_resubmit_until_force_new(api, image, tmp_path, fast, journal):
    api.set_scenario(Scenario(submit_responses=[{"status": 502}]))
    with pytest.raises(SubmitUncertainError):
        run(api, image, tmp_path / "a.mp4", fast, journal)
    with pytest.raises(SubmitUncertainError) as err:
        run(api, image, tmp_path / "a.mp4", fast, journal)
    message = str(err.value)
    assert "may or may not" in message and "force new" in message and "HTTP 502" in message
    assert len(posts(api)) == 1
    result = run(api, image, tmp_path / "a.mp4", fast, journal, force_new=True)
    assert len(posts(api)) == 2 and result.extra["source"] == "new"
    # Once moved past, the old row no longer blocks.
    run(api, image, tmp_path / "b.mp4", fast, journal)
    assert len(posts(api)) == 2


def test_refused_submit_is_recorded_and_may_be_retried(api, image, tmp_path, fast, journal):
    api.set_scenario(Scenario(insufficient_balance=True))
    with pytest.raises(Exception, match="Insufficient balance"):
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert journal.list()[0].status == "rejected"
    api.set_scenario(Scenario())
    run(api, image, tmp_path / "a.mp4", fast, journal)
    assert api.stats()["submits"] == 1


@pytest.mark.parametrize("answer, code", [
    ({"status": 400, "body": {"code": 400, "data": "bad request"}}, 400),
    ({"status": 200, "body": {"code": 400, "message": None, "data": [1]}}, 400),
    ({"status": 422, "body": ["not", "an", "object"]}, 422),
])
def test_an_error_answer_of_any_shape_is_a_refusal_not_a_crash(api, image, tmp_path, fast, journal,
                                                              answer, code):
    # The provider refused (nothing billed): a plain API error, and the next run may submit.
    api.set_scenario(Scenario(submit_responses=[answer]))
    with pytest.raises(ApiError, match=f"refused the request: HTTP {code}") as err:
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert not isinstance(err.value, SubmitUncertainError)
    assert journal.list()[0].status == "rejected"
    api.set_scenario(Scenario())
    run(api, image, tmp_path / "a.mp4", fast, journal)
    assert len(posts(api)) == 2


def test_missing_key_leaves_no_row(api, image, tmp_path, fast, journal):
    with pytest.raises(MissingApiKeyError):
        run(api, image, tmp_path / "a.mp4", fast, journal, key=None)
    assert journal.list() == [] and api.requests == []


# --- uploads ----------------------------------------------------------------------------------------


def test_upload_is_reused_only_while_young(api, image, tmp_path, fast, journal):
    base = Settings(api_base=api.base_url, timeout_s=60.0)
    run(api, image, tmp_path / "a.mp4", fast, journal, params={**FIXED, "seed": 1}, settings=base)
    run(api, image, tmp_path / "b.mp4", fast, journal, params={**FIXED, "seed": 2}, settings=base)
    assert api.stats()["uploads"] == 1
    bodies = [r.json for r in posts(api)]
    assert bodies[0]["image"] == bodies[1]["image"]
    young_only = Settings(api_base=api.base_url, timeout_s=60.0, upload_max_age_s=0.0)
    run(api, image, tmp_path / "c.mp4", fast, journal, params={**FIXED, "seed": 3},
        settings=young_only)
    assert api.stats()["uploads"] == 2


# --- the journal failing after the money is spent never costs the video ---------------------------


def test_journal_write_failure_after_download_keeps_the_video(api, image, tmp_path, fast, journal):
    def read_only_once_downloading(status):
        if status.startswith("Downloading"):
            journal._conn.execute("PRAGMA query_only = 1")  # every later write fails in SQLite
        return False

    result = run(api, image, tmp_path / "a.mp4", fast, journal,
                 reporter=RecordingReporter(cancel_when=read_only_once_downloading))
    assert (tmp_path / "a.mp4").exists() and result.prediction.status == "completed"
    assert "could not be updated" in result.extra["journal_warning"]
    journal._conn.execute("PRAGMA query_only = 0")
    # The row still says "completed" with the URL: a rerun fetches it again without paying.
    row = journal.get(result.prediction.id)
    assert row.status == "completed" and row.output_url == result.url


def test_journal_no_key_in_it(api, image, tmp_path, fast, journal):
    secret = "sk-live-JOURNAL-9911"
    api.set_scenario(Scenario(api_key=secret))
    run(api, image, tmp_path / "a.mp4", fast, journal, key=secret)
    journal.close()
    for f in journal.path.parent.iterdir():
        if f.name.startswith("jobs.sqlite3"):
            assert secret.encode() not in f.read_bytes()


def test_a_pending_task_the_provider_forgot_is_submitted_anew_only_when_run_again(api, image, tmp_path,
                                                                                   journal):
    from hunyuancustom.errors import TaskNotFoundError

    lost = cancelled_mid_poll(api, image, tmp_path, journal)
    api.reset()  # the provider no longer has it (e.g. older than its retention)
    with pytest.raises(TaskNotFoundError) as err:
        run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal)
    msg = str(err.value)
    assert lost in msg and "Nothing was submitted in this run" in msg and "billed again" in msg
    assert api.stats()["submits"] == 0  # never a new payment inside the run that found it gone
    assert journal.get(lost).status == "expired" and "no longer knows" in journal.get(lost).error
    result = run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal)  # the user runs it again
    assert result.extra["source"] == "new" and result.prediction.id != lost
    assert api.stats()["submits"] == 1


def test_a_404_page_that_is_not_the_api_s_answer_never_causes_a_resubmit(api, image, tmp_path,
                                                                          journal):
    # A proxy or a wrong host answering 404 does not prove the task is gone: paying again on
    # its word would bill twice. The run fails, the task stays pending, the next run resumes it.
    task_id = cancelled_mid_poll(api, image, tmp_path, journal)
    api.set_scenario(Scenario(processing_polls=0, result_responses=[
        {"status": 404, "raw": "<html><h1>404 Not Found</h1></html>"}]))
    with pytest.raises(ApiError, match="HTTP 404") as err:
        run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal)
    assert not isinstance(err.value, TaskNotFoundError) and err.value.task_id == task_id
    assert journal.get(task_id).status == "processing"
    result = run(api, image, tmp_path / "a.mp4", FAST_POLLS, journal)
    assert result.prediction.id == task_id and result.extra["source"] == "resumed"
    assert len(posts(api)) == 1


def test_a_task_is_resumed_at_the_api_root_it_was_submitted_to(api, image, tmp_path, journal):
    task_id = cancelled_mid_poll(api, image, tmp_path, journal)
    assert journal.get(task_id).api_base == api.base_url
    with FakeWaveSpeed() as other:  # the settings now name another root, which has no such task
        reporter = RecordingReporter()
        # The key is the one set for the task's root (a key for the new root is not sent there:
        # test_key_root.py).
        result = run(other, image, tmp_path / "a.mp4", FAST_POLLS, journal, reporter=reporter,
                     key=None, api_key=ApiKey(TEST_KEY, "test", root=api.base_url))
        assert other.requests == []
    assert result.prediction.id == task_id and len(posts(api)) == 1
    assert any(s.startswith(f"Resuming task {task_id} at {api.base_url}") for s in reporter.statuses)


def test_a_version_1_journal_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    v1 = journal_module._SCHEMA.replace(",\n    api_base TEXT,\n    output_size INTEGER,\n"
                                        "    output_sha256 TEXT\n", "\n")
    v1 = v1.replace("CREATE INDEX IF NOT EXISTS jobs_output ON jobs (output_path);\n", "")
    assert v1 != journal_module._SCHEMA and "output_sha256" not in v1
    with sqlite3.connect(path) as c:
        c.executescript(v1)
        c.execute("INSERT INTO jobs (fingerprint, model, request, image_ref, seed, status, task_id, "
                  "created_at, updated_at) VALUES ('f', 'm', '{}', 'r', 5, 'processing', 't-old', 1, 1)")
        c.execute("PRAGMA user_version = 1")
    c.close()
    with Journal(path) as j:
        row = j.get("t-old")
        assert row.status == "processing" and row.api_base is None
        j.update(row.id, api_base="https://api.example.test/api/v2")
        assert j.get("t-old").api_base == "https://api.example.test/api/v2"
        assert j._conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION
