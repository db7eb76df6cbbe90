"""ComfyUI nodes of the pack: thin adapters over the ComfyUI-free `hunyuancustom` package."""

from __future__ import annotations

import importlib
import logging
import os

from comfy_api.latest import ComfyExtension, io

# Each module exports NODES. A module that cannot be imported (a missing optional dependency, a
# ComfyUI version whose core API moved) is skipped with its traceback in the log, so one broken
# group of nodes never takes the others down: the cloud nodes need nothing from core's models.
_MODULES = ("cloud", "batch", "compose", "modes", "local", "raylight")


def node_list(modules: tuple[str, ...] = _MODULES, package: str = __name__) -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for name in modules:
        try:
            module = importlib.import_module(f".{name}", package)
        except Exception:
            logging.exception("[HunyuanCustom] nodes.%s not loaded; the pack's other nodes are", name)
            continue
        nodes.extend(module.NODES)
    return nodes


class HunyuanCustomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


_routes_registered = False


def register_routes() -> None:
    """The key setting's HTTP routes (nodes/server_routes.py) and the template pictures' route,
    added once to ComfyUI's server."""
    global _routes_registered
    from server import PromptServer

    if _routes_registered or PromptServer.instance is None:
        return
    from .server_routes import register

    register(PromptServer.instance.routes)
    # The template browser's pictures, for cores that no longer serve them (see the module).
    from pathlib import Path

    from ..hunyuancustom import template_thumbnails

    # The folder's name as ComfyUI loaded it (not resolved: a symlinked pack keeps the link's name,
    # which is the module name the front end asks for).
    pack_dir = Path(os.path.abspath(__file__)).parent.parent
    template_thumbnails.add_routes(PromptServer.instance.routes, pack_dir)
    _routes_registered = True


async def comfy_entrypoint() -> HunyuanCustomExtension:
    register_routes()
    return HunyuanCustomExtension()
