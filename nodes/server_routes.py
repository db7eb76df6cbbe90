"""HTTP routes of the pack on ComfyUI's server: the API key setting.

GET    /hunyuancustom/key  -> {"set", "source", "last4"}  (never the key)
POST   /hunyuancustom/key  {"key": "..."} -> the same status, key stored in the pack's key file
DELETE /hunyuancustom/key  -> the same status, key file removed

Every request passes `key_guard.check_key_request` (loopback peer, no proxy, loopback Host, same
origin, JSON writes); HUNYUANCUSTOM_KEY_ROUTES=off refuses them all. The key goes from the
request body straight to the 0600 key file, with the API root configured now (the only server it
will be sent to): it is never logged, echoed or kept in ComfyUI's settings store. A key that is
not printable ASCII without spaces is refused with a 400 that says so.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..hunyuancustom import config
from ..hunyuancustom.errors import ConfigError
from ..hunyuancustom.key_guard import PROXY_HEADERS, Refusal, check_key_request, check_key_value

ROUTE = "/hunyuancustom/key"


def _refused(request: web.Request) -> web.Response | None:
    if not config.key_routes_enabled():
        refusal = Refusal(403, f"managing the API key from the browser is turned off on this "
                               f"ComfyUI ({config.KEY_ROUTES_ENV}=off); set it on the ComfyUI "
                               f"machine with {config.KEY_ENV} or the key file")
    else:
        refusal = check_key_request(
            method=request.method, remote=request.remote, host=request.headers.get("Host"),
            origin=request.headers.get("Origin"), sec_fetch_site=request.headers.get("Sec-Fetch-Site"),
            content_type=request.headers.get("Content-Type"), scheme=request.scheme,
            proxied=any(h in request.headers for h in PROXY_HEADERS))
    if refusal is None:
        return None
    logging.warning("[HunyuanCustom] refused %s %s from %s: %s", request.method, ROUTE,
                    request.remote, refusal.reason)
    return web.json_response({"error": refusal.reason}, status=refusal.status)


def _status() -> web.Response:
    # no-store: a status line must not linger in a shared cache or the browser's disk cache.
    return web.json_response(config.key_status(), headers={"Cache-Control": "no-store"})


async def get_key(request: web.Request) -> web.Response:
    return _refused(request) or _status()


async def set_key(request: web.Request) -> web.Response:
    refused = _refused(request)
    if refused:
        return refused
    try:
        body = json.loads(await request.text())
        if not isinstance(body, dict):
            raise ValueError("send a JSON object {\"key\": \"...\"}")
        config.save_api_key(check_key_value(body.get("key")))
    except json.JSONDecodeError:
        return web.json_response({"error": "the body is not JSON"}, status=400)
    except (ValueError, ConfigError) as e:  # their messages never contain the key
        return web.json_response({"error": str(e)}, status=400)
    except OSError as e:
        return web.json_response({"error": f"could not store the key: {e.strerror}"}, status=500)
    logging.info("[HunyuanCustom] API key saved to the key file")
    return _status()


async def delete_key(request: web.Request) -> web.Response:
    refused = _refused(request)
    if refused:
        return refused
    try:
        config.delete_api_key()
    except OSError as e:
        return web.json_response({"error": f"could not remove the key: {e.strerror}"}, status=500)
    return _status()


def register(routes: web.RouteTableDef) -> None:
    """Add the routes to ComfyUI's table (called once, while the pack loads)."""
    routes.get(ROUTE)(get_key)
    routes.post(ROUTE)(set_key)
    routes.delete(ROUTE)(delete_key)
