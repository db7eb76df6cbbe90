"""Who may read or change the API key through ComfyUI's HTTP server.

The key routes are for the person sitting at the ComfyUI machine. ComfyUI is often started with
`--listen` (reachable from the network) and browsers will happily send requests from any web page
to a local server, so every key request must pass three checks:

- the peer is a loopback address (a request from another machine is refused, `--listen` or not);
- the Host header names a loopback host: a DNS-rebinding page (evil.example resolving to
  127.0.0.1) reaches a loopback socket with its own name in Host;
- a browser request carries Origin and Sec-Fetch-Site, and they must say "this same server"; a
  write must be `application/json`, which a cross-site page cannot send without a CORS preflight
  that ComfyUI does not answer.

A request that says it came through a proxy (Forwarded, X-Forwarded-*, X-Real-IP, Via) is
refused: behind a reverse proxy on the same machine every visitor would otherwise look local. A
proxy that adds none of these, and other accounts on the same machine, cannot be told apart from
the owner's browser: such setups turn the routes off (`HUNYUANCUSTOM_KEY_ROUTES=off`, see
`config.key_routes_enabled`). A local program without Origin (curl) is allowed, as it is the
owner's own machine. The function is pure so each refusal is tested without a server.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# Headers a proxy adds to say whom it forwards for.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
                 "X-Real-IP", "Via")


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def is_loopback_host(host: str | None) -> bool:
    """True for 'localhost', 127.0.0.0/8 and ::1 (with or without brackets)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 from a dual-stack socket
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _split_host(value: str) -> tuple[str | None, int | None]:
    parsed = urllib.parse.urlsplit("//" + value)
    try:
        return parsed.hostname, parsed.port
    except ValueError:  # a port that is not a number
        return None, None


def check_key_request(*, method: str, remote: str | None, host: str | None, origin: str | None,
                      sec_fetch_site: str | None, content_type: str | None,
                      scheme: str = "http", proxied: bool = False) -> Refusal | None:
    """None when the request may touch the key; otherwise why not, with the HTTP status.
    `proxied`: the request carries one of PROXY_HEADERS."""
    if not is_loopback_host(remote):
        return Refusal(403, "the API key can only be managed from the ComfyUI machine itself "
                            "(the request came from another address)")
    if proxied:
        return Refusal(403, "the API key can only be managed from the ComfyUI machine itself "
                            "(the request came through a proxy); set it there with the "
                            "WAVESPEED_API_KEY environment variable or the key file")
    host_name, host_port = _split_host(host or "")
    if not is_loopback_host(host_name):
        return Refusal(403, "the API key can only be managed through a loopback address "
                            "(open ComfyUI as http://127.0.0.1:<port> or http://localhost:<port>)")
    if sec_fetch_site is not None and sec_fetch_site not in ("same-origin", "none"):
        return Refusal(403, f"cross-site request refused (Sec-Fetch-Site: {sec_fetch_site})")
    if origin is not None:
        o = urllib.parse.urlsplit(origin)
        try:
            o_port = o.port or {"http": 80, "https": 443}.get(o.scheme)
        except ValueError:
            o_port = None
        h_port = host_port or {"http": 80, "https": 443}.get(scheme)
        if o.scheme != scheme or o.hostname != host_name or o_port != h_port:
            return Refusal(403, "cross-origin request refused (Origin does not match this server)")
    if method.upper() in WRITE_METHODS:
        mime = (content_type or "").split(";")[0].strip().lower()
        if mime != "application/json":
            return Refusal(415, "send the key as JSON (Content-Type: application/json)")
    return None


MAX_KEY_LENGTH = 512


def check_key_value(value: object) -> str:
    """What a request body may hand to `config.save_api_key` (which refuses empty keys and keys
    that are not printable ASCII without spaces); ValueError says what is wrong without echoing
    the value."""
    if not isinstance(value, str):
        raise ValueError("'key' must be a string")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"the key is longer than {MAX_KEY_LENGTH} characters")
    if not value.strip().isprintable():
        raise ValueError("the key contains control characters; paste only the key")
    return value
