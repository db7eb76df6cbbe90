"""Core's multi-GPU work units (ComfyUI 0.33+), as the pack's patches see them.

Core deep-clones a MODEL once per extra device (`ModelPatcher.deepclone_multigpu`, then
`match_multigpu_clones`) and runs the CFG branches from one thread per device, each on its device's
clone but with the first MODEL's wrappers and block patches. So a patch that holds modules is told
about each clone (a callback), and one that keeps state keys it by the thread's device. Older cores
have none of this; there the functions here do nothing.

`comfy` is imported lazily: the package imports without ComfyUI.
"""

from __future__ import annotations

import torch

CALLBACKS = ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES")
THREAD_DEVICE = "multigpu_thread_device"  # transformer_options entry core sets in each device thread


def follow_device_clones(model, key: str, callback) -> None:
    """Call `callback(original, clone)` for each per-device clone core makes of `model` (replacing
    an earlier callback under `key`); nothing where core has no multi-GPU."""
    import comfy.patcher_extension as ext

    for name in CALLBACKS:
        call_type = getattr(ext.CallbacksMP, name, None)
        if call_type is not None:
            model.remove_callbacks_with_key(call_type, key)
            model.add_callback_with_key(call_type, key, callback)


def thread_device(options: dict | None) -> torch.device | None:
    """The device of core's multi-GPU thread running this call, or None outside it. Two device
    entries may both hold tensors on "cpu", or share a type and differ only by index: this, not a
    tensor's device, tells them apart."""
    device = (options or {}).get(THREAD_DEVICE)
    return torch.device(device) if device is not None else None
