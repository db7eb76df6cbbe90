"""The API key goes only to the server it was set for, and only a key an HTTP header can carry is
accepted (issue 10, items 4 and 9a).

Two real loopback API servers stand for the old root X and the new root Y; each accepts only its
own key, and records every request it gets.
"""

from __future__ import annotations

import json

import pytest
from test_cli import cli

from conftest import RecordingReporter
from hunyuancustom.client import ClientOptions, PollSchedule, WaveSpeedClient
from hunyuancustom.config import ApiKey, Settings, key_file_path, load_api_key, same_server, save_api_key
from hunyuancustom.errors import ConfigError, Interrupted, KeyRootError
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario

FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
FAST_POLLS = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))
KEY_X, KEY_Y = "sk-root-x-1111", "sk-root-y-2222"


@pytest.fixture
def x():
    with FakeWaveSpeed(Scenario(api_key=KEY_X, processing_polls=3)) as server:
        yield server


@pytest.fixture
def y():
    with FakeWaveSpeed(Scenario(api_key=KEY_Y)) as server:
        yield server


def run(root, image, tmp_path, journal, api_key=None, reporter=None):
    return run_ref2v(REF2V_720P, image, FIXED, tmp_path / "a.mp4", reporter=reporter,
                     settings=Settings(api_base=root, timeout_s=60.0), api_key=api_key,
                     options=FAST_POLLS, journal=journal, decode=False)


def pending_at(server, image, tmp_path, journal) -> str:
    """Submit at `server` with its own key and press Cancel while it processes: a task pending
    there. Returns its task id."""
    cancel = RecordingReporter(cancel_when=lambda s: s.startswith("Processing"))
    with pytest.raises(Interrupted):
        run(server.base_url, image, tmp_path, journal, ApiKey(KEY_X, "test"), cancel)
    return server.task_ids()[0]


def test_a_task_pending_at_x_is_not_resumed_with_the_key_for_y(x, y, image, tmp_path, journal):
    task_id = pending_at(x, image, tmp_path, journal)
    seen_by_x = len(x.requests)
    # The user moved to Y: the settings and the key (from the environment) are Y's now.
    with pytest.raises(KeyRootError) as err:
        run(y.base_url, image, tmp_path, journal, ApiKey(KEY_Y, "the environment variable"))
    message = str(err.value)
    assert f"pending at {x.base_url}" in message and f"is for {y.base_url}" in message
    assert f"jobs abandon {journal.get(task_id).id}" in message and "point api_base back" in message
    assert KEY_Y not in message
    assert x.requests[seen_by_x:] == [] and y.requests == []  # X never received Y's key
    assert journal.get(task_id).status == "processing"  # still pending, resumable

    # Pointing the settings back to X makes the same key X's key, by the user's own choice.
    x.set_scenario(api_key=KEY_Y, processing_polls=0)
    result = run(x.base_url, image, tmp_path, journal, ApiKey(KEY_Y, "the environment variable"))
    assert result.prediction.id == task_id and result.extra["source"] == "resumed"


def test_a_key_file_set_for_x_resumes_at_x_whatever_the_settings_say(x, y, image, tmp_path, journal):
    task_id = pending_at(x, image, tmp_path, journal)
    save_api_key(KEY_X, api_base=x.base_url)
    x.set_scenario(processing_polls=0)
    result = run(y.base_url, image, tmp_path, journal)  # the key comes from the file
    assert result.prediction.id == task_id and result.extra["source"] == "resumed"
    assert y.requests == [] and all(r.auth_ok for r in x.requests if r.path.startswith("/api/"))


def test_a_key_file_set_for_y_is_not_sent_to_x_for_a_new_task(x, y, image, tmp_path, journal):
    save_api_key(KEY_Y, api_base=y.base_url)
    with pytest.raises(KeyRootError, match=f"was set for {y.base_url}, but api_base is now"):
        run(x.base_url, image, tmp_path, journal)
    assert x.requests == [] and journal.list() == []  # nothing sent, no row left behind


