"""Hostile networks (issue 10, items 5, 8, 9b-c and 11): credentials from ~/.netrc on a redirect,
error answers that are no refusal, submits that never left, and a job deadline that holds through
trickling downloads and long Retry-After waits.

Real loopback API server (scripted), real SQLite journal, real MP4 files.
"""

from __future__ import annotations

import threading

import pytest
from test_cli import cli

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom.client import ClientOptions, Timeouts, WaveSpeedClient
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import (
    ApiError,
    Interrupted,
    ServerError,
    SubmitUncertainError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import probe

FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
URL_IMAGE = ImageInput(url="https://cdn.example.test/ref.png")  # the submit is the first request


def run(base, image, dest, opts, journal=None, timeout_s=60.0, reporter=None, **kw):
    return run_ref2v(REF2V_720P, image, FIXED, dest, reporter=reporter,
                     settings=Settings(api_base=base, timeout_s=timeout_s),
                     api_key=ApiKey(TEST_KEY, "test"), options=opts, journal=journal,
                     decode=False, **kw)


def posts(api):
    return [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]


def join_io_workers():
    for t in threading.enumerate():
        if t.name == "hunyuancustom-io":
            t.join(10)
            assert not t.is_alive()


# --- item 5: no ~/.netrc credentials on a redirect to another host ------------------------------


def netrc_for(tmp_path, *hosts):
    path = tmp_path / "netrc"
    path.write_text("".join(f"machine {h} login someone password netrc-secret\n" for h in hosts))
    path.chmod(0o600)
    return path


def test_netrc_credentials_do_not_follow_an_output_redirect(api, image, tmp_path, fast, monkeypatch):
    monkeypatch.setenv("NETRC", str(netrc_for(tmp_path, "localhost", "127.0.0.1")))
    api.set_scenario(Scenario(output_redirect_host="localhost"))  # 127.0.0.1 -> localhost
    result = run(api.base_url, image, tmp_path / "a.mp4", fast)
    assert probe(result.video_path).frames > 1
    files = [r for r in api.requests if r.path.startswith("/files/")]
    assert [r.headers["Host"].split(":")[0] for r in files][-2:] == ["127.0.0.1", "localhost"]
    assert not [r for r in files if "Authorization" in r.headers]


def test_cli_sends_no_netrc_credentials_from_home_to_a_redirect_target(api, tmp_path, image):
    home = tmp_path / "home"
    home.mkdir()
    netrc_for(tmp_path, "localhost").rename(home / ".netrc")
    api.set_scenario(Scenario(processing_polls=0, output_redirect_host="localhost"))
    ref = tmp_path / "ref.png"
    ref.write_bytes(image.png)
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4", "--api-base",
               api.base_url, env_extra={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    target = [r for r in api.requests if r.headers.get("Host", "").startswith("localhost")]
    assert target and not [r for r in target if "Authorization" in r.headers]


def test_proxies_from_the_environment_still_apply(api, monkeypatch):
    # trust_env is off for credentials only: HTTP_PROXY and NO_PROXY are still honoured.
    with FakeWaveSpeed() as gone:
        closed = gone.origin
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    opts = ClientOptions(sleep_fn=lambda s, on_tick=None: None)
    with WaveSpeedClient(ApiKey(TEST_KEY, "t"), api.base_url, options=opts) as client:
        with pytest.raises(ServerError, match="ProxyError"):
            client.result("t-1")
    assert api.requests == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with WaveSpeedClient(ApiKey(TEST_KEY, "t"), api.base_url, options=opts) as client:
        with pytest.raises(TaskNotFoundError):
            client.result("t-1")
    assert len(api.requests) == 1


# --- item 8: only a clear refusal is "rejected" -----------------------------------------------------


@pytest.mark.parametrize("body", [
    {"code": 500, "message": "Internal error", "data": None},
    {"code": 503, "message": "Service unavailable", "data": None},
    {"code": 418, "message": "?", "data": None},
    {"code": 200, "message": "success", "data": {"status": "created"}},  # no task id
], ids=["code-500", "code-503", "unknown-code", "no-task-id"])
def test_an_error_inside_a_200_that_is_no_refusal_is_uncertain(api, image, tmp_path, fast, journal,
                                                               body):
    api.set_scenario(Scenario(submit_responses=[{"status": 200, "body": body}]))
    with pytest.raises(ApiError, match="may") as err:
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal)
    assert "dashboard" in str(err.value)
    assert journal.list()[0].status == "uncertain"
    api.set_scenario(Scenario())
    with pytest.raises(SubmitUncertainError):  # the next run does not pay a second time
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal)
    assert len(posts(api)) == 1


