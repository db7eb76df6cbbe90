"""Batch generation: concurrency limit, input order, failures that do not sink the batch, resume."""

from __future__ import annotations

import pytest

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom.batch import BatchJob, run_batch
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import Interrupted, ValidationError
from hunyuancustom.testing.fake_api import Scenario

POLL = ClientOptions(schedule=PollSchedule(initial_s=0.02, max_interval_s=0.02))


def jobs_for(tmp_path, image, prompts, seed=-1):
    return [BatchJob(image=image, params={"prompt": p, "seed": seed}, dest=tmp_path / f"{i:03d}.mp4",
                     label=f"job {i + 1}") for i, p in enumerate(prompts)]


def batch(api, journal, jobs, opts, **kw):
    kw.setdefault("concurrency", 2)
    return run_batch(jobs, journal=journal, settings=Settings(api_base=api.base_url, timeout_s=60),
                     api_key=ApiKey(TEST_KEY, "test"), options=opts, **kw)


def submitted_prompts(api):
    return [r.json["prompt"] for r in api.requests
            if r.method == "POST" and "/wavespeed-ai/" in r.path and r.json]


def max_in_flight(api) -> int:
    """Most tasks the provider held at once (submit to completion), from its own task records."""
    events = []
    for t in api._tasks.values():
        events += [(t.submitted, 1), (t.finished, -1)]
    level = peak = 0
    for _, step in sorted(events):
        level += step
        peak = max(peak, level)
    return peak


def test_results_come_back_in_input_order_within_the_concurrency_limit(api, journal, tmp_path, image):
    api.set_scenario(Scenario(processing_polls=4))
    prompts = [f"prompt {i}" for i in range(7)]
    reporter = RecordingReporter()
    result = batch(api, journal, jobs_for(tmp_path, image, prompts), POLL, reporter=reporter)
    assert result.all_ok and [o.index for o in result.outcomes] == list(range(7))
    assert [o.result.video_path for o in result.outcomes] == [tmp_path / f"{i:03d}.mp4" for i in range(7)]
    assert all(o.result.video_path.exists() for o in result.outcomes)
    assert api.stats()["submits"] == 7 and api.stats()["uploads"] == 1  # one image, uploaded once
    assert max_in_flight(api) == 2
    assert any(s.startswith("Batch · 7/7 done") for s in reporter.statuses)
    summary = result.summary()
    assert summary["done"] == 7 and summary["failed"] == 0
    assert [r["status"] for r in summary["results"]] == ["done"] * 7


def test_a_failed_job_does_not_sink_the_batch_and_a_rerun_retries_only_it(api, journal, tmp_path,
                                                                           image):
    api.set_scenario(Scenario(submit_responses=[{"status": 400, "body": {
        "code": 400, "message": "prompt: rejected by the moderation filter", "data": None}}]))
    jobs = jobs_for(tmp_path, image, ["first", "second", "third"])  # seed -1: new videos
    first = batch(api, journal, jobs, POLL, concurrency=1)
    assert [o.ok for o in first.outcomes] == [False, True, True]
    assert "moderation filter" in first.outcomes[0].error
    assert first.summary()["results"][0]["status"] == "failed"
    # Two new tasks billed; the refused submit made no video and counts as neither.
    assert {k: first.summary()[k] for k in ("billed", "free", "failed")} == {"billed": 2, "free": 0,
                                                                            "failed": 1}
    assert submitted_prompts(api) == ["first", "second", "third"]

    again = batch(api, journal, jobs, POLL, concurrency=1)
    assert again.resumed and again.batch_id == first.batch_id and again.all_ok
    assert submitted_prompts(api) == ["first", "second", "third", "first"]  # only the failed one
    assert [o.source for o in again.outcomes] == ["new", "cache", "cache"]
    summary = again.summary()
    assert (summary["billed"], summary["free"]) == (1, 2)
    assert [r["billed"] for r in summary["results"]] == [True, False, False]
    assert again.outcomes[1].result.prediction.id == first.outcomes[1].result.prediction.id

    # A batch that fully succeeded is finished: running it again makes new seed -1 videos.
    third = batch(api, journal, jobs, POLL, concurrency=1)
    assert not third.resumed and [o.source for o in third.outcomes] == ["new"] * 3


class CancelOnceSubmitted(RecordingReporter):
    """Presses Cancel as soon as the provider holds `n` tasks (checked on every Cancel check)."""

    def __init__(self, api, n):
        super().__init__()
        self.api, self.n = api, n

    def check_interrupt(self):
        if self.api.stats()["submits"] >= self.n:
            self.cancel.set()
        super().check_interrupt()


def test_a_cancelled_batch_resumes_without_resubmitting(api, journal, tmp_path, image):
    api.set_scenario(Scenario(task_seconds=2.0))
    jobs = jobs_for(tmp_path, image, [f"p{i}" for i in range(4)])
    cancel = CancelOnceSubmitted(api, 2)
    with pytest.raises(Interrupted):
        batch(api, journal, jobs, POLL, reporter=cancel)
    submitted = api.stats()["submits"]
    assert submitted == 2
    assert {r.status for r in journal.list()} <= {"created", "processing"}
    assert all(r.owner_token is None for r in journal.list())  # every task was let go

    result = batch(api, journal, jobs, POLL)
    assert result.resumed and result.all_ok
    assert api.stats()["submits"] == 4  # the two pending tasks were polled, not resubmitted
    assert sorted(o.source for o in result.outcomes) == ["new", "new", "resumed", "resumed"]
    # The resumed tasks were paid for by the cancelled run: free now.
    assert (result.summary()["billed"], result.summary()["free"]) == (2, 2)


def test_identical_fixed_seed_jobs_pay_once(api, journal, tmp_path, image):
    api.set_scenario(Scenario(processing_polls=3))
    jobs = jobs_for(tmp_path, image, ["same", "same", "same"], seed=42)
    result = batch(api, journal, jobs, POLL, concurrency=3)
    assert result.all_ok and api.stats()["submits"] == 1
    assert sorted(o.source for o in result.outcomes) == ["cache", "cache", "new"]
    assert all(o.result.video_path.exists() for o in result.outcomes)


def test_429_on_submit_is_waited_out(api, journal, tmp_path, image, fast, sleeps):
    api.set_scenario(Scenario(submit_responses=[
        {"status": 429, "headers": {"Retry-After": "3"}, "body": {"code": 429, "message": "slow"}}]))
    result = batch(api, journal, jobs_for(tmp_path, image, ["a", "b"]), fast)
    assert result.all_ok and 3.0 in sleeps.waits and api.stats()["submits"] == 2


def test_bad_input_fails_before_any_request_naming_the_job(api, journal, tmp_path, image):
    jobs = jobs_for(tmp_path, image, ["fine", " "])
    with pytest.raises(ValidationError, match=r"prompt: must not be empty .*\(job 2\)"):
        batch(api, journal, jobs, POLL)
    with pytest.raises(ValidationError, match="concurrency: must be a whole number from 1 to 64"):
        batch(api, journal, jobs_for(tmp_path, image, ["a"]), POLL, concurrency=0)
    assert api.requests == [] and journal.list() == []
