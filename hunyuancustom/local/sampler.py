"""Local ref2v on ComfyUI core: conditioning as the release builds it, core's own sampler, decoding.

Core does the heavy lifting: model management (partial loading, CPU offload, fp8 storage), its
HunyuanVideo transformer (with the released-recipe patches of `released.py` on the MODEL), its
samplers and schedulers (the path core's KSampler takes, so every wrapper, patch, step cache,
guidance function and latent preview on the MODEL applies), and the VAE's tiled encode/decode. This
module builds what the release feeds the transformer: the text-image fusion, the reference latent
on both CFG branches (`conditioning.py`) and the LATENT. `comfy` is imported lazily so the package
imports without ComfyUI.
"""

from __future__ import annotations

import math

import torch

from ..errors import ValidationError
from . import conditioning as cond
from . import prompt as prompt_template
from . import reference, text_encoder

RELEASED_SAMPLER, RELEASED_SCHEDULER = "euler", "simple"  # simple = the released sigmas (released.py)


def encode_text_image(clip, clip_vision, text: str, image: torch.Tensor, name: str, field: str = "prompt"):
    """The released text-image fusion (`text_encoder.py`): the prompt in the released template with
    the "looks like<image>" suffix, the LLaVA features of `image` (already a white-padded 336
    square) in place of `<image>`. Returns CONDITIONING."""
    vision = clip_vision.encode_image(image, crop=False)
    embeds = getattr(vision, "mm_projected", None)
    if embeds is None:
        raise ValidationError("clip_vision", "must be the LLaVA vision encoder (llava_llama3_vision"
                                             ".safetensors): it gave no mm_projected output")
    return text_encoder.encode(clip, embeds[0], text, name, field)


def encode_reference(vae, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The reference latent: the white-padded reference frame encoded as one latent frame (the VAE's
    mean; the release draws a posterior sample)."""
    frame = reference.vae_reference(image, width, height)
    return vae.encode(frame[:, :, :, :3])


def ref2v_conditioning(vae, ref_image: torch.Tensor, width: int, height: int, *, prompt: str,
                       negative_prompt: str, subject: str, clip=None, clip_vision=None, positive=None,
                       negative=None):
    """(positive, negative) CONDITIONING as the release builds its two branches: the prompt (and
    the negative prompt with an all-white image) through the text-image fusion, unless ready
    CONDITIONING is given; the same reference latent on both; the negative mask cut."""
    llava = reference.llava_image(ref_image)
    if positive is None:
        positive = encode_text_image(clip, clip_vision, prompt, llava, subject)
    if negative is None:
        negative = encode_text_image(clip, clip_vision, negative_prompt, reference.white_like(llava),
                                     prompt_template.NEGATIVE_NAME, "negative_prompt")
    ref_latent = encode_reference(vae, ref_image, width, height)
    return (cond.with_reference(positive, ref_latent, "positive"),
            cond.with_reference(negative, ref_latent, "negative", negative=True))


def check_sources(clip, clip_vision, positive, negative) -> None:
    """Each branch needs ready CONDITIONING or the encoders (clip + clip_vision)."""
    can_encode = clip is not None and clip_vision is not None
    for field, given in (("positive", positive), ("negative", negative)):
        if given is not None:
            cond.parts(given, field)
        elif not can_encode:
            raise ValidationError(field, "connect clip and clip_vision (text-image fusion), or a "
                                         f"{field} CONDITIONING")


def sample(model, positive, negative, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str = RELEASED_SAMPLER, scheduler: str = RELEASED_SCHEDULER,
           denoise: float = 1.0) -> dict:
    """Core's KSampler path (`nodes.common_ksampler`): core's noise for `seed`, its sampler and
    scheduler, the MODEL's wrappers and patches, latent previews and the progress bar. Returns the
    LATENT."""
    import nodes as comfy_nodes

    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent, denoise=denoise)[0]


def decode(vae, latent: torch.Tensor, tile: int = 256, overlap: int = 64, temporal: int = 64,
           temporal_overlap: int = 8) -> torch.Tensor:
    """Tiled VAE decode (the released pipeline decodes with tiling) -> IMAGE frames [F, H, W, 3]."""
    t_comp = vae.temporal_compression_decode() or 1
    s_comp = vae.spacial_compression_decode()
    tile_t = max(2, temporal // t_comp)
    overlap_t = max(1, min(tile_t // 2, temporal_overlap // t_comp))
    frames = vae.decode_tiled(latent, tile_x=tile // s_comp, tile_y=tile // s_comp,
                              overlap=overlap // s_comp, tile_t=tile_t, overlap_t=overlap_t)
    return frames.reshape(-1, *frames.shape[-3:]).clamp(0, 1)


def resolve_seed(seed: int) -> int:
    """-1 picks a random seed (as the cloud node's table says)."""
    if seed == -1:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    return seed


def fps_ok(fps: float) -> float:
    if not (math.isfinite(fps) and fps > 0):
        raise ValidationError("frame_rate", f"must be a positive number, got {fps}")
    return fps