@pytest.mark.parametrize("code", [400, 401, 402, 403, 422, 429])
def test_a_clear_refusal_inside_a_200_is_rejected_and_may_be_retried(api, image, tmp_path, fast,
                                                                     journal, code):
    api.set_scenario(Scenario(submit_responses=[{"status": 200, "body": {
        "code": code, "message": "no", "data": None}}]))
    with pytest.raises(ApiError) as err:
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal)
    assert not isinstance(err.value, SubmitUncertainError)
    assert journal.list()[0].status == "rejected"
    api.set_scenario(Scenario())
    run(api.base_url, image, tmp_path / "a.mp4", fast, journal)
    assert len(posts(api)) == 2


# --- item 9b-c: a submit that never left is not "uncertain" -------------------------------------


def test_a_tls_handshake_failure_on_the_submit_is_not_uncertain(api, tmp_path, fast, journal):
    # https:// to a plain-HTTP server: the TLS handshake fails, no request is ever written.
    tls = api.base_url.replace("http://", "https://")
    with pytest.raises(ServerError, match="Could not reach the API.*SSLError") as err:
        run(tls, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert not isinstance(err.value, SubmitUncertainError)
    assert api.requests == [] and journal.list()[0].status == "rejected"
    run(api.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)  # the next run may submit
    assert len(posts(api)) == 1


@pytest.mark.parametrize("where", ["closed-port", "unknown-host"])
def test_an_unreachable_api_on_the_submit_is_not_uncertain(api, tmp_path, fast, journal, where):
    if where == "closed-port":
        with FakeWaveSpeed() as gone:
            base = gone.base_url
    else:
        base = "http://no-such-host.invalid/api/v2"
    with pytest.raises(ServerError, match="Could not reach the API"):
        run(base, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert journal.list()[0].status == "rejected"
    run(api.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert len(posts(api)) == 1


def test_a_read_timeout_once_the_submit_was_sent_is_uncertain(api, image, tmp_path, journal, sleeps):
    # The opposite case: the request went out, its answer did not come in time. A task may exist.
    api.set_scenario(Scenario(submit_stall_s=30.0))
    opts = ClientOptions(timeouts=Timeouts(read_s=0.3), sleep_fn=sleeps)
    with pytest.raises(SubmitUncertainError, match="ReadTimeout"):
        run(api.base_url, image, tmp_path / "a.mp4", opts, journal)
    api.release_stalls()
    assert api.stats()["submits"] == 1 and journal.list()[0].status == "uncertain"


class HostCancel(Exception):
    """Stands for a host's own cancel exception (ComfyUI raises InterruptProcessingException)."""


class HostReporter(RecordingReporter):
    def check_interrupt(self):
        if self.cancel.is_set():
            raise HostCancel()


@pytest.mark.parametrize("reporter_type", [RecordingReporter, HostReporter])
def test_cancel_just_before_the_submit_leaves_nothing_that_blocks(api, image, tmp_path, fast, journal,
                                                                  reporter_type):
    reporter = reporter_type(cancel_when=lambda s: s == "Submitting task")
    with pytest.raises((Interrupted, HostCancel)):
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal, reporter=reporter)
    assert posts(api) == [] and journal.list() == []
    result = run(api.base_url, image, tmp_path / "a.mp4", fast, journal)  # submits, no block
    assert len(posts(api)) == 1 and result.extra["source"] == "new"


def test_a_host_cancel_while_the_submit_is_in_flight_stays_a_cancel_and_uncertain(api, image,
                                                                                 tmp_path, fast,
                                                                                 journal):
    api.set_scenario(Scenario(submit_stall_s=30.0))
    reporter = HostReporter()
    threading.Thread(target=lambda: api.stalled.wait(10) and reporter.cancel.set(), daemon=True).start()
    with pytest.raises(HostCancel):  # the host sees its own cancel, not a wrapped error
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal, reporter=reporter)
    api.release_stalls()
    join_io_workers()
    assert api.stats()["submits"] == 1 and journal.list()[0].status == "uncertain"


# --- item 11: the job deadline holds through downloads and Retry-After waits -----------------------


def test_a_trickling_download_stops_at_the_job_deadline(api, image, tmp_path, fast, journal):
    api.set_scenario(Scenario(output_trickle_s=10.0, output_trickle_interval_s=0.05))
    dest = tmp_path / "out" / "a.mp4"
    timeout = 2.5
    with pytest.raises(TaskTimeoutError, match="while downloading the output") as err:
        run(api.base_url, image, dest, fast, journal, timeout_s=timeout)
    task_id = api.task_ids()[0]
    assert err.value.task_id == task_id and "without paying again" in str(err.value)
    # Measured by the client itself: it gave up at the deadline, not when the server stopped.
    assert timeout <= err.value.elapsed_s < timeout + 1.0
    api.release_stalls()
    join_io_workers()
    assert list(dest.parent.iterdir()) == []  # neither the video nor a part file
    assert journal.get(task_id).status == "completed"  # paid, not saved: fetched next time
    api.set_scenario(Scenario())
    result = run(api.base_url, image, dest, fast, journal)
    assert result.extra["source"] == "resumed" and api.stats()["submits"] == 1


def test_a_retry_after_inside_a_poll_does_not_wait_past_the_deadline(api, image, tmp_path, fast,
                                                                     sleeps, journal):
    api.set_scenario(Scenario(result_responses=[{"status": 429, "headers": {"Retry-After": "100"}}]))
    with pytest.raises(TaskTimeoutError) as err:
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal, timeout_s=5.0)
    assert err.value.task_id == api.task_ids()[0] and "resumes it" in str(err.value)
    assert all(w < 5.0 for w in sleeps.waits) and err.value.elapsed_s < 5.0
    assert journal.get(api.task_ids()[0]).status == "created"  # still pending, resumable


