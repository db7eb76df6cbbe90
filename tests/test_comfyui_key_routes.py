"""The API key routes inside a real ComfyUI started with --listen 0.0.0.0 (COMFYUI_PATH).

The settings dialog's own requests (loopback, same origin, JSON) set, read and delete the key;
every other kind of request is refused and leaves the key file as it was: another machine (even
with a forged Host), a request through a reverse proxy, a DNS-rebinding page, a cross-origin page,
a form-style POST; and none at all when the routes are turned off. The key is
never in a response, ComfyUI's settings store or its log.
"""

from __future__ import annotations

import json
import socket
import stat

import pytest
import requests

from comfyui_harness import comfyui_path, requires_comfyui, running_comfyui, skip_reason

pytestmark = requires_comfyui

SECRET = "sk-route-test-9f3e-7a1b"
ROUTES = ("/hunyuancustom/key", "/api/hunyuancustom/key")


def other_address() -> str | None:
    """One of this machine's non-loopback IPv4 addresses (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # TEST-NET-2: only picks the outgoing interface
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    with running_comfyui(tmp_path_factory.mktemp("comfy-keys"), listen="0.0.0.0") as server:
        yield server


@pytest.fixture(autouse=True)
def no_key(comfy):
    (comfy.data_dir / "api_key").unlink(missing_ok=True)
    yield


def same_origin(comfy) -> dict[str, str]:
    origin = f"http://127.0.0.1:{comfy.port}"
    return {"Origin": origin, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}


def key_file(comfy):
    return comfy.data_dir / "api_key"


@pytest.mark.parametrize("route", ROUTES)
def test_settings_dialog_sets_reads_and_deletes_the_key(comfy, route):
    url = comfy.url + route
    status = requests.get(url, headers=same_origin(comfy), timeout=10)
    assert status.status_code == 200 and status.json() == {"set": False, "source": None, "last4": ""}

    saved = requests.post(url, data=json.dumps({"key": SECRET}), headers=same_origin(comfy), timeout=10)
    assert saved.status_code == 200, saved.text
    assert saved.json() == {"set": True, "source": "file", "last4": SECRET[-4:]}
    assert SECRET not in saved.text
    assert saved.headers.get("Cache-Control") == "no-store"
    # Stored with the API root it is for (this ComfyUI's configured one, the default).
    assert json.loads(key_file(comfy).read_text()) == {"key": SECRET,
                                                       "api_base": "https://api.wavespeed.ai/api/v2"}
    assert stat.S_IMODE(key_file(comfy).stat().st_mode) == 0o600

    again = requests.get(url, headers=same_origin(comfy), timeout=10)
    assert again.json()["last4"] == SECRET[-4:] and SECRET not in again.text
    # Not in ComfyUI's own settings store (which the front end reads back), not in the log.
    settings = requests.get(comfy.url + "/settings", timeout=10)
    assert SECRET not in settings.text
    assert SECRET not in comfy.log_text()

    gone = requests.delete(url, data="{}", headers=same_origin(comfy), timeout=10)
    assert gone.status_code == 200 and gone.json()["set"] is False
    assert not key_file(comfy).exists()


def test_a_bad_key_value_is_refused_without_echoing_it(comfy):
    url = comfy.url + ROUTES[0]
    bad = requests.post(url, data=json.dumps({"key": "sk-has space-inside"}), headers=same_origin(comfy),
                        timeout=10)
    assert bad.status_code == 400 and "whitespace" in bad.json()["error"]
    assert "has space" not in bad.text
    # Not Latin-1: every run would fail encoding the header; refused when set, naming what is allowed.
    bad = requests.post(url, data=json.dumps({"key": "sk-ключ-4321"}), headers=same_origin(comfy),
                        timeout=10)
    assert bad.status_code == 400 and "printable ASCII" in bad.json()["error"]
    assert "ключ" not in bad.text and "\\u043a" not in bad.text
    assert requests.post(url, data="not json", headers=same_origin(comfy), timeout=10).status_code == 400
    assert not key_file(comfy).exists()


def refused(comfy, method: str, url: str, headers: dict[str, str], expect: int = 403) -> requests.Response:
    body = json.dumps({"key": "sk-attacker-0000"}) if method == "POST" else "{}"
    r = requests.request(method, url, data=body if method != "GET" else None, headers=headers, timeout=10)
    assert r.status_code == expect, (method, url, headers, r.status_code, r.text)
    assert SECRET not in r.text
    return r


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_another_machine_is_refused_even_with_a_loopback_host_header(comfy, method):
    addr = other_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    key_file(comfy).write_text(SECRET)
    for route in ROUTES:
        url = f"http://{addr}:{comfy.port}{route}"
        r = refused(comfy, method, url, {"Content-Type": "application/json"})
        assert "another address" in r.json()["error"]
        # Forged to look local: the peer address still gives it away.
        refused(comfy, method, url, {**same_origin(comfy), "Host": f"127.0.0.1:{comfy.port}"})
    assert key_file(comfy).read_text() == SECRET


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_dns_rebinding_page_is_refused(comfy, method):
    key_file(comfy).write_text(SECRET)
    evil = f"evil.example:{comfy.port}"
    r = refused(comfy, method, comfy.url + ROUTES[0],
                {"Host": evil, "Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin",
                 "Content-Type": "application/json"})
    assert "loopback address" in r.json()["error"]
    assert key_file(comfy).read_text() == SECRET


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_cross_origin_page_is_refused(comfy, method):
    key_file(comfy).write_text(SECRET)
    for headers in ({"Origin": "http://evil.example", "Content-Type": "application/json"},
                    {"Origin": f"http://127.0.0.1:{comfy.port + 1}", "Content-Type": "application/json"},
                    {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}):
        refused(comfy, method, comfy.url + ROUTES[0], headers)
    assert key_file(comfy).read_text() == SECRET


@pytest.mark.parametrize("header", [("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9"),
                                    ("X-Real-IP", "203.0.113.9"), ("Via", "1.1 nginx")])
def test_a_request_through_a_reverse_proxy_is_refused(comfy, header):
    # A proxy on the same machine connects from loopback for every visitor; what it adds gives it
    # away, even on a request that otherwise looks like the settings dialog's own.
    key_file(comfy).write_text(SECRET)
    for method in ("GET", "POST", "DELETE"):
        r = refused(comfy, method, comfy.url + ROUTES[0], {**same_origin(comfy), header[0]: header[1]})
        assert "through a proxy" in r.json()["error"]
    assert key_file(comfy).read_text() == SECRET


def test_the_routes_can_be_turned_off(tmp_path):
    with running_comfyui(tmp_path, env_extra={"HUNYUANCUSTOM_KEY_ROUTES": "off"}) as off:
        key_file(off).write_text(SECRET)
        for method in ("GET", "POST", "DELETE"):
            r = refused(off, method, off.url + ROUTES[0], same_origin(off))
            assert "turned off" in r.json()["error"] and "WAVESPEED_API_KEY" in r.json()["error"]
        assert key_file(off).read_text() == SECRET


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
def test_form_style_writes_are_refused(comfy, ctype):
    # What a cross-site <form> or a no-preflight fetch could send.
    key_file(comfy).write_text(SECRET)
    headers = {**same_origin(comfy), "Content-Type": ctype}
    for method in ("POST", "DELETE"):
        refused(comfy, method, comfy.url + ROUTES[0], headers, expect=415)
    assert key_file(comfy).read_text() == SECRET
