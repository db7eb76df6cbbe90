"""Tiny random-weight HunyuanCustom transformers in every released file layout.

Real key names and tensor layouts (`img_in.proj` is a Conv3d weight [hidden, 16, 1, 2, 2], Linears
are [out, in], q/k norms are per head dim 128, ...); only the sizes are small: hidden 128 (one head
of 128, as ComfyUI derives heads = hidden / 128), 1 double + 1 single block, 2 refiner blocks, text
width 32, pooled width 768 (fixed by ComfyUI's detection).

Builders return state dicts; `write_*` save them in the layouts users have:
- released bf16 `.pt` (weights under "module"),
- released fp8 `.pt` + `_map.pt` scales,
- ComfyUI-style fp8-scaled safetensors,
- plain safetensors.
Reusable by the mode tests: pass `extras=` (e.g. tests.modes_models.audio_state_dict(width=128)).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hunyuancustom.local.checkpoint import (
    SCALED_FP8_MARKER,
    backbone_keys,
    fp8_linear_modules,
    fp8_map_path,
)

HIDDEN, HEAD_DIM, TEXT_DIM, POOLED_DIM, CHANNELS = 128, 128, 32, 768, 16
PATCH = (1, 2, 2)


def _shape(key: str, hidden: int, text_dim: int) -> tuple[int, ...]:
    h, mlp = hidden, 4 * hidden
    name = key.rsplit(".", 1)[0]
    bias = key.endswith(".bias")
    table = {
        "img_in.proj": (h, CHANNELS, *PATCH),
        "txt_in.input_embedder": (h, text_dim),
        "txt_in.t_embedder.mlp.0": (h, 256), "txt_in.t_embedder.mlp.2": (h, h),
        "txt_in.c_embedder.linear_1": (h, text_dim), "txt_in.c_embedder.linear_2": (h, h),
        "time_in.mlp.0": (h, 256), "time_in.mlp.2": (h, h),
        "vector_in.in_layer": (h, POOLED_DIM), "vector_in.out_layer": (h, h),
        "final_layer.linear": (CHANNELS * 4, h), "final_layer.adaLN_modulation.1": (2 * h, h),
    }
    tail = name.split(".", 2)[-1] if name.startswith(("double_blocks", "single_blocks")) else name
    if name.startswith("txt_in.individual_token_refiner"):
        tail = name.split(".", 4)[-1]
        table.update({"norm1": (h,), "norm2": (h,), "self_attn_qkv": (3 * h, h), "self_attn_proj": (h, h),
                      "mlp.fc1": (mlp, h), "mlp.fc2": (h, mlp), "adaLN_modulation.1": (2 * h, h)})
    elif name.startswith("double_blocks"):
        tail = tail.split("_", 1)[1]  # img_attn_qkv -> attn_qkv
        table.update({"mod.linear": (6 * h, h), "attn_qkv": (3 * h, h), "attn_q_norm": (HEAD_DIM,),
                      "attn_k_norm": (HEAD_DIM,), "attn_proj": (h, h), "mlp.fc1": (mlp, h),
                      "mlp.fc2": (h, mlp)})
    elif name.startswith("single_blocks"):
        table.update({"linear1": (3 * h + mlp, h), "linear2": (h, h + mlp), "q_norm": (HEAD_DIM,),
                      "k_norm": (HEAD_DIM,), "modulation.linear": (3 * h, h)})
    shape = table[tail]
    return (shape[0],) if bias else shape


def backbone_state_dict(seed: int = 0, double: int = 1, single: int = 1, hidden: int = HIDDEN,
                        text_dim: int = TEXT_DIM, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """A random backbone with the released key names; weights scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k in backbone_keys(double, single, 2):
        shape = _shape(k, hidden, text_dim)
        if "norm" in k and k.endswith(".weight"):
            t = 1 + 0.05 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=g) * fan_in ** -0.5
        sd[k] = t.to(dtype)
    return sd


def quantize_released_fp8(sd: dict) -> tuple[dict, dict]:
    """The released fp8 recipe: per Linear of the blocks, scale = max|w| / 448, w8 = (w / scale) in
    float8_e4m3fn. Returns (fp8 state dict, {module: scale})."""
    out, scales = dict(sd), {}
    for module in fp8_linear_modules(sd):
        w = sd[module + ".weight"].float()
        scale = w.abs().max() / torch.finfo(torch.float8_e4m3fn).max
        out[module + ".weight"] = (w / scale).to(torch.float8_e4m3fn)
        scales[module] = scale
    return out, scales


def write_released_pt(path: Path, sd: dict) -> Path:
    torch.save({"module": sd}, path)
    return path


def write_released_fp8(path: Path, sd: dict) -> tuple[Path, dict]:
    """`path` (…_fp8.pt) and its `…_fp8_map.pt`; returns (path, scales)."""
    fp8_sd, scales = quantize_released_fp8(sd)
    torch.save({"module": fp8_sd}, path)
    torch.save({"module": scales}, fp8_map_path(path))
    return path, scales


def write_scaled_safetensors(path: Path, sd: dict,
                             prefix: str = "model.diffusion_model.") -> tuple[Path, dict]:
    """ComfyUI's single-file fp8-scaled layout (`scale_weight` per Linear + `scaled_fp8` marker)."""
    from safetensors.torch import save_file

    fp8_sd, scales = quantize_released_fp8(sd)
    out = {prefix + k: v for k, v in fp8_sd.items()}
    for module, scale in scales.items():
        out[prefix + module + ".scale_weight"] = scale.float().reshape(())
    out[SCALED_FP8_MARKER] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(path))
    return path, scales


def write_safetensors(path: Path, sd: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# Tensors Kijai's HunyuanVideo wrapper keeps in bf16 when it stores a transformer in fp8 (its loader's
# `params_to_keep`): everything whose name contains one of these. The rest (the Linear weights of
# the blocks, their modulations and the final layer) is float8_e4m3fn.
KIJAI_KEEP = ("norm", "bias", "time_in", "vector_in", "guidance_in", "txt_in", "img_in")


def write_kijai_fp8_scaled(path: Path, sd: dict, prefix: str = "", scale_input: bool = False) -> Path:
    """A single file in the layout of `hunyuan_video_custom_720p_fp8_scaled.safetensors`
    (Kijai/HunyuanVideo_comfy) as far as it can be inferred (see the README): the released key names
    (what Kijai's wrapper loads) with an optional prefix, every weight but KIJAI_KEEP's in
    float8_e4m3fn with a float32 `<module>.scale_weight` (max|w| / 448), optionally a
    `<module>.scale_input` of 1, and the `scaled_fp8` marker of ComfyUI's scaled-fp8 files."""
    from safetensors.torch import save_file

    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2 and not any(s in k for s in KIJAI_KEEP):
            module = k[: -len(".weight")]
            w = v.float()
            scale = w.abs().max() / torch.finfo(torch.float8_e4m3fn).max
            out[prefix + k] = (w / scale).to(torch.float8_e4m3fn)
            out[prefix + module + ".scale_weight"] = scale.reshape(())
            if scale_input:
                out[prefix + module + ".scale_input"] = torch.ones(())
        else:
            out[prefix + k] = v.contiguous()
    out[SCALED_FP8_MARKER] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(path))
    return path
