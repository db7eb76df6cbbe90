"""Checkpoint -> ComfyUI core MODEL (a ModelPatcher around core's HunyuanVideo), every key checked.

The audio / editing modules' tensors are attached to the patcher under EXTRAS_ATTACHMENT
(`patcher.get_attachment("hunyuancustom_extras")` -> {"audio": {...}, "editing": {...}}), so the
modes' nodes can build their modules from the same file. `comfy` is imported lazily.
"""

from __future__ import annotations

import os

import torch

from .checkpoint import SCALED_FP8_MARKER, Checkpoint, CheckpointError, read_checkpoint

EXTRAS_ATTACHMENT = "hunyuancustom_extras"
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn,
                 "fp32": torch.float32}


def check_all_mapped(model_config, diffusion_model: torch.nn.Module, transformer: dict) -> None:
    """Every checkpoint tensor lands on a core parameter and every core parameter gets one."""
    given = {k for k in transformer if k != SCALED_FP8_MARKER}
    mapped = set(model_config.process_unet_state_dict(dict.fromkeys(given)))
    params = set(diffusion_model.state_dict())
    # scaled-fp8 ops carry scale_weight/scale_input buffers that plain files do not have
    optional = {k for k in params if k.endswith((".scale_weight", ".scale_input"))}
    missing = sorted(params - mapped - optional)
    unexpected = sorted(mapped - params)
    if missing or unexpected:
        raise CheckpointError(f"ComfyUI's HunyuanVideo model does not take this checkpoint: "
                              f"missing {missing[:12]}, unexpected {unexpected[:12]}")


_OPS_CACHE: dict = {}


def scaled_fp8_operations():
    """Core's manual-cast ops whose Linear takes the weight in its stored dtype (fp8 or not) with an
    optional per-layer `scale_weight`, and its bias in its own dtype: the released fp8 maths
    (weight.to(compute dtype) * scale), with weights staying 1 byte each in memory. Core's own
    scaled-fp8 ops would also store every other Linear and every bias in fp8, unscaled."""
    if "ops" in _OPS_CACHE:
        return _OPS_CACHE["ops"]
    import comfy.ops

    class ReleasedFp8Ops(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def reset_parameters(self):
                self.scale_weight = None
                return None

            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs):
                scale = state_dict.pop(prefix + "scale_weight", None)
                state_dict.pop(prefix + "scale_input", None)  # only used by fp8 matmul; 1 in practice
                for name in ("weight", "bias"):
                    t = state_dict.pop(prefix + name, None)
                    if t is not None:
                        setattr(self, name, torch.nn.Parameter(t, requires_grad=False))
                    elif getattr(self, name, None) is not None:
                        missing_keys.append(prefix + name)
                if scale is not None:
                    self.scale_weight = torch.nn.Parameter(scale.float().reshape(()), requires_grad=False)

            # LoRA and other weight patches: core converts to real values, patches, converts back
            def convert_weight(self, weight, inplace=False, **kwargs):
                if self.scale_weight is None:
                    return weight
                scale = self.scale_weight.to(device=weight.device, dtype=weight.dtype)
                if inplace:
                    weight *= scale
                    return weight
                return weight * scale

            def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
                import comfy.float

                if self.scale_weight is not None:
                    weight = weight / self.scale_weight.to(device=weight.device, dtype=weight.dtype)
                weight = comfy.float.stochastic_rounding(weight, self.weight.dtype, seed=seed)
                if return_weight:
                    return weight
                if inplace_update:
                    self.weight.data.copy_(weight)
                else:
                    self.weight = torch.nn.Parameter(weight, requires_grad=False)

            def forward_comfy_cast_weights(self, input):
                weight, bias = comfy.ops.cast_bias_weight(self, input)
                if self.scale_weight is not None:
                    weight = weight * self.scale_weight.to(device=weight.device, dtype=weight.dtype)
                return torch.nn.functional.linear(input, weight, bias)

    _OPS_CACHE["ops"] = ReleasedFp8Ops
    return ReleasedFp8Ops


def model_from_checkpoint(ckpt: Checkpoint, weight_dtype: str = "default"):
    import comfy.sd

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    options = {}
    sd = dict(ckpt.transformer)
    if ckpt.is_fp8:
        # fp8 Linear weights keep their dtype and scales; everything else in bf16 unless asked
        sd.pop(SCALED_FP8_MARKER, None)
        options["custom_operations"] = scaled_fp8_operations()
        options["dtype"] = torch.bfloat16
    if WEIGHT_DTYPES[weight_dtype] is not None:
        options["dtype"] = WEIGHT_DTYPES[weight_dtype]
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    if patcher is None:
        raise CheckpointError("ComfyUI did not recognise the checkpoint as a HunyuanVideo transformer")
    check_all_mapped(patcher.model.model_config, patcher.model.diffusion_model, ckpt.transformer)
    patcher.set_attachments(EXTRAS_ATTACHMENT, ckpt.extras)
    return patcher


def load_model(path: str | os.PathLike, fp8: str = "keep", weight_dtype: str = "default"):
    """(ModelPatcher, Checkpoint) for a file in any layout `checkpoint.read_checkpoint` reads."""
    ckpt = read_checkpoint(path, fp8=fp8)
    return model_from_checkpoint(ckpt, weight_dtype), ckpt