def test_the_key_file_records_the_root_it_was_saved_for(monkeypatch, x):
    monkeypatch.setenv("WAVESPEED_API_BASE", x.base_url + "/")
    save_api_key("  " + KEY_X + "\n")
    stored = json.loads(key_file_path().read_text())
    assert stored == {"key": KEY_X, "api_base": x.base_url}
    key = load_api_key()
    assert key.reveal() == KEY_X and key.root == x.base_url
    # A key written into the file by hand is for whatever root is configured.
    key_file_path().write_text(KEY_Y + "\n")
    assert load_api_key().root is None and load_api_key().reveal() == KEY_Y
    key_file_path().write_text('{"key": 5}')
    with pytest.raises(ConfigError, match="damaged; set the key again"):
        load_api_key()


def test_the_client_sends_the_key_to_no_other_server(x, y):
    key = ApiKey(KEY_X, "test", root=x.base_url)
    with pytest.raises(KeyRootError, match="not sent to another server"):
        WaveSpeedClient(key, y.base_url)
    with WaveSpeedClient(key, x.base_url_v3) as client:  # same server, other root: allowed
        # The auth hook is the last line: a request elsewhere is refused before it is made.
        with pytest.raises(KeyRootError):
            client.session.get(y.base_url + "/predictions/t/result", timeout=5)
    assert y.requests == []


@pytest.mark.parametrize("a, b, same", [
    ("https://api.wavespeed.ai/api/v2", "https://API.wavespeed.ai:443/api/v3", True),
    ("http://127.0.0.1:8000/api/v2", "http://127.0.0.1:8001/api/v2", False),
    ("http://api.example/api/v2", "https://api.example/api/v2", False),
    ("https://api.example/api/v2", "https://api.example.evil/api/v2", False),
])
def test_same_server(a, b, same):
    assert same_server(a, b) is same


def test_cli_stops_with_what_to_do_and_sends_nothing(x, y, image, tmp_path, journal):
    task_id = pending_at(x, image, tmp_path, journal)
    seen_by_x = len(x.requests)
    ref = tmp_path / "ref.png"
    ref.write_bytes(image.png)
    args = ["ref2v", "--image", ref, "--prompt", FIXED["prompt"], "--seed", FIXED["seed"],
            "-o", tmp_path / "a.mp4", "--api-base", y.base_url]
    proc = cli(*args, key=KEY_Y)
    assert proc.returncode == 2, proc.stderr
    assert f"Task {task_id}" in proc.stderr and f"pending at {x.base_url}" in proc.stderr
    assert "jobs abandon" in proc.stderr and KEY_Y not in proc.stderr
    assert x.requests[seen_by_x:] == [] and y.requests == []
    # Giving that task up, as the message offers: the request is then submitted at Y.
    row_id = journal.get(task_id).id
    abandoned = cli("jobs", "abandon", row_id)
    assert abandoned.returncode == 0 and "paid again" in abandoned.stderr, abandoned.stderr
    y.set_scenario(processing_polls=0)
    assert cli(*args, key=KEY_Y).returncode == 0
    assert y.stats()["submits"] == 1 and x.requests[seen_by_x:] == []


# --- item 9a: a key an HTTP header cannot carry is refused where it is set ---------------------


BAD_KEYS = ["sk-ключ-1234", "sk-\u201ckey\u201d", "sk-caf\u00e9"]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_a_non_ascii_key_is_refused_when_saved_and_when_loaded(bad, monkeypatch):
    with pytest.raises(ConfigError, match="printable ASCII") as err:
        save_api_key(bad)
    assert bad not in str(err.value) and not key_file_path().exists()
    monkeypatch.setenv("WAVESPEED_API_KEY", bad)
    with pytest.raises(ConfigError, match="environment variable WAVESPEED_API_KEY contains characters"):
        load_api_key()
    monkeypatch.delenv("WAVESPEED_API_KEY")
    key_file_path().parent.mkdir(parents=True, exist_ok=True)
    key_file_path().write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError, match="printable ASCII"):
        load_api_key()


def test_a_key_file_that_is_not_text_is_a_clear_error():
    key_file_path().parent.mkdir(parents=True, exist_ok=True)
    key_file_path().write_bytes("sk-caf\u00e9".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not text"):
        load_api_key()


def test_cli_refuses_a_non_ascii_key_before_any_request(x, tmp_path, image):
    ref = tmp_path / "ref.png"
    ref.write_bytes(image.png)
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4",
               "--api-base", x.base_url, key=BAD_KEYS[0])
    assert proc.returncode == 2 and "printable ASCII" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "UnicodeEncodeError" not in proc.stderr
    assert x.requests == []
