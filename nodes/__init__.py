"""ComfyUI nodes of the pack: thin adapters over the ComfyUI-free `hunyuancustom` package."""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

# Each module exports NODES. A module whose optional dependencies are missing is skipped with a
# log line instead of taking the whole pack down.
_MODULES = ("cloud", "batch", "compose", "modes", "local")


def node_list() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ImportError as e:
            logging.warning("[HunyuanCustom] nodes.%s not loaded: %s", name, e)
            continue
        nodes.extend(module.NODES)
    return nodes


class HunyuanCustomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


_routes_registered = False


def register_routes() -> None:
    """The key setting's HTTP routes (nodes/server_routes.py), added once to ComfyUI's server."""
    global _routes_registered
    from server import PromptServer

    if _routes_registered or PromptServer.instance is None:
        return
    from .server_routes import register

    register(PromptServer.instance.routes)
    _routes_registered = True


async def comfy_entrypoint() -> HunyuanCustomExtension:
    register_routes()
    return HunyuanCustomExtension()
