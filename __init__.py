"""ComfyUI-HunyuanCustom: HunyuanCustom subject-consistent video, in the cloud or on your GPU."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
