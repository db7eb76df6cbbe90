"""What the (Ray) nodes run inside each Raylight worker, on the worker's own ModelPatcher.

Each function takes the worker's MODEL and returns the patched clone, exactly as the one-GPU node
patches its MODEL, from plain inputs (a checkpoint path, numbers, tensors prepared in ComfyUI's
process). Running one again on a worker that keeps its patched MODEL replaces the earlier patch: the
released recipe's wrappers, object patches and flow shift are keyed, and the modes replace their own
block patches (`modes.inject`). `comfy` is imported lazily, as everywhere in the package.
"""

from __future__ import annotations

import os

import torch

from ..errors import ValidationError
from ..local import released
from ..modes.checkpoint import ModeModules, load_mode_modules
from ..modes.patching import patch_audio, patch_editing

_modules: dict[str, tuple[tuple[int, int], ModeModules]] = {}  # one checkpoint's modules at most


def apply_released_recipe(model, deepcache: bool = True, flow_shift: float = released.RELEASED_SHIFT,
                          released_schedule: bool = True):
    """Released Recipe (Local)'s patch; `flow_shift` 0 keeps the MODEL's own shift."""
    if not released.is_hunyuan_video(model):
        raise ValidationError("ray_actors", "the workers' model is not a HunyuanVideo / HunyuanCustom "
                                            "MODEL (load the checkpoint with RayUNETLoader first)")
    shift = flow_shift if flow_shift > 0 else None
    return released.apply_released(model, deepcache=deepcache, shift=shift,
                                   released_schedule=released_schedule)


def mode_modules(checkpoint: str) -> ModeModules:
    """The checkpoint's mode modules, read once per worker while the file is unchanged (a mode run
    again reuses them, so model management keeps seeing the same modules)."""
    st = os.stat(checkpoint)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _modules.get(checkpoint)
    if hit is None or hit[0] != stamp:
        _modules.clear()
        _modules[checkpoint] = (stamp, load_mode_modules(checkpoint))
    return _modules[checkpoint][1]


def apply_audio_mode(model, checkpoint: str, latent_shape: tuple[int, int, int], windows: torch.Tensor,
                     strength: float):
    """Audio-Driven (Local)'s patch, with the audio modules read from `checkpoint` here."""
    mods = mode_modules(checkpoint).require_audio()
    return patch_audio(model, mods, tuple(latent_shape), windows, strength)


def apply_editing_mode(model, checkpoint: str, background: torch.Tensor, flow_shift: float):
    """Video-Driven (Local)'s patch, with the editing modules read from `checkpoint` here."""
    mods = mode_modules(checkpoint).require_editing()
    return patch_editing(model, mods, background, flow_shift)
