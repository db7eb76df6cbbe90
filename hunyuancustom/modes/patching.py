"""Put a prepared mode onto a ComfyUI MODEL: the checks on the MODEL, then the patches.

Shared by the one-GPU mode nodes and the Raylight workers (`hunyuancustom.raylight.worker`), which
prepare the same inputs (audio windows, background latent) in ComfyUI's process and patch the
MODEL wherever it lives. `comfy` is imported lazily.
"""

from __future__ import annotations

import torch

from ..errors import ValidationError
from .audio import AudioModules
from .editing import BackgroundModules
from .inject import AudioCondition, BackgroundCondition, ModeInjection


def check_model(model, width: int, min_blocks: int = 1, field: str = "model") -> None:
    """The MODEL must be core's HunyuanVideo with the modules' width and enough double blocks."""
    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    if net is None or not hasattr(net, "double_blocks") or not hasattr(net, "img_in"):
        raise ValidationError(field, "must be a HunyuanVideo / HunyuanCustom MODEL (load the mode's "
                                     "checkpoint with Load Model (Local))")
    hidden = getattr(net, "hidden_size", None)
    if hidden != width:
        raise ValidationError(field, f"is {hidden} wide but the mode modules are {width} wide: load the "
                                     "MODEL and the modules from the same checkpoint")
    if len(net.double_blocks) < min_blocks:
        raise ValidationError(field, f"has {len(net.double_blocks)} double blocks; the mode needs "
                                     f"{min_blocks}")


def patch_audio(model, mods: AudioModules, latent_shape: tuple[int, int, int], windows: torch.Tensor,
                strength: float):
    """A clone of `model` with the audio modules patched in for a clip of latent (t, h, w)."""
    check_model(model, mods.width, max(mods.insert_after) + 1)
    inj = ModeInjection(tuple(latent_shape), audio=AudioCondition(mods, windows, strength))
    return inj.patch_model(model)


def patch_editing(model, mods: BackgroundModules, background: torch.Tensor, flow_shift: float):
    """A clone of `model` with the editing modules patched in for `background` [1, 32, t, h, w]
    and the editing recipe's flow shift."""
    from ..local import released

    check_model(model, mods.bg_proj.out_features)
    inj = ModeInjection(tuple(background.shape[2:]), background=BackgroundCondition(mods, background))
    return released.with_flow_shift(inj.patch_model(model), flow_shift)
