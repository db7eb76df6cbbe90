"""Read a HunyuanCustom transformer checkpoint in any released layout; check every key.

API (also used by the audio / editing modes):

    ckpt = read_checkpoint(path, fp8="keep")        # -> Checkpoint
    ckpt.transformer   # {released key name: tensor} for the HunyuanVideo backbone only (852 tensors
                       #  for the full model); loadable by comfy.sd.load_diffusion_model_state_dict
    ckpt.extras        # {"audio": {...}, "editing": {...}}: tensors of the extra modules, set aside
                       #  with their full released names ("audio_proj.*", "audio_models.N.*",
                       #  "bg_in.proj.*", "bg_proj.*"), already dequantised / in the file's dtype
    ckpt.layout        # "pt", "pt-fp8", "safetensors", "safetensors-fp8-scaled", "safetensors-fp8"
    ckpt.depths        # (double blocks, single blocks, token-refiner blocks)

    split_extras(sd) -> (backbone, extras)   # the same split on an in-memory state dict
    check_backbone_keys(sd)                  # raises CheckpointError naming missing/unexpected keys

Layouts read:
- the released `mp_rank_00_model_states.pt` (pickled, weights under "module"), loaded with
  `torch.load(weights_only=True, mmap=True)`;
- the released fp8 `.pt` (Linear weights of double/single blocks stored as float8_e4m3fn) with its
  scales file (the name with `.pt` replaced by `_map.pt`, `{"module": {module name: scale}}`);
  real weight = weight.to(dtype) * scale, as the released code computes it;
- single-file fp8-scaled safetensors (ComfyUI's layout: a `scaled_fp8` marker tensor and a
  `<module>.scale_weight` per fp8 Linear, optional `.scale_input`, which is dropped: it only
  scales activations for an fp8 matmul), e.g. `hunyuan_video_custom_720p_fp8_scaled.safetensors`,
  whose fp8 Linears include the final layer's;
- plain safetensors (bf16/fp16/fp32).
Keys may carry a `module.`, `model.diffusion_model.` or `diffusion_model.` prefix.

fp8="keep" hands fp8 weights to ComfyUI as scaled fp8 (`.scale_weight` + `scaled_fp8`), so they
stay 1 byte per weight in memory; fp8="dequantize" returns bf16 weights (the reference maths).
Unknown keys are an error, never dropped silently. Pure torch: no ComfyUI import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import replacing
from ..errors import HunyuanCustomError

AUDIO_PREFIXES = ("audio_proj.", "audio_models.")
EDITING_PREFIXES = ("bg_in.", "bg_proj.")
EXTRA_PREFIXES = {"audio": AUDIO_PREFIXES, "editing": EDITING_PREFIXES}
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.")
SCALED_FP8_MARKER = "scaled_fp8"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Released blocks of HYVideo-T/2; other depths are accepted (tiny test models) when consistent.
RELEASED_DEPTHS = (20, 40, 2)


class CheckpointError(HunyuanCustomError):
    """The file is not a HunyuanCustom transformer checkpoint in a layout this pack reads."""


@dataclass
class Checkpoint:
    transformer: dict[str, torch.Tensor]
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    layout: str = "safetensors"
    depths: tuple[int, int, int] = RELEASED_DEPTHS

    @property
    def is_fp8(self) -> bool:
        return any(v.dtype in FP8_DTYPES for v in self.transformer.values())


# ---- key layout -------------------------------------------------------------------------------

_DOUBLE_PARTS = [f"{s}_{p}" for s in ("img", "txt") for p in (
    "mod.linear.weight", "mod.linear.bias", "attn_qkv.weight", "attn_qkv.bias",
    "attn_q_norm.weight", "attn_k_norm.weight", "attn_proj.weight", "attn_proj.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
_SINGLE_PARTS = ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "q_norm.weight",
                 "k_norm.weight", "modulation.linear.weight", "modulation.linear.bias"]
_REFINER_PARTS = ["norm1.weight", "norm1.bias", "self_attn_qkv.weight", "self_attn_qkv.bias",
                  "self_attn_proj.weight", "self_attn_proj.bias", "norm2.weight", "norm2.bias",
                  "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                  "adaLN_modulation.1.weight", "adaLN_modulation.1.bias"]
_TOP = ["img_in.proj.weight", "img_in.proj.bias",
        "txt_in.input_embedder.weight", "txt_in.input_embedder.bias",
        "txt_in.t_embedder.mlp.0.weight", "txt_in.t_embedder.mlp.0.bias",
        "txt_in.t_embedder.mlp.2.weight", "txt_in.t_embedder.mlp.2.bias",
        "txt_in.c_embedder.linear_1.weight", "txt_in.c_embedder.linear_1.bias",
        "txt_in.c_embedder.linear_2.weight", "txt_in.c_embedder.linear_2.bias",
        "time_in.mlp.0.weight", "time_in.mlp.0.bias", "time_in.mlp.2.weight", "time_in.mlp.2.bias",
        "vector_in.in_layer.weight", "vector_in.in_layer.bias",
        "vector_in.out_layer.weight", "vector_in.out_layer.bias",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]
_REFINER = "txt_in.individual_token_refiner.blocks."


def backbone_keys(double: int = 20, single: int = 40, refiner: int = 2) -> list[str]:
    """Every tensor name of the released ref2v transformer (852 for the released depths)."""
    keys = list(_TOP)
    keys += [f"{_REFINER}{i}.{p}" for i in range(refiner) for p in _REFINER_PARTS]
    keys += [f"double_blocks.{i}.{p}" for i in range(double) for p in _DOUBLE_PARTS]
    keys += [f"single_blocks.{i}.{p}" for i in range(single) for p in _SINGLE_PARTS]
    return keys


def fp8_linear_modules(keys) -> list[str]:
    """Modules the released fp8 file stores as float8 (the Linears of double and single blocks)."""
    return sorted({k[: -len(".weight")] for k in keys
                   if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight")
                   and "norm" not in k})


def _count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def depths_of(keys) -> tuple[int, int, int]:
    return _count(keys, "double_blocks."), _count(keys, "single_blocks."), _count(keys, _REFINER)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def check_backbone_keys(sd) -> tuple[int, int, int]:
    """Raise CheckpointError unless `sd` holds exactly the backbone's tensors (scale entries of a
    scaled-fp8 file allowed). Returns the block counts."""
    keys = set(sd)
    depths = depths_of(keys)
    if depths[0] == 0 or depths[1] == 0:
        raise CheckpointError("not a HunyuanVideo/HunyuanCustom transformer: no double_blocks / "
                              f"single_blocks keys (found e.g. {_listing(sorted(keys), 5)})")
    expected = set(backbone_keys(*depths))
    aux = {k for k in keys if k == SCALED_FP8_MARKER or k.endswith((".scale_weight", ".scale_input"))}
    missing = sorted(expected - keys)
    unexpected = sorted(keys - expected - aux)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if any(k.startswith("guidance_in.") for k in unexpected):
            parts.append("guidance_in.* belongs to HunyuanVideo text-to-video (distilled guidance), "
                         "not HunyuanCustom: load a hunyuancustom_*_720P checkpoint")
        raise CheckpointError("checkpoint keys do not match the HunyuanCustom transformer "
                              f"({depths[0]} double / {depths[1]} single blocks): " + "; ".join(parts))
    return depths


# ---- state-dict transforms --------------------------------------------------------------------

def strip_prefix(sd: dict) -> dict:
    """Unwrap the weights dict ({"module": {...}}, DeepSpeed's layout, possibly next to other
    entries; or any single wrapping key) and drop a common key prefix."""
    if isinstance(sd.get("module"), dict):
        sd = sd["module"]
    elif len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))
    for prefix in KEY_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd if k != SCALED_FP8_MARKER):
            return {k[len(prefix):] if k != SCALED_FP8_MARKER else k: v for k, v in sd.items()}
    return dict(sd)


def split_extras(sd: dict) -> tuple[dict, dict[str, dict]]:
    """Set aside the audio / editing modules' tensors (kept under their full names)."""
    backbone: dict = {}
    extras: dict[str, dict] = {}
    for k, v in sd.items():
        kind = next((name for name, prefixes in EXTRA_PREFIXES.items() if k.startswith(prefixes)), None)
        if kind is None:
            backbone[k] = v
        else:
            extras.setdefault(kind, {})[k] = v
    return backbone, extras


