"""HunyuanCustom: ComfyUI-free core of the node pack (request model, API client, video I/O)."""

__version__ = "0.1.0"
