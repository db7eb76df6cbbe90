"""Whose word ends a task (issue 17, items 1, 6 and 12): only the API's own answer.

A page from the video host (401/403/404/410 on the output URL) keeps the task resumable and never
leads to a new submit in the same run; a poll answered with another task's state is refused; an
HTTP 200 carrying the envelope's own 5xx on a poll is retried like an HTTP 5xx.

Real loopback API server (each task its own real MP4), real SQLite journal.
"""

from __future__ import annotations

import pytest
import requests

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom.client import ClientOptions, PollSchedule, RetryPolicy
from hunyuancustom.errors import MalformedResponseError, OutputExpiredError, ServerError
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from journal_jobs import is_video_of, run_job

A = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
B = {"prompt": "A woman is reading a book in the garden.", "seed": 1234}


class NoSleep:
    def __call__(self, seconds, on_tick=None):
        if on_tick is not None:
            on_tick()


FAST = ClientOptions(retry=RetryPolicy(attempts=4), sleep_fn=NoSleep(),
                     schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0, distinct_videos=True)) as server:
        yield server


def run(api, image, dest, journal, params=A, reporter=None, **kw):
    return run_job(api, image, dest, journal, params, reporter, options=FAST, **kw)


# --- item 1: a page from the video host is not the provider's word -----------------------------------


@pytest.mark.parametrize("code", [401, 403, 404, 410])
def test_an_error_page_on_the_output_url_keeps_the_task_and_never_pays_again(api, image, tmp_path,
                                                                             journal, code):
    api.set_scenario(output_status=code)  # a proxy that keeps blocking the video host
    for _ in range(3):
        with pytest.raises(OutputExpiredError) as err:
            run(api, image, tmp_path / "a.mp4", journal)
        assert f"HTTP {code}" in str(err.value) and "not billed again" in str(err.value)
    [task] = api.task_ids()
    assert api.stats()["submits"] == 1  # three runs, one task
    row = journal.get(task)
    assert row.status == "completed" and row.owner_token is None  # resumable, not "expired"
    assert not (tmp_path / "a.mp4").exists()
    api.set_scenario(output_status=None)  # the block is lifted: the paid video is delivered
    done = run(api, image, tmp_path / "a.mp4", journal)
    assert done.extra["source"] == "resumed" and done.prediction.id == task
    assert api.stats()["submits"] == 1 and is_video_of(api, tmp_path / "a.mp4", task)


def test_refetching_a_deleted_video_after_a_404_submits_nothing_in_that_run(api, image, tmp_path,
                                                                            journal):
    first = run(api, image, tmp_path / "a.mp4", journal)
    (tmp_path / "a.mp4").unlink()
    api.expire_output(first.prediction.id)  # the host answers 404; the API still knows the task
    for _ in range(2):
        reporter = RecordingReporter()
        with pytest.raises(OutputExpiredError, match="HTTP 404"):
            run(api, image, tmp_path / "a.mp4", journal, reporter=reporter)
        assert api.stats()["submits"] == 1
        assert not any("billed again)" in s for s in reporter.statuses if "not billed" not in s)
    assert journal.get(first.prediction.id).status not in ("expired", "abandoned")
    # Only the user's asking pays again.
    again = run(api, image, tmp_path / "a.mp4", journal, force_new=True)
    assert again.extra["source"] == "new" and api.stats()["submits"] == 2
    assert is_video_of(api, tmp_path / "a.mp4", again.prediction.id)


# --- item 6: an answer about another task is refused -------------------------------------------------


def test_a_poll_answered_with_another_tasks_state_is_refused(api, image, tmp_path, journal):
    a = run(api, image, tmp_path / "a.mp4", journal)
    a_answer = requests.get(f"{api.base_url}/predictions/{a.prediction.id}/result",
                            headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10).json()
    assert a_answer["data"]["status"] == "completed"
    api.set_scenario(result_responses=[{"status": 200, "body": a_answer}])
    with pytest.raises(MalformedResponseError, match=f"with the state of task '{a.prediction.id}'"):
        run(api, image, tmp_path / "b.mp4", journal, params=B)
    b_task = api.task_ids()[-1]
    assert not (tmp_path / "b.mp4").exists()
    row = journal.get(b_task)
    assert row.status in ("created", "processing") and row.output_url is None
    # A's video was not taken for B: the rerun resumes B and delivers B's own video.
    b = run(api, image, tmp_path / "b.mp4", journal, params=B)
    assert b.prediction.id == b_task and b.extra["source"] == "resumed"
    assert is_video_of(api, tmp_path / "b.mp4", b_task) and api.stats()["submits"] == 2


# --- item 12: one transient envelope error does not end a job ----------------------------------------


def test_a_poll_answered_200_with_code_500_is_retried_like_an_http_500(api, image, tmp_path, journal):
    api.set_scenario(result_responses=[
        {"status": 200, "body": {"code": 500, "message": "Internal error", "data": None}},
        {"status": 200, "body": {"code": 503, "message": "Busy", "data": None}}])
    done = run(api, image, tmp_path / "a.mp4", journal)
    assert done.extra["source"] == "new" and api.stats()["submits"] == 1
    assert is_video_of(api, tmp_path / "a.mp4", done.prediction.id)


def test_a_poll_that_keeps_answering_code_500_fails_like_a_lasting_http_500(api, image, tmp_path,
                                                                            journal):
    api.set_scenario(result_responses=[
        {"status": 200, "body": {"code": 500, "message": "Internal error", "data": None}}] * 10)
    with pytest.raises(ServerError, match="kept failing"):
        run(api, image, tmp_path / "a.mp4", journal)
    # The task stays pending: the next run resumes it.
    api.set_scenario(result_responses=[])
    done = run(api, image, tmp_path / "a.mp4", journal)
    assert done.extra["source"] == "resumed" and api.stats()["submits"] == 1