def dequantize_fp8(sd: dict, scales: dict, dtype=torch.bfloat16) -> dict:
    """Released fp8 layout -> real weights: weight.to(dtype) * scale.to(dtype) per scaled Linear."""
    out = dict(sd)
    for module, scale in scales.items():
        key = module + ".weight"
        if key not in out:
            raise CheckpointError(f"fp8 scales name module {module!r}, which has no weight in the checkpoint")
        out[key] = out[key].to(dtype) * torch.as_tensor(scale).to(dtype)
    return out


def fp8_to_scaled(sd: dict, scales: dict) -> dict:
    """Released fp8 layout -> ComfyUI's scaled-fp8 layout (weights stay fp8)."""
    out = dict(sd)
    for module, scale in scales.items():
        if module + ".weight" not in out:
            raise CheckpointError(f"fp8 scales name module {module!r}, which has no weight in the checkpoint")
        out[module + ".scale_weight"] = torch.as_tensor(scale).detach().to(torch.float32).reshape(())
    out[SCALED_FP8_MARKER] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def scaled_to_dequantized(sd: dict, dtype=torch.bfloat16) -> dict:
    """ComfyUI scaled-fp8 layout -> real weights (drops the scale entries)."""
    out = {}
    for k, v in sd.items():
        if k == SCALED_FP8_MARKER or k.endswith((".scale_weight", ".scale_input")):
            continue
        scale = sd.get(k[: -len(".weight")] + ".scale_weight") if k.endswith(".weight") else None
        out[k] = v.to(dtype) * scale.to(dtype) if scale is not None else v
    return out


# ---- files ------------------------------------------------------------------------------------

