"""What the released pipeline feeds its transformer, as core CONDITIONING and LATENT.

Both CFG branches carry the same reference latent (the release concatenates `ref_latents` with
itself; the white image's latent is only used with `ip_cfg_scale > 0`, which no released script
sets). The negative branch's text mask is cut to its first `sum - 575` tokens, so of the 576
white-image features only the first stays visible. The positive mask is passed on as the text
encoder made it; `released.py` reads it the way the released transformer does.

Pure torch: the CONDITIONING layout is core's (`[[states [1, L, C], {"pooled_output", ...}]]`).
"""

from __future__ import annotations

import torch

from ..errors import ValidationError

EXTRA_IMAGE_FEATURES = 575  # LLaVA's 576 image features replace one `<image>` token
LATENT_CHANNELS = 16


def check_frames(frames: int, field: str = "length") -> int:
    if frames < 1 or (frames - 1) % 4:
        raise ValidationError(field, f"must be 4k+1 (1, 5, 9, ..., 129), got {frames}")
    return frames


def empty_latent(width: int, height: int, frames: int, batch_size: int = 1) -> dict:
    """core's LATENT for a clip: zeros [batch, 16, (frames - 1) / 4 + 1, height / 8, width / 8]."""
    for field, v in (("width", width), ("height", height)):
        if v < 16 or v % 16:
            raise ValidationError(field, f"{v} is not allowed; allowed: multiples of 16, at least 16")
    if batch_size < 1:
        raise ValidationError("batch_size", f"must be at least 1, got {batch_size}")
    t = (check_frames(frames) - 1) // 4 + 1
    return {"samples": torch.zeros(batch_size, LATENT_CHANNELS, t, height // 8, width // 8)}


def parts(conditioning, field: str) -> tuple[torch.Tensor, dict]:
    """(text states, extras) of the first entry of a CONDITIONING, checked."""
    try:
        states, extra = conditioning[0][0], conditioning[0][1]
    except (IndexError, KeyError, TypeError) as e:
        raise ValidationError(field, "must be a CONDITIONING from the HunyuanVideo text encoders") from e
    if not isinstance(states, torch.Tensor) or states.dim() != 3:
        raise ValidationError(field, "must be a CONDITIONING from the HunyuanVideo text encoders")
    if extra.get("pooled_output") is None:
        raise ValidationError(field, "has no pooled_output: encode it with the HunyuanVideo CLIP "
                                     "(clip_l + llava_llama3)")
    return states, extra


def text_mask(states: torch.Tensor, extra: dict) -> torch.Tensor:
    """The branch's text mask [1, L] (all ones where the encoder gave none)."""
    mask = extra.get("attention_mask")
    if mask is None:
        return torch.ones(states.shape[0], states.shape[1], dtype=torch.long)
    if torch.is_floating_point(mask) or mask.shape[-1] != states.shape[1]:
        raise ValidationError("negative", "has an attention mask that is not a 0/1 token mask of the "
                                          "text's length")
    return mask


def negative_text_mask(mask: torch.Tensor) -> torch.Tensor:
    """The release's cut of the negative mask: its first `sum - 575` positions, when the sum is
    above 575 (the white image's features are in it); otherwise unchanged."""
    out = mask.clone()
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        if n > EXTRA_IMAGE_FEATURES:
            out[i] = 0
            out[i, :n - EXTRA_IMAGE_FEATURES] = 1
    return out


def with_reference(conditioning, ref_latent: torch.Tensor, field: str, negative: bool = False):
    """A copy of every entry of `conditioning` carrying `ref_latent` (raw VAE latent [1, 16, 1, h, w]);
    a negative's mask is cut as the release cuts it."""
    parts(conditioning, field)
    out = []
    for states, extra in conditioning:
        extra = dict(extra)
        extra["ref_latent"] = ref_latent
        if negative:
            extra["attention_mask"] = negative_text_mask(text_mask(states, extra))
        out.append([states, extra])
    return out


def check_reference_size(ref_latent: torch.Tensor, latent: dict, field: str = "latent") -> None:
    """The reference latent must be one frame of the video's latent size."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 5:
        raise ValidationError(field, "must be a video LATENT [batch, 16, frames, height, width]")
    if tuple(ref_latent.shape[-2:]) != tuple(samples.shape[-2:]):
        raise ValidationError(field, f"is {samples.shape[-1] * 8}x{samples.shape[-2] * 8} but the reference "
                                     f"was prepared at {ref_latent.shape[-1] * 8}x{ref_latent.shape[-2] * 8}")
