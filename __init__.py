"""ComfyUI-HunyuanCustom: HunyuanCustom subject-consistent video, in the cloud or on your GPU."""

import importlib.util

WEB_DIRECTORY = "./js"

# ComfyUI imports this file to load the pack. Outside ComfyUI (pytest collecting the repository,
# the CLI) there is no `comfy_api` and no nodes to register.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
