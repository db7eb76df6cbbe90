"""The key routes' gatekeeper: each refusal, and what a legitimate request looks like."""

from __future__ import annotations

import pytest

from hunyuancustom.key_guard import MAX_KEY_LENGTH, check_key_request, check_key_value, is_loopback_host

SAME = {"remote": "127.0.0.1", "host": "127.0.0.1:8188", "origin": "http://127.0.0.1:8188",
        "sec_fetch_site": "same-origin", "content_type": "application/json"}


def check(**changes):
    return check_key_request(**{"method": "POST", **SAME, **changes})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost",
                                  "app.localhost", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", [None, "", "192.0.2.2", "10.0.0.1", "::ffff:10.0.0.1", "0.0.0.0",
                                  "evil.example", "localhost.evil.example", "127.0.0.1.evil.example"])
def test_other_hosts(host):
    assert not is_loopback_host(host)


def test_the_settings_dialog_request_passes():
    assert check() is None
    assert check(method="DELETE") is None
    assert check(method="GET", content_type=None) is None
    assert check(host="localhost:8188", origin="http://localhost:8188") is None
    assert check(remote="::1", host="[::1]:8188", origin="http://[::1]:8188") is None
    assert check(content_type="application/json; charset=utf-8") is None


def test_a_local_program_without_browser_headers_passes():
    assert check(origin=None, sec_fetch_site=None) is None


def test_another_machine_is_refused_even_with_forged_headers():
    refusal = check(remote="192.0.2.7")
    assert refusal is not None and refusal.status == 403
    assert "another address" in refusal.reason
    assert check(remote=None).status == 403


def test_a_request_through_a_proxy_is_refused_even_from_loopback():
    # A reverse proxy on the same machine connects from 127.0.0.1 for every visitor.
    refusal = check(proxied=True)
    assert refusal is not None and refusal.status == 403 and "through a proxy" in refusal.reason
    assert check(proxied=True, method="GET", content_type=None).status == 403


def test_dns_rebinding_host_is_refused():
    # A page on evil.example that re-resolved its name to 127.0.0.1: same origin as itself.
    refusal = check(host="evil.example:8188", origin="http://evil.example:8188")
    assert refusal is not None and refusal.status == 403
    assert "loopback address" in refusal.reason
    assert check(host=None, origin=None).status == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999", "https://127.0.0.1:8188",
                                    "null", "http://localhost:8188", "ftp://127.0.0.1:8188"])
def test_cross_origin_is_refused(origin):
    refusal = check(origin=origin)
    assert refusal is not None and refusal.status == 403
    assert "Origin" in refusal.reason


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_cross_site_fetch_metadata_is_refused(site):
    refusal = check(origin=None, sec_fetch_site=site)
    assert refusal is not None and refusal.status == 403
    assert site in refusal.reason


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_writes_must_be_json(method, ctype):
    # Forms and simple requests need no CORS preflight; JSON does, and ComfyUI answers none.
    refusal = check(method=method, content_type=ctype)
    assert refusal is not None and refusal.status == 415
    assert "application/json" in refusal.reason


def test_key_value_checks_never_echo_the_value():
    secret = "sk-\x07secret-value"
    with pytest.raises(ValueError) as e:
        check_key_value(secret)
    assert "secret" not in str(e.value)
    with pytest.raises(ValueError, match="string"):
        check_key_value(12345)
    with pytest.raises(ValueError, match=str(MAX_KEY_LENGTH)):
        check_key_value("k" * (MAX_KEY_LENGTH + 1))
    assert check_key_value("  sk-abc  ") == "  sk-abc  "  # stripped by config.save_api_key
