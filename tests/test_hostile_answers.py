"""Hostile answers (issue 17, items 3, 4, 5, 8, 11 and 13, and the output-address decision):
answers without end or that inflate to gigabytes, a submit answer that trickles, a provider that
echoes the key, JSON nested 100,000 deep, an output host of 300 characters, escape sequences
meant for the terminal, settings that would turn deadlines off, output URLs to internal
addresses.

Real loopback API server (scripted), real SQLite journal, the CLI as a subprocess.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
from test_cli import REPO, cli

from conftest import RecordingReporter
from hunyuancustom.client import MAX_ANSWER_BYTES, ClientOptions, WaveSpeedClient
from hunyuancustom.config import ApiKey, Settings, load_settings
from hunyuancustom.errors import (
    ApiError,
    ConfigError,
    DownloadError,
    ForbiddenError,
    MalformedResponseError,
    PrivateAddressError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from hunyuancustom.journal import Journal
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.terminal import safe

KEY = "sk-live-Zq8secretKEY4711"
FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
URL_IMAGE = ImageInput(url="https://cdn.example.test/ref.png")  # the submit is the first request


@pytest.fixture
def keyed(api):
    """The loopback API accepting KEY (a key distinctive enough to search files for)."""
    api.set_scenario(api_key=KEY)
    return api


def run(base, image, dest, opts, journal=None, timeout_s=60.0, reporter=None, **kw):
    return run_ref2v(REF2V_720P, image, FIXED, dest, reporter=reporter,
                     settings=Settings(api_base=base, timeout_s=timeout_s),
                     api_key=ApiKey(KEY, "test"), options=opts, journal=journal,
                     decode=False, **kw)


def client(api, opts, **kw):
    return WaveSpeedClient(ApiKey(KEY, "test"), api.base_url, options=opts, **kw)


def posts(api):
    return [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]


def io_threads():
    return {t for t in threading.enumerate() if t.name == "hunyuancustom-io"}


def nested(depth=100_000):
    return "[" * depth + "]" * depth


# --- item 3: bounded answers ---------------------------------------------------------------------


def test_an_endless_poll_answer_ends_with_a_clear_error_and_little_memory(keyed, fast):
    keyed.set_scenario(result_responses=[{"endless": True}])
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        with client(keyed, fast) as c, pytest.raises(MalformedResponseError,
                                                     match=f"larger than {MAX_ANSWER_BYTES} bytes"):
            c.result("abc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 10
    assert peak < 4 * MAX_ANSWER_BYTES + (16 << 20)


def _gzip_bomb() -> bytes:
    """8 MB of gzip that inflates to 8 GiB: 512 copies of one member of 16 MiB of zeros (a gzip
    stream may hold many members, and the decoder reads them all)."""
    member = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    return member * (8 * 1024 // 16)


def test_a_gzip_bomb_upload_answer_fails_fast_with_little_memory(keyed, fast, image):
    bomb = _gzip_bomb()
    assert len(bomb) < 9 << 20
    keyed.set_scenario(upload_responses=[{"status": 200, "raw": bomb, "headers": {
        "Content-Type": "application/json", "Content-Encoding": "gzip"}}])
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        with client(keyed, fast) as c, pytest.raises(MalformedResponseError, match="larger than"):
            c.upload(image.png, "ref.png", "image/png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 10
    assert peak < 64 << 20  # the bomb itself is 8 MB; its 8 GiB never exist


def test_an_endless_submit_answer_is_uncertain_and_never_resubmitted(keyed, fast, journal, tmp_path):
    keyed.set_scenario(submit_responses=[{"endless": True}])
    with pytest.raises(SubmitUncertainError, match="larger than .* may or may not have been created"):
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert journal.list()[0].status == "uncertain"
    with pytest.raises(SubmitUncertainError):
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert len(posts(keyed)) == 1


def test_the_reading_thread_ends_when_the_job_ends(keyed, fast, journal, tmp_path):
    # A poll answer trickling in: the job's deadline passes while it is being read. The thread
    # reading it must stop too (inside ComfyUI it would otherwise go on after the node failed).
    keyed.set_scenario(result_responses=[{"trickle_interval_s": 0.2, "body": {
        "code": 200, "message": "ok", "data": {"id": "x" * 300, "status": "processing"}}}] * 3)
    before = io_threads()
    with pytest.raises(TaskTimeoutError):
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal, timeout_s=1.5)
    end = time.monotonic() + 2.0
    while io_threads() - before and time.monotonic() < end:
        time.sleep(0.05)
    assert not io_threads() - before, "a reading thread outlived its job"


# --- item 4: the submit's deadline holds -------------------------------------------------------------


def test_a_trickling_submit_answer_ends_within_30_s_as_uncertain(keyed, journal, tmp_path, sleeps):
    # README: a submit already sent is given 30 s (Timeouts.read_s) to answer, whatever timeout_s.
    keyed.set_scenario(submit_trickle_interval_s=0.5)
    opts = ClientOptions(sleep_fn=sleeps)  # the default timeouts: read_s = 30
    t0 = time.monotonic()
    with pytest.raises(SubmitUncertainError, match="did not arrive in full within 30 s"):
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", opts, journal, timeout_s=5)
    assert time.monotonic() - t0 < 31
    keyed.release_stalls()
    assert keyed.stats()["submits"] == 1 and journal.list()[0].status == "uncertain"
    with pytest.raises(SubmitUncertainError):  # the task may exist: never resubmitted
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", opts, journal, timeout_s=5)
    assert len(posts(keyed)) == 1


# --- item 5: the key never comes back in provider text --------------------------------------------


def _journal_bytes(data_dir) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob("jobs.sqlite3*"))


ECHO_403 = {"status": 403, "body": {"code": 403, "message": f"Forbidden for Bearer {KEY}",
                                     "data": {"error": KEY}}}


def test_a_key_echoed_in_a_403_is_redacted_from_the_error_and_the_journal(keyed, fast, journal,
                                                                          tmp_path, isolated_config):
    keyed.set_scenario(submit_responses=[ECHO_403])
    with pytest.raises(ForbiddenError) as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert KEY not in str(err.value) and "Forbidden for Bearer ***" in str(err.value)
    row = journal.list()[0]
    assert row.status == "rejected" and "Bearer ***" in row.error
    assert KEY.encode() not in _journal_bytes(isolated_config)


def test_a_key_echoed_through_the_cli_is_redacted_everywhere(keyed, tmp_path, isolated_config):
    keyed.set_scenario(submit_responses=[ECHO_403])
    proc = cli("ref2v", "--image", "https://cdn.example.test/ref.png", "--prompt", "x", "--seed", 3,
               "-o", tmp_path / "a.mp4", "--api-base", keyed.base_url, key=KEY)
    assert proc.returncode == 1 and "Forbidden for Bearer ***" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    listing = cli("jobs", "--json", key=KEY)
    assert listing.returncode == 0 and "Bearer ***" in listing.stdout
    shown = cli("jobs", "show", "1", key=KEY)
    assert KEY not in listing.stdout + listing.stderr + shown.stdout + shown.stderr
    assert KEY.encode() not in _journal_bytes(isolated_config)


def test_a_key_in_a_failure_reason_or_escaped_in_json_is_redacted(keyed, fast, journal, tmp_path,
                                                                 isolated_config):
    # A task that fails with the key in its reason, the reason spelled with JSON escapes.
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    keyed.set_scenario(fail_error=f"denied: Bearer {KEY}")
    with pytest.raises(TaskFailedError) as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert KEY not in str(err.value) and "Bearer ***" in str(err.value)
    keyed.set_scenario(fail_error=None, submit_responses=[{"status": 400, "raw": (
        '{"code": 400, "message": "bad key \\"' + escaped + '\\"", "data": null}'),
        "headers": {"Content-Type": "application/json"}}])
    with pytest.raises(ApiError) as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "b.mp4", fast, journal, force_new=True)
    assert KEY not in str(err.value) and "***" in str(err.value)
    assert KEY.encode() not in _journal_bytes(isolated_config)


# --- item 8: no tracebacks from hostile answers -------------------------------------------------------


def test_a_400_refusal_nested_100000_deep_is_recorded_as_rejected(keyed, fast, journal, tmp_path):
    keyed.set_scenario(submit_responses=[{"status": 400, "raw": nested(), "headers": {
        "Content-Type": "application/json"}}])
    with pytest.raises(ApiError, match="HTTP 400") as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert not isinstance(err.value, SubmitUncertainError)
    assert journal.list()[0].status == "rejected"
    run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)  # a refusal: submit again
    assert len(posts(keyed)) == 2


def test_a_poll_or_submit_answer_nested_100000_deep_is_a_clear_error(keyed, fast, journal, tmp_path):
    answer = {"status": 200, "raw": nested(), "headers": {"Content-Type": "application/json"}}
    keyed.set_scenario(result_responses=[answer])
    with client(keyed, fast) as c, pytest.raises(MalformedResponseError, match="not JSON"):
        c.result("abc")
    keyed.set_scenario(submit_responses=[answer])
    with pytest.raises(MalformedResponseError, match="may have created a task|not JSON"):
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert journal.list()[0].status == "uncertain"


LONG_HOST = "h" * 300 + ".example"


def test_an_output_url_with_a_300_character_host_is_a_clear_error(keyed, fast, journal, tmp_path):
    keyed.set_scenario(output_url=f"http://{LONG_HOST}/out.mp4")
    with pytest.raises(DownloadError, match="not a valid URL") as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert err.value.task_id == keyed.task_ids()[0]


def test_a_redirect_to_a_300_character_host_is_a_clear_error(keyed, fast, journal, tmp_path):
    keyed.set_scenario(output_redirect_host=LONG_HOST)
    with pytest.raises(DownloadError, match="not a valid URL") as err:
        run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert err.value.task_id == keyed.task_ids()[0]


# --- item 11: no terminal escapes from provider text -------------------------------------------------

OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"  # would write "rm -rf ~" into the clipboard
REWRITE = "\r\x1b[2KDone \u00b7 free"


def test_safe_escapes_control_characters_and_keeps_text():
    assert safe(f"a{OSC52}b{REWRITE}\u202e\x9b\n") == (
        "a\\x1b]52;c;cm0gLXJmIH4=\\x07b\\r\\x1b[2KDone \u00b7 free\\u202e\\x9b\\n")
    assert safe("Ünïcode 日本 ok") == "Ünïcode 日本 ok"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if c in "\x1b\r\x07\x9b"]


def cli_raw(*args, key=KEY):
    """`cli`, its output as the terminal would get it (text mode would turn a raw CR into LF)."""
    proc = subprocess.run([sys.executable, "-m", "hunyuancustom", *map(str, args)],
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")},
                               "PYTHONPATH": str(REPO), "WAVESPEED_API_KEY": key},
                          capture_output=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def test_the_cli_prints_provider_text_and_task_ids_escaped(keyed, tmp_path):
    keyed.set_scenario(fail_error=f"boom{OSC52}{REWRITE}", created_polls=0, processing_polls=0)
    rc, out = cli_raw("ref2v", "--image", "https://cdn.example.test/ref.png", "--prompt", "x",
                      "--seed", 3, "-o", tmp_path / "a.mp4", "--api-base", keyed.base_url)
    assert rc == 1 and "boom\\x1b]52;c;" in out and "\\r\\x1b[2KDone" in out
    assert not _raw_controls(out)
    # A task id and a message as a hostile provider could record them (the id comes from it too).
    with Journal.open_default() as j:
        row_id = j.list()[0].id
        j.update(row_id, task_id=f"t{OSC52}{REWRITE}", error=f"e{OSC52}")
    for args in (("jobs",), ("jobs", "show", str(row_id)), ("jobs", "show", f"t{OSC52}{REWRITE}"),
                 ("jobs", "--json")):
        rc, out = cli_raw(*args)
        assert rc == 0, out
        assert not _raw_controls(out), args
    assert "t\\x1b]52" in cli_raw("jobs")[1]


def test_the_status_line_escapes_provider_text():
    import io

    from hunyuancustom.progress import StderrReporter

    stream = io.StringIO()
    StderrReporter(stream).status(f"Task {REWRITE}")
    assert not _raw_controls(stream.getvalue())


# --- item 13: no setting turns deadlines off ---------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "0", "-5"])
def test_a_timeout_from_the_environment_that_is_no_deadline_is_refused(monkeypatch, value):
    monkeypatch.setenv("HUNYUANCUSTOM_TIMEOUT", value)
    with pytest.raises(ConfigError, match="HUNYUANCUSTOM_TIMEOUT.*timeout_s must be a finite number "
                                          "of seconds above 0"):
        load_settings()


@pytest.mark.parametrize("setting, value", [
    ("timeout_s", "NaN"), ("timeout_s", "Infinity"), ("timeout_s", "-Infinity"), ("timeout_s", "0"),
    ("upload_max_age_s", "NaN"), ("upload_max_age_s", "Infinity"), ("upload_max_age_s", "-1"),
    ("max_download_bytes", "0"), ("max_decoded_bytes", "-1"), ("concurrency", "0"),
])
def test_a_numeric_setting_out_of_range_in_settings_json_is_refused(isolated_config, setting, value):
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "settings.json").write_text(f'{{"{setting}": {value}}}')
    with pytest.raises(ConfigError, match=f"settings.json: {setting} must be .*(finite|or more)"):
        load_settings()


def test_sane_numeric_settings_still_load(isolated_config, monkeypatch):
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "settings.json").write_text(
        '{"timeout_s": 60, "upload_max_age_s": 0, "concurrency": 3, "max_download_bytes": 1000}')
    monkeypatch.setenv("HUNYUANCUSTOM_TIMEOUT", "12.5")
    s = load_settings()
    assert (s.timeout_s, s.upload_max_age_s, s.concurrency, s.max_download_bytes) == (12.5, 0, 3, 1000)


@pytest.mark.parametrize("how", ["env", "flag"])
def test_the_cli_refuses_an_infinite_timeout_before_any_request(api, tmp_path, how):
    env = {"HUNYUANCUSTOM_TIMEOUT": "nan"} if how == "env" else None
    flag = () if how == "env" else ("--timeout", "inf")
    proc = cli("ref2v", "--image", "https://cdn.example.test/ref.png", "--prompt", "x", "-o",
               tmp_path / "a.mp4", "--api-base", api.base_url, *flag, env_extra=env)
    assert proc.returncode == 2 and "timeout" in proc.stderr and "finite" in proc.stderr
    assert api.requests == []


# --- decision: no output fetched from an internal address while the API is public -----------------


@pytest.fixture
def public_root(keyed, monkeypatch):
    """The API seen at a public address (8.8.8.8, no DNS needed), reached through the loopback
    server acting as the HTTP proxy: requests for it never leave this machine."""
    monkeypatch.setenv("HTTP_PROXY", keyed.origin)
    for var in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return "http://8.8.8.8/api/v2"


def files_fetched(api):
    return [r for r in api.requests if r.path.startswith("/files/")]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3",
                                  "[::1]", "[::ffff:127.0.0.1]"])
def test_an_output_url_to_an_internal_address_is_refused_when_the_api_is_public(
        keyed, public_root, fast, journal, tmp_path, host):
    keyed.set_scenario(output_url=f"http://{host}:{keyed.port}/files/secret.mp4")
    with pytest.raises(PrivateAddressError, match="internal address") as err:
        run(public_root, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert err.value.task_id == keyed.task_ids()[0]
    assert files_fetched(keyed) == []  # nothing was sent there


def test_a_redirect_to_an_internal_address_is_refused_at_that_hop(keyed, public_root, fast, journal,
                                                                  tmp_path):
    # The output URL is public (fetched through the proxy); its redirect goes to localhost.
    keyed.set_scenario(output_url="http://1.1.1.1/files/out.mp4", output_redirect_host="localhost")
    with pytest.raises(PrivateAddressError, match="localhost"):
        run(public_root, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert [r.headers["Host"] for r in files_fetched(keyed)] == ["1.1.1.1"]


def test_internal_outputs_are_fetched_when_the_api_itself_is_internal(keyed, fast, journal, tmp_path):
    # The loopback API (a local or in-house deployment): its own outputs and redirects work.
    keyed.set_scenario(output_redirect_host="localhost")
    result = run(keyed.base_url, URL_IMAGE, tmp_path / "a.mp4", fast, journal)
    assert result.video_path.exists()


def test_an_internal_api_root_is_recognised_by_name(keyed, fast, journal, tmp_path):
    base = keyed.base_url.replace("127.0.0.1", "localhost")
    result = run(base, URL_IMAGE, tmp_path / "a.mp4", fast, journal, reporter=RecordingReporter())
    assert result.video_path.exists()
