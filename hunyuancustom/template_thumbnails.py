"""The template browser's pictures of the pack's example workflows, served by the pack itself.

ComfyUI's front end (1.27 and 1.49 alike) asks `/api/workflow_templates/<pack folder>/<name>.jpg`
for a custom node's template picture. ComfyUI up to 0.33.0 serves the pack's whole
`example_workflows/` folder there; newer cores (0.38.1, `app/custom_node_manager.py`) serve only
`.json` from that route and answer 404 for the pictures. The pack adds a route for exactly its own
pictures, registered while the pack loads, so before core's: where core still serves the folder,
core's static route answers first; where it does not, this one does. Requests for `.json` never
match it, so core keeps serving the workflows.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def add_routes(routes: web.RouteTableDef, pack_dir: Path) -> str:
    """Add GET /workflow_templates/<pack folder name>/<picture> to ComfyUI's route table (ComfyUI
    also mounts each route under /api). Returns the path pattern."""
    folder = pack_dir / "example_workflows"
    pattern = (f"/workflow_templates/{pack_dir.name}/"
               "{filename:[^/]+\\.(?:" + "|".join(s[1:] for s in PICTURE_SUFFIXES) + ")}")

    async def picture(request: web.Request) -> web.StreamResponse:
        name = request.match_info["filename"]
        # Only a file directly in example_workflows/ (no separators, no dot-files).
        if "/" in name or "\\" in name or name.startswith(".") or not re.fullmatch(r"[^/\\]+", name):
            raise web.HTTPNotFound()
        path = folder / name
        if path.suffix.lower() not in PICTURE_SUFFIXES or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    routes.get(pattern)(picture)
    return pattern
