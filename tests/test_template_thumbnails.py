"""The template pictures stay reachable on a core that serves only `.json` from its templates route
(ComfyUI 0.38.1's `app/custom_node_manager.py`, its behaviour re-created below in a few lines):
the pack's own route (hunyuancustom/template_thumbnails.py), registered while the pack loads and so
before core's, answers for the pack's pictures; core still answers for the workflows. On 0.3.64 and
0.33.0, which serve the whole folder, tests/test_browser.py checks the pictures in the real front
end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from hunyuancustom import template_thumbnails  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-HunyuanCustom"


def _core_0_38_app(pack_dir: Path) -> web.Application:
    routes = web.RouteTableDef()
    template_thumbnails.add_routes(routes, pack_dir)  # the pack loads first

    @routes.get("/workflow_templates/{module_name}/{filename}")
    async def json_only(request):  # core 0.38.1: only <name>.json of a known pack
        filename = request.match_info["filename"]
        if not filename.endswith(".json"):
            raise web.HTTPNotFound()
        path = pack_dir / "example_workflows" / filename
        if request.match_info["module_name"] != pack_dir.name or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.add_routes(routes)
    # server.py mounts every route a second time under /api, which the front end uses
    app.add_routes([web.RouteDef(r.method, "/api" + r.path, r.handler, r.kwargs) for r in routes
                    if isinstance(r, web.RouteDef)])
    return app


def _get(app, paths):
    async def run():
        async with TestClient(TestServer(app)) as client:
            out = []
            for path in paths:
                r = await client.get(path)
                out.append((r.status, await r.read()))
            return out
    return asyncio.run(run())


def test_pictures_are_served_where_core_serves_only_json(tmp_path):
    pack = tmp_path / PACK
    pack.symlink_to(REPO, target_is_directory=True)  # as the tests link the pack into custom_nodes
    name = "HunyuanCustom Ref2V (Cloud)"
    picture = (REPO / "example_workflows" / f"{name}.jpg").read_bytes()
    workflow = (REPO / "example_workflows" / f"{name}.json").read_bytes()
    jpg, jpg_api, js, missing, other_pack, escape = _get(_core_0_38_app(pack), [
        f"/workflow_templates/{PACK}/{name}.jpg", f"/api/workflow_templates/{PACK}/{name}.jpg",
        f"/api/workflow_templates/{PACK}/{name}.json", f"/api/workflow_templates/{PACK}/nothing.jpg",
        f"/api/workflow_templates/OtherPack/{name}.jpg", f"/api/workflow_templates/{PACK}/..%2FREADME.jpg"])
    assert jpg == (200, picture) and jpg_api == (200, picture)
    assert js == (200, workflow)  # core's route still serves the workflow
    assert missing[0] == 404 and other_pack[0] == 404 and escape[0] == 404
