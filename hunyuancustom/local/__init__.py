"""Local (own GPU) HunyuanCustom ref2v.

ComfyUI-free: `checkpoint` (layouts, key check, fp8 scales, conversion), `schedule`, `reference`,
`prompt`, `convert` (CLI). `comfy_model` and `sampler` use ComfyUI core and import `comfy` lazily,
inside their functions, so this package imports without ComfyUI.
"""
