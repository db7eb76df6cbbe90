"""The cloud ref2v job against a real loopback HTTP server implementing the documented API."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import (
    ApiError,
    AuthError,
    ForbiddenError,
    InsufficientBalanceError,
    Interrupted,
    MalformedResponseError,
    MissingApiKeyError,
    NSFWError,
    OutputExpiredError,
    RateLimitError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from hunyuancustom.journal import Journal
from hunyuancustom.params import REF2V_480P, REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario, default_video
from hunyuancustom.video import image_to_png

PARAMS = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}


def run(api, image, tmp_path, fast, reporter=None, params=PARAMS, model=REF2V_720P, base=None,
        timeout_s=60.0, key=TEST_KEY, **kw):
    settings = Settings(api_base=base or api.base_url, timeout_s=timeout_s)
    return run_ref2v(model, image, params, tmp_path / "out" / "video.mp4", reporter=reporter,
                     settings=settings, api_key=ApiKey(key, "test"), options=fast, **kw)


def submitted_bodies(api):
    return [r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]


def no_partial_files(tmp_path):
    return not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


# --- the happy path -------------------------------------------------------------------------------


def test_image_tensor_to_decoded_video(api, tmp_path, fast, reporter):
    api.set_scenario(Scenario(created_polls=1, processing_polls=3))
    tensor = torch.rand(48, 64, 3)
    result = run(api, ImageInput(png=image_to_png(tensor)), tmp_path, fast, reporter)

    stats = api.stats()
    assert (stats["uploads"], stats["submits"], stats["downloads"]) == (1, 1, 1)
    assert stats["result_gets"] == 5  # created, 3x processing, completed
    body = submitted_bodies(api)[0]
    assert body["image"].startswith(api.base_url.split("/api/")[0])  # the uploaded file's URL
    assert {k: body[k] for k in ("prompt", "seed", "size", "guidance_scale", "flow_shift")} == {
        "prompt": PARAMS["prompt"], "seed": 1234, "size": "1280*720", "guidance_scale": 7.5,
        "flow_shift": 13.0}
    assert body["enable_safety_checker"] is True and body["negative_prompt"] == ""

    assert result.video_path.exists() and no_partial_files(tmp_path)
    assert result.frames.shape[0] > 1 and result.frames.shape[-1] == 3
    assert result.fps > 0 and result.url.endswith(".mp4")
    info = result.info()
    assert info["task_id"] and info["status"] == "completed"
    assert isinstance(info["inference_ms"], int) and info["has_nsfw_contents"] == [False]
    assert info["timings"] == {"inference": info["inference_ms"]}  # the API's own name
    assert info["model"] == REF2V_720P.model_id
    json.dumps(info)  # the node's info output is JSON

    assert any(s.startswith("Queued") for s in reporter.statuses)
    assert any(s.startswith("Processing") for s in reporter.statuses)
    assert reporter.statuses[-1].startswith("Done")
    assert reporter.fractions == sorted(reporter.fractions) and reporter.fractions[-1] == 1.0


def test_v3_root_and_the_480p_model(api, tmp_path, fast, image):
    result = run(api, image, tmp_path, fast, base=api.base_url_v3, model=REF2V_480P,
                 params={**PARAMS, "size": "480*832"})
    assert result.prediction.model == REF2V_480P.model_id
    assert all("/api/v3/" in r.path for r in api.requests if r.path.startswith("/api/"))


def test_an_image_url_is_passed_through_without_upload(api, tmp_path, fast):
    run(api, ImageInput(url="https://cdn.example.test/ref.png"), tmp_path, fast)
    assert api.stats()["uploads"] == 0
    assert submitted_bodies(api)[0]["image"] == "https://cdn.example.test/ref.png"


# --- nothing leaves the machine before the input is known good ------------------------------------


def test_bad_input_fails_before_any_request(api, tmp_path, fast, image):
    with pytest.raises(ValidationError, match="guidance_scale: 11.0 is out of range"):
        run(api, image, tmp_path, fast, params={**PARAMS, "guidance_scale": 11.0})
    with pytest.raises(ValidationError, match="prompt: must not be empty"):
        run(api, image, tmp_path, fast, params={"prompt": " "})
    assert api.requests == []


def test_missing_key_fails_before_upload_and_says_how_to_set_it(api, tmp_path, fast, image):
    settings = Settings(api_base=api.base_url)
    with pytest.raises(MissingApiKeyError) as err:
        run_ref2v(REF2V_720P, image, PARAMS, tmp_path / "v.mp4", settings=settings, options=fast)
    assert "WAVESPEED_API_KEY" in str(err.value) and "Settings" in str(err.value)
    assert api.requests == []


# --- slow, failed, throttled, flaky ---------------------------------------------------------------


def test_slow_task_is_polled_until_done_with_one_submit(api, tmp_path, fast, image, sleeps):
    api.set_scenario(Scenario(processing_polls=40))
    result = run(api, image, tmp_path, fast)
    assert result.prediction.status == "completed"
    assert api.stats()["submits"] == 1 and api.stats()["result_gets"] == 41
    assert len(sleeps.waits) == 40 and max(sleeps.waits) <= 0.02


def test_failed_task_reports_provider_error_and_task_id(api, tmp_path, fast, image):
    api.set_scenario(Scenario(processing_polls=2, fail_error="CUDA out of memory on worker 7"))
    with pytest.raises(TaskFailedError) as err:
        run(api, image, tmp_path, fast)
    assert "CUDA out of memory on worker 7" in str(err.value)
    assert err.value.task_id and err.value.task_id in str(err.value)
    assert not (tmp_path / "out" / "video.mp4").exists()


def test_401_is_an_auth_error_with_the_fix(api, tmp_path, fast, image):
    with pytest.raises(AuthError) as err:
        run(api, image, tmp_path, fast, key="wrong-key-abcd")
    assert "401" in str(err.value) and "WAVESPEED_API_KEY" in str(err.value)
    assert "wrong-key-abcd" not in str(err.value)
    assert api.stats()["submits"] == 0


def test_403_is_forbidden(api, tmp_path, fast):
    api.set_scenario(Scenario(submit_responses=[{"status": 403, "body": {
        "code": 403, "message": "Account suspended", "data": None}}]))
    with pytest.raises(ForbiddenError, match="Account suspended"):
        run(api, ImageInput(url="https://cdn.example.test/a.png"), tmp_path, fast)


def test_insufficient_balance_is_plain(api, tmp_path, fast, image):
    api.set_scenario(Scenario(insufficient_balance=True))
    with pytest.raises(InsufficientBalanceError, match="top up"):
        run(api, image, tmp_path, fast)


def test_429_on_submit_waits_for_retry_after_then_creates_one_task(api, tmp_path, fast, image, sleeps):
    api.set_scenario(Scenario(submit_responses=[
        {"status": 429, "headers": {"Retry-After": "7"}, "body": {"code": 429, "message": "Too many"}},
    ]))
    run(api, image, tmp_path, fast)
    assert 7.0 in sleeps.waits
    posts = [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]
    assert len(posts) == 2 and api.stats()["submits"] == 1


def test_endless_429_gives_up_with_a_rate_limit_error(api, tmp_path, fast):
    api.set_scenario(Scenario(submit_responses=[{"status": 429, "headers": {"Retry-After": "1"}}] * 20))
    with pytest.raises(RateLimitError, match="429"):
        run(api, ImageInput(url="https://cdn.example.test/a.png"), tmp_path, fast)


def test_result_5xx_and_dropped_connections_are_retried(api, tmp_path, fast, image, sleeps):
    api.set_scenario(Scenario(processing_polls=1, result_responses=[
        {"status": 503}, {"drop": True}, {"status": 502}]))
    result = run(api, image, tmp_path, fast)
    assert result.prediction.status == "completed"
    assert sleeps.waits[:3] == [0.5, 1.0, 2.0]  # capped exponential back-off


def test_persistent_5xx_on_polls_gives_up_with_the_task_id(api, tmp_path, fast, image):
    api.set_scenario(Scenario(result_responses=[{"status": 500}] * 10))
    with pytest.raises(ApiError) as err:
        run(api, image, tmp_path, fast)
    assert err.value.task_id and "HTTP 500" in str(err.value)


@pytest.mark.parametrize("answer", [{"status": 500}, {"drop": True}])
def test_submit_is_never_retried_once_it_may_have_arrived(api, tmp_path, fast, image, answer):
    api.set_scenario(Scenario(submit_responses=[answer]))
    with pytest.raises(SubmitUncertainError, match="not resubmitted"):
        run(api, image, tmp_path, fast)
    posts = [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]
    assert len(posts) == 1


def test_submit_to_a_closed_port_is_safe_to_retry_and_fails_clearly(tmp_path, fast, image):
    # Nothing listens there: the request never left, so retrying is allowed (and fails in the end).
    with FakeWaveSpeed(Scenario()) as gone:
        base = gone.base_url
    with pytest.raises(ApiError, match="Could not reach the API"):
        run(None, ImageInput(url="https://cdn.example.test/a.png"), tmp_path, fast, base=base)


@pytest.mark.parametrize("where", ["submit", "result"])
def test_malformed_json_is_a_clear_error_never_a_keyerror(api, tmp_path, fast, image, where):
    bad = [{"raw": b"<html>502 Bad Gateway</html>", "status": 200}]
    api.set_scenario(Scenario(**{f"{where}_responses": bad}))
    with pytest.raises(MalformedResponseError, match="not JSON"):
        run(api, image, tmp_path, fast)


def test_unexpected_json_shape_is_a_clear_error(api, tmp_path, fast, image):
    api.set_scenario(Scenario(result_responses=[{"status": 200, "body": {"code": 200, "data": [1, 2]}}]))
    with pytest.raises(MalformedResponseError, match="unexpected shape: 'data' is not an object") as err:
        run(api, image, tmp_path, fast)
    assert err.value.task_id


# --- outputs --------------------------------------------------------------------------------------


def test_nsfw_without_output_is_an_error(api, tmp_path, fast, image):
    api.set_scenario(Scenario(nsfw=True, nsfw_blocks_output=True))
    with pytest.raises(NSFWError, match="safety checker flagged"):
        run(api, image, tmp_path, fast)


def test_nsfw_flag_with_output_is_shown_and_reported(api, tmp_path, fast, image, reporter):
    api.set_scenario(Scenario(nsfw=True, nsfw_blocks_output=False))
    result = run(api, image, tmp_path, fast, reporter)
    assert result.info()["has_nsfw_contents"] == [True]
    assert reporter.statuses[-1].startswith("NSFW flagged")


def test_expired_output_url_is_reported_and_leaves_no_file(api, tmp_path, fast, image):
    api.set_scenario(Scenario(output_status=404))
    with pytest.raises(OutputExpiredError, match="expired"):
        run(api, image, tmp_path, fast)
    assert not (tmp_path / "out" / "video.mp4").exists() and no_partial_files(tmp_path)


def test_truncated_download_is_retried_and_written_whole(api, tmp_path, fast, image):
    api.set_scenario(Scenario(output_drop_first_n=1))
    result = run(api, image, tmp_path, fast)
    assert api.stats()["downloads"] == 2
    assert result.frames.shape[0] > 1 and no_partial_files(tmp_path)


def test_download_size_cap(api, tmp_path, fast, image):
    settings = Settings(api_base=api.base_url, max_download_bytes=1000)
    with pytest.raises(ApiError, match="over the 1000-byte cap"):
        run_ref2v(REF2V_720P, image, PARAMS, tmp_path / "v.mp4", settings=settings,
                  api_key=ApiKey(TEST_KEY, "t"), options=fast)
    assert not (tmp_path / "v.mp4").exists() and no_partial_files(tmp_path)


@pytest.mark.skipif(sys.platform != "linux", reason="uses Linux's RLIMIT_FSIZE to make writes fail")
def test_a_write_failure_during_download_is_a_clear_error_and_leaves_no_file(api, tmp_path):
    # A real fault: the process may write at most 1 KiB per file (as with a full disk, write()
    # fails with an OSError), so the download fails mid-file after the task was paid for.
    assert default_video().stat().st_size > 1024  # the served output cannot be written whole
    out = tmp_path / "out" / "video.mp4"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from hunyuancustom.config import ApiKey, Settings
        from hunyuancustom.params import REF2V_720P
        from hunyuancustom.ref2v import ImageInput, run_ref2v
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            run_ref2v(REF2V_720P, ImageInput(url="https://cdn.example.test/a.png"),
                      {{"prompt": "x"}}, {str(out)!r}, settings=Settings(api_base={api.base_url!r}),
                      api_key=ApiKey({TEST_KEY!r}, "test"))
        except Exception as e:
            print(type(e).__name__, "|", e)
            sys.exit(1)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("DownloadError | Could not write the video to "), proc.stdout
    assert "File too large" in proc.stdout and "task id" in proc.stdout
    assert api.stats()["submits"] == 1 and api.stats()["downloads"] >= 1
    assert list(out.parent.iterdir()) == []  # neither the video nor a part file


# --- waiting ends when the user or the clock says so ----------------------------------------------


def test_overall_timeout_names_the_task(api, tmp_path, fast, image):
    api.set_scenario(Scenario(processing_polls=10_000))
    opts = ClientOptions(schedule=PollSchedule(initial_s=0.05, max_interval_s=0.05))
    with pytest.raises(TaskTimeoutError) as err:
        run(api, image, tmp_path, opts, timeout_s=0.3)
    assert err.value.task_id in str(err.value) and "may still finish" in str(err.value)


def test_cancel_mid_poll_stops_within_a_second(api, tmp_path, image):
    api.set_scenario(Scenario(processing_polls=10_000))
    reporter = RecordingReporter(cancel_when=lambda s: s.startswith("Processing"))
    slow_polls = ClientOptions(schedule=PollSchedule(initial_s=30.0, max_interval_s=30.0))
    start = time.monotonic()
    with pytest.raises(Interrupted):
        run(api, image, tmp_path, slow_polls, reporter)
    assert time.monotonic() - start < 2.0  # the next poll was 30 s away
    assert api.stats()["submits"] == 1


class CancelWhenStalled(RecordingReporter):
    """Presses Cancel the moment the loopback server stalls mid-transfer."""

    def __init__(self, api):
        super().__init__()
        self.api = api
        self.cancelled_at: float | None = None

    def check_interrupt(self):
        if self.api.stalled.is_set() and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self.cancel.set()
        super().check_interrupt()


def join_io_workers():
    for t in threading.enumerate():
        if t.name == "hunyuancustom-io":
            t.join(10)
            assert not t.is_alive()


def test_cancel_mid_upload_stops_within_a_second_and_submits_nothing(api, tmp_path, fast, image):
    api.set_scenario(Scenario(upload_stall_s=30.0))
    reporter = CancelWhenStalled(api)
    with Journal(tmp_path / "jobs.sqlite3") as journal:
        with pytest.raises(Interrupted):
            run(api, image, tmp_path, fast, reporter, journal=journal)
        assert time.monotonic() - reporter.cancelled_at < 2.0  # the answer was 30 s away
        api.release_stalls()
        join_io_workers()
        assert api.stats()["submits"] == 0
        assert journal.list() == []  # nothing reached the provider: no row to resume or block on
        run(api, image, tmp_path, fast, journal=journal)  # and the next run goes through
        assert api.stats()["submits"] == 1


def test_cancel_mid_download_stops_within_a_second_and_leaves_no_file(api, tmp_path, fast, image):
    api.set_scenario(Scenario(output_stall_s=30.0))
    reporter = CancelWhenStalled(api)
    with pytest.raises(Interrupted):
        run(api, image, tmp_path, fast, reporter)
    assert time.monotonic() - reporter.cancelled_at < 2.0  # the rest of the file was 30 s away
    assert "Downloading video" in reporter.statuses
    api.release_stalls()
    join_io_workers()  # the abandoned transfer notices Cancel and removes its temporary file
    out = tmp_path / "out"
    assert not (out / "video.mp4").exists() and no_partial_files(tmp_path)
    assert [p.name for p in out.iterdir()] == []


# --- the key stays secret -------------------------------------------------------------------------


def test_key_never_in_errors_reprs_logs_or_the_output_request(api, tmp_path, fast, image, caplog):
    secret = "sk-live-SECRET-4242"
    caplog.set_level(logging.DEBUG)
    api.set_scenario(Scenario(api_key=secret))
    result = run(api, image, tmp_path, fast, key=secret)
    assert secret not in repr(ApiKey(secret, "t")) and secret not in str(ApiKey(secret, "t"))
    assert secret not in json.dumps(result.info()) and secret not in repr(result)
    assert secret not in caplog.text
    downloads = [r for r in api.requests if r.path.startswith("/files/")]
    assert downloads and not any(r.auth_ok for r in downloads)  # no key sent to the output URL
    api.set_scenario(Scenario(api_key="another"))
    with pytest.raises(AuthError) as err:
        run(api, image, tmp_path, fast, key=secret)
    assert secret not in str(err.value) and secret not in repr(err.value)