def test_a_retry_after_on_the_submit_does_not_wait_past_the_deadline(api, image, tmp_path, fast,
                                                                     sleeps, journal):
    api.set_scenario(Scenario(submit_responses=[{"status": 429, "headers": {"Retry-After": "100"}}]))
    with pytest.raises(TaskTimeoutError, match="before the task was submitted: nothing was billed"):
        run(api.base_url, image, tmp_path / "a.mp4", fast, journal, timeout_s=5.0)
    assert all(w < 5.0 for w in sleeps.waits) and api.stats()["submits"] == 0
    assert [r.status for r in journal.list()] in ([], ["rejected"])
    api.set_scenario(Scenario())
    run(api.base_url, image, tmp_path / "a.mp4", fast, journal)  # not blocked
    assert api.stats()["submits"] == 1


def test_cli_timeout_covers_the_download(api, tmp_path, image):
    api.set_scenario(Scenario(processing_polls=0, output_trickle_s=10.0))
    ref = tmp_path / "ref.png"
    ref.write_bytes(image.png)
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4", "--api-base",
               api.base_url, "--timeout", 3)
    assert proc.returncode == 1, proc.stderr
    assert "Stopped after 3 s (setting timeout_s) while downloading the output" in proc.stderr
    assert not (tmp_path / "a.mp4").exists()