def fp8_map_path(path: str | os.PathLike) -> Path:
    """The released scales file beside an fp8 checkpoint: `x_fp8.pt` -> `x_fp8_map.pt`."""
    p = Path(path)
    return p.with_name(p.stem + "_map.pt")


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # old (non-zip) serialisation cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def load_raw(path: str | os.PathLike) -> dict:
    """A file's tensors as stored (prefixes stripped); .pt via torch.load(weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.suffix in (".safetensors", ".sft"):
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p))
        except Exception as e:  # noqa: BLE001 - safetensors has its own error types for damaged files
            raise CheckpointError(f"{p.name} is not a readable safetensors file ({type(e).__name__}: "
                                  f"{str(e)[:200]}); download or convert it again") from None
        return strip_prefix(sd)
    if p.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            sd = _torch_load(p)
        except Exception as e:  # noqa: BLE001 - the reason goes into the message
            raise CheckpointError(f"{p.name} cannot be read with torch.load(weights_only=True): {e}") from e
        if not isinstance(sd, dict):
            raise CheckpointError(f"{p.name} holds a {type(sd).__name__}, not a state dict")
        return strip_prefix(sd)
    raise CheckpointError(f"{p.name}: unsupported file type {p.suffix!r}; use .pt or .safetensors")


def _load_scales(path: Path) -> dict:
    map_path = fp8_map_path(path)
    if not map_path.is_file():
        raise CheckpointError(f"{path.name} stores fp8 weights but its scales file {map_path.name} is "
                              "missing; put the released *_map.pt next to it")
    try:
        scales = torch.load(map_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the reason goes into the message
        raise CheckpointError(f"{map_path.name} cannot be read with torch.load(weights_only=True): "
                              f"{e}") from e
    if not isinstance(scales, dict):
        raise CheckpointError(f"{map_path.name} holds a {type(scales).__name__}, not a dict of scales")
    scales = strip_prefix(scales)
    odd = sorted(k for k, v in scales.items() if torch.as_tensor(v).numel() != 1)
    if odd:  # the released maps hold one scale per Linear (max|w| / 448)
        raise CheckpointError(f"{map_path.name}: expected one scale per layer, got more for {_listing(odd)}")
    return scales


def read_checkpoint(path: str | os.PathLike, fp8: str = "keep", dtype=torch.bfloat16) -> Checkpoint:
    """Read, normalise and check a checkpoint; see the module docstring."""
    if fp8 not in ("keep", "dequantize"):
        raise ValueError(f"fp8 must be 'keep' or 'dequantize', got {fp8!r}")
    p = Path(path)
    sd = load_raw(p)
    has_fp8 = any(getattr(v, "dtype", None) in FP8_DTYPES for v in sd.values())
    if p.suffix == ".pt" or p.suffix in (".pth", ".ckpt", ".bin"):
        layout = "pt"
        if has_fp8:
            layout = "pt-fp8"
            scales = _load_scales(p)
            not_scaled = sorted(k for k, v in sd.items() if v.dtype in FP8_DTYPES
                                and k[: -len(".weight")] not in scales)
            if not_scaled:
                raise CheckpointError(f"fp8 tensors without a scale in {fp8_map_path(p).name}: "
                                      f"{_listing(not_scaled)}")
            sd = dequantize_fp8(sd, scales, dtype) if fp8 == "dequantize" else fp8_to_scaled(sd, scales)
    else:
        layout = "safetensors"
        if SCALED_FP8_MARKER in sd:
            layout = "safetensors-fp8-scaled"
            if fp8 == "dequantize":
                sd = scaled_to_dequantized(sd, dtype)
            else:
                # `scale_input` (single files made for fp8 matmul) scales activations only when
                # the matmul itself runs in fp8; the weights' values depend on scale_weight alone,
                # and core's model built for the pack's fp8 ops has no place for it.
                sd = {k: v for k, v in sd.items() if not k.endswith(".scale_input")}
        elif has_fp8:
            layout = "safetensors-fp8"
    backbone, extras = split_extras(sd)
    if fp8 == "keep" and layout == "safetensors-fp8-scaled":
        # the extras never run through ComfyUI's scaled ops: hand them over as real weights
        extras = {k: scaled_to_dequantized(v, dtype) for k, v in extras.items()}
    depths = check_backbone_keys(backbone)
    return Checkpoint(backbone, extras, layout, depths)


def _atomic_save(tensors: dict, dst: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with replacing(dst, suffix=".safetensors.partial") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike, fp8: str = "keep") -> Checkpoint:
    """Write a checked checkpoint (backbone + extras) as one safetensors file, atomically, so later
    loads are memory-mapped. fp8 files keep fp8 with ComfyUI's scale layout unless fp8='dequantize'."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"output must end in .safetensors, got {dst.name}")
    ckpt = read_checkpoint(src, fp8=fp8)
    tensors = dict(ckpt.transformer)
    for part in ckpt.extras.values():
        tensors.update(part)
    _atomic_save(tensors, dst, {"source": Path(src).name, "layout": ckpt.layout})
    return ckpt
