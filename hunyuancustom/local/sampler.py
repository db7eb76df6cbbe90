"""Local ref2v on ComfyUI core's HunyuanVideo model: conditioning, a plain Euler loop, decoding.

Core does the heavy lifting: `comfy.model_management.load_models_gpu` loads the MODEL (partial
loading / CPU offload when VRAM is short, fp8 weight storage), `BaseModel.apply_model` runs the
transformer (dtype casts, wrappers, `transformer_options` patches such as the audio/editing modes'
block replacements), and the VAE does tiled encode/decode. This module only follows the released
recipe: reference latent on both branches (the white frame's latent on the negative one), true
CFG, the shifted flow schedule and Euler steps. `comfy` is imported lazily so the package imports
without ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ValidationError
from . import prompt as prompt_template
from . import reference
from .schedule import cfg, flow_sigmas

POSITIVE, NEGATIVE = 0, 1  # core's cond_or_uncond values
LATENT_CHANNELS = 16


@dataclass
class Branch:
    """One CFG branch: text states [1, L, C], pooled CLIP-L [1, 768], optional text mask [1, L],
    and the reference latent [1, 16, 1, h, w] as the VAE returns it (not yet scaled)."""

    context: torch.Tensor
    pooled: torch.Tensor
    ref_latent: torch.Tensor
    attention_mask: torch.Tensor | None = None


def check_frames(frames: int, field: str = "num_frames") -> int:
    if frames < 1 or (frames - 1) % 4:
        raise ValidationError(field, f"must be 4k+1 (1, 5, 9, ..., 129), got {frames}")
    return frames


def latent_shape(width: int, height: int, frames: int) -> tuple[int, int, int, int, int]:
    if width % 16 or height % 16:
        raise ValidationError("size", f"width and height must be multiples of 16, got {width}x{height}")
    return (1, LATENT_CHANNELS, (check_frames(frames) - 1) // 4 + 1, height // 8, width // 8)


def from_conditioning(conditioning, field: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(text states, pooled, mask) from core CONDITIONING `[[tensor, {"pooled_output", ...}]]`."""
    try:
        context, extra = conditioning[0][0], conditioning[0][1]
    except (IndexError, KeyError, TypeError) as e:
        raise ValidationError(field, "must be a CONDITIONING from the HunyuanVideo text encoders") from e
    pooled = extra.get("pooled_output")
    if pooled is None:
        raise ValidationError(field, "has no pooled_output: encode it with the HunyuanVideo CLIP "
                                     "(clip_l + llava_llama3)")
    return context, pooled, extra.get("attention_mask")


def encode_text_image(clip, clip_vision, text: str, image: torch.Tensor, name: str):
    """Text-image fusion through core's HunyuanVideo text encoder: the prompt in the released
    template with the "looks like<image>" suffix, the LLaVA features of `image` (already a white-
    padded 336 square) in place of `<image>`, all 576 of them. Returns CONDITIONING."""
    vision = clip_vision.encode_image(image, crop=False)
    embeds = getattr(vision, "mm_projected", None)
    if embeds is None:
        raise ValidationError("clip_vision", "must be the LLaVA vision encoder (llava_llama3_vision"
                                             ".safetensors): it gave no mm_projected output")
    tokens = clip.tokenize(text, llama_template=prompt_template.comfy_llama_template(name),
                           image_embeds=embeds, image_interleave=1)
    return clip.encode_from_tokens_scheduled(tokens)


def encode_reference(vae, image: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference latent, white latent): the white-padded reference frame and an all-white frame,
    each encoded as one latent frame."""
    frame = reference.vae_reference(image, width, height)
    ref = vae.encode(frame[:, :, :, :3])
    white = vae.encode(reference.white_like(frame))
    return ref, white


def _model_call(model_patcher, x, sigma, branches: list[Branch], which: list[int], base_options: dict):
    """Denoised predictions for `branches` (one batch), through core's model function with the
    patcher's transformer_options (block patches of the modes, wrappers) and core's cond_or_uncond."""
    model = model_patcher.model
    n = len(branches)
    c = {
        "c_crossattn": torch.cat([b.context for b in branches]),
        "y": torch.cat([b.pooled for b in branches]),
        "ref_latent": torch.cat([model.process_latent_in(b.ref_latent) for b in branches]),
    }
    if branches[0].attention_mask is not None:
        c["attention_mask"] = torch.cat([b.attention_mask for b in branches])
    options = dict(base_options)
    options.update({"cond_or_uncond": list(which), "sigmas": sigma.expand(n)})
    c["transformer_options"] = options
    x_in, t_in = torch.cat([x] * n), sigma.expand(n)
    wrapper = model_patcher.model_options.get("model_function_wrapper")
    if wrapper is not None:
        return wrapper(model.apply_model, {"input": x_in, "timestep": t_in, "c": c, "cond_or_uncond": which})
    return model.apply_model(x_in, t_in, **c)


def predict(model_patcher, x, sigma, positive: Branch, negative: Branch | None, guidance_scale: float,
            base_options: dict) -> torch.Tensor:
    """The guided denoised prediction at `sigma` (true CFG).

    The branches run as two batch-1 calls: core's HunyuanVideo cannot take a batch above 1 with
    `ref_latent` (it writes into an expanded position-id view), and one branch at a time also
    halves the activation peak at 720p.
    """
    pos = _model_call(model_patcher, x, sigma, [positive], [POSITIVE], base_options)
    if negative is None or guidance_scale == 1.0:
        return pos
    neg = _model_call(model_patcher, x, sigma, [negative], [NEGATIVE], base_options)
    return cfg(pos, neg, guidance_scale)


def initial_noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def sample(model_patcher, positive: Branch, negative: Branch | None, shape, *, steps: int,
           guidance_scale: float, flow_shift: float, seed: int,
           on_step: Callable[[int, int], None] | None = None, load: bool = True) -> torch.Tensor:
    """Run the Euler loop; returns the latent [1, 16, t, h, w] (VAE scale, on the CPU)."""
    import comfy.model_management as mm

    model = model_patcher.model
    if load:
        memory = model.memory_required([1, *shape[1:]]) * 1.5  # one branch per call
        # With the mode modules a MODEL carries (see modes.inject), as core's own sampler does.
        mm.load_models_gpu([model_patcher, *model_patcher.get_nested_additional_models()],
                           memory_required=memory)
    device = model_patcher.load_device
    sigmas = flow_sigmas(steps, flow_shift).to(device)
    base_options = dict(model_patcher.model_options.get("transformer_options", {}))
    base_options["sample_sigmas"] = sigmas
    branches = [b for b in (positive, negative) if b is not None]
    for b in branches:
        b.context, b.pooled, b.ref_latent = (t.to(device) for t in (b.context, b.pooled, b.ref_latent))
        if b.attention_mask is not None:
            b.attention_mask = b.attention_mask.to(device)
    x = initial_noise(shape, seed).to(device) * sigmas[0]
    for i in range(steps):
        mm.throw_exception_if_processing_interrupted()
        sigma, sigma_next = sigmas[i : i + 1], sigmas[i + 1]
        denoised = predict(model_patcher, x, sigma, positive, negative, guidance_scale, base_options)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)  # Euler: velocity = (x - x0) / sigma
        if on_step is not None:
            on_step(i + 1, steps)
    return model.process_latent_out(x).float().cpu()


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
