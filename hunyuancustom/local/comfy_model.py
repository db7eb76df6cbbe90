"""Checkpoint -> ComfyUI core MODEL (a ModelPatcher around core's HunyuanVideo), every key checked.

The audio / editing modules' tensors are attached to the patcher under EXTRAS_ATTACHMENT
(`patcher.get_attachment("hunyuancustom_extras")` -> {"audio": {...}, "editing": {...}}), so the
modes' nodes can build their modules from the same file. `comfy` is imported lazily.
"""

from __future__ import annotations

import inspect
import logging
import math
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
_LOG = logging.getLogger(__name__)


def _cast_functions():
    """(cast, uncast) for a layer's weight and bias. Cores with `uncast_bias_weight` (0.33+) want
    `cast_bias_weight(..., offloadable=True)` and the uncast after the last use (it releases dynamic
    VRAM's pins and offload streams); older cores have only the 2-tuple call."""
    import comfy.ops

    uncast = getattr(comfy.ops, "uncast_bias_weight", None)
    if uncast is not None and "offloadable" in inspect.signature(comfy.ops.cast_bias_weight).parameters:
        return (lambda layer, input: comfy.ops.cast_bias_weight(layer, input, offloadable=True)), uncast
    return (lambda layer, input: (*comfy.ops.cast_bias_weight(layer, input), None)), None


def _patch_in_real_units(patch, weight: torch.Tensor) -> torch.Tensor:
    """Core's weight patch (`comfy.model_patcher.LowVramPatch`) applied to a weight in real units.
    Core's own call would add it to the fp8 weight as stored (times its scale): 0.33+ ignores the
    layer's convert/set functions there, and its dynamic VRAM writes the result back in fp8."""
    import comfy.lora

    patches = getattr(patch, "prepared_patches", None)  # 0.33+: already moved to the device
    if patches is None:
        patches = patch.patches[patch.key]
    return comfy.lora.calculate_weight(patches, weight, patch.key, intermediate_dtype=torch.float32)


def _stochastic_round(values: torch.Tensor, dtype, seed) -> torch.Tensor:
    """Core's stochastic rounding to `dtype`, each value to one of its two neighbours. Where core's
    rounding lands further away (comfy_kitchen's, 0.33+, does so for about 5e-6 of the values just
    below a power of two, two fp8 steps off) the nearest value is taken."""
    import comfy.float

    out = comfy.float.stochastic_rounding(values, dtype, seed=seed)
    if not dtype.is_floating_point or torch.finfo(dtype).bits != 8:
        return out
    info = torch.finfo(dtype)
    values = values.float()
    step = torch.exp2(torch.floor(torch.log2(values.abs().clamp(min=info.tiny)))) * info.eps
    far = (out.float() - values).abs() > step
    if far.any():  # (no indexed writes in fp8: through its bytes)
        nearest = values.clamp(info.min, info.max).to(dtype)
        out = torch.where(far, nearest.view(torch.uint8), out.view(torch.uint8)).view(dtype)
    return out


def scaled_fp8_operations():
    """Core's manual-cast ops whose Linear takes the weight in its stored dtype (fp8 or not) with an
    optional per-layer `scale_weight`, and its bias in its own dtype: the released fp8 maths
    (weight.to(compute dtype) * scale), with weights staying 1 byte each in memory. Core's own
    scaled-fp8 ops would also store every other Linear and every bias in fp8, unscaled.

    Weight patches (LoRA) on a scaled layer are exact within fp8 precision however large, on every
    load path core has, and never cost more than 1 byte per weight at rest:
    - full load: core patches the stored weight through `convert_weight` (x scale, real units) and
      `set_weight`, which re-quantises the result with its own scale (`patched_scale`) when the
      layer's scale would clip it at +-448 (a LoRA about as large as the weight does);
    - lowvram partial loads and dynamic VRAM: the stored fp8 weight stays as loaded and `forward`
      applies core's patch at run time, in float32 on the dequantised weight, for the one layer
      being computed (core's own call would patch the scaled fp8 value, or write it back in fp8).
    Why two ways: on a full load core patches once and every step runs at full speed, so the patch
    is stored; on the other paths core recomputes the patch at every cast anyway, and only a
    run-time patch in real units is right there (core does not pass those through
    convert/set_weight), with no second copy of the weight.
    """
    if "ops" in _OPS_CACHE:
        return _OPS_CACHE["ops"]
    import comfy.float
    import comfy.model_patcher
    import comfy.ops

    cast, uncast = _cast_functions()

    class ReleasedFp8Ops(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            # the scale the stored weight was re-quantised with after a weight patch (full load);
            # None: the layer's own scale_weight
            patched_scale = None

            def reset_parameters(self):
                self.scale_weight = None
                return None

            def __setattr__(self, name, value):
                # A weight set by anyone but set_weight (core restoring its backup after a LoRA,
                # loading, offloading) is in the layer's own scale.
                if name == "weight":
                    self.__dict__.pop("patched_scale", None)
                super().__setattr__(name, value)

            # Core's dynamic VRAM (0.33+) attaches a weight patch here and applies it to the
            # stored fp8 weight. A scaled layer keeps it to itself and applies it in forward.
            @property
            def weight_lowvram_function(self):
                return self.__dict__.get("_dynamic_patch") if self.scale_weight is None else None

            @weight_lowvram_function.setter
            def weight_lowvram_function(self, patch):
                self.__dict__["_dynamic_patch"] = patch

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

            def _scale_for(self, weight):
                if self.patched_scale is not None:
                    return self.patched_scale
                return self.scale_weight.to(device=weight.device, dtype=weight.dtype)

            # LoRA and other weight patches on a full load: core converts to real values, patches,
            # converts back
            def convert_weight(self, weight, inplace=False, **kwargs):
                if self.scale_weight is None:
                    return weight
                if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                    weight, inplace = weight.float(), True  # no arithmetic in fp8
                scale = self._scale_for(weight)
                if inplace:
                    weight *= scale
                    return weight
                return weight * scale

            def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
                stored = self.weight.dtype
                scale = None
                if self.scale_weight is not None:
                    scale = self.patched_scale or float(self.scale_weight)
                    needed = float(weight.abs().amax()) / torch.finfo(stored).max
                    if needed > scale and math.isfinite(needed):
                        if inplace_update or return_weight:
                            # the caller keeps the layer's scale for these values: clipped
                            _LOG.warning("HunyuanCustom fp8 'keep': a weight patch %s exceeds this "
                                         "layer's fp8 range and is clipped; load the model with "
                                         "fp8 'dequantize' for it", "applied in place" if
                                         inplace_update else "read out")
                        else:
                            scale = needed
                    weight = _stochastic_round(weight / scale, stored, seed)
                else:
                    weight = comfy.float.stochastic_rounding(weight, stored, seed=seed)
                if return_weight:
                    return weight
                if inplace_update:
                    self.weight.data.copy_(weight)
                    return
                self.weight = torch.nn.Parameter(weight, requires_grad=False)
                if scale is not None and scale != float(self.scale_weight):
                    self.patched_scale = scale

            def forward_comfy_cast_weights(self, input):
                if self.scale_weight is None:
                    return super().forward_comfy_cast_weights(input)
                # core would run the weight functions (lowvram patches, wrappers) on the weight as
                # stored; here they run on the weight in real units
                functions = self.weight_function
                if functions:
                    self.weight_function = []
                try:
                    weight, bias, handle = cast(self, input)
                finally:
                    if functions:
                        self.weight_function = functions
                try:
                    return torch.nn.functional.linear(input, self._real_weight(weight, functions), bias)
                finally:
                    if uncast is not None:
                        uncast(self, weight, bias, handle)

            def _real_weight(self, weight, functions):
                # dynamic VRAM: only a layer core streams (`_v`) has its stored weight unpatched
                dynamic = self.__dict__.get("_dynamic_patch") if hasattr(self, "_v") else None
                if dynamic is None and not functions:
                    return weight * self._scale_for(weight)
                real = weight.float()
                real = real * self._scale_for(real)
                if dynamic is not None:
                    real = _patch_in_real_units(dynamic, real)
                for f in functions:
                    if isinstance(f, comfy.model_patcher.LowVramPatch):
                        real = _patch_in_real_units(f, real)
                    else:
                        real = f(real)
                return real.to(weight.dtype)

    _OPS_CACHE["ops"] = ReleasedFp8Ops
    return ReleasedFp8Ops


def model_from_checkpoint(ckpt: Checkpoint, weight_dtype: str = "default", disable_dynamic: bool = False):
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
    kwargs = {}
    if disable_dynamic:  # 0.33+ asks a reload factory for a plain (not dynamic VRAM) patcher
        if "disable_dynamic" not in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters:
            raise RuntimeError("this ComfyUI's load_diffusion_model_state_dict takes no disable_dynamic, "
                               "but its model patcher asked for it: update ComfyUI or the pack")
        kwargs["disable_dynamic"] = True
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options, **kwargs)
    if patcher is None:
        raise CheckpointError("ComfyUI did not recognise the checkpoint as a HunyuanVideo transformer")
    check_all_mapped(patcher.model.model_config, patcher.model.diffusion_model, ckpt.transformer)
    patcher.set_attachments(EXTRAS_ATTACHMENT, ckpt.extras)
    return patcher


def load_model(path: str | os.PathLike, fp8: str = "keep", weight_dtype: str = "default"):
    """(ModelPatcher, Checkpoint) for a file in any layout `checkpoint.read_checkpoint` reads.

    The patcher carries core's reload factory (`cached_patcher_init`, 0.33+): core's multi-GPU
    work units and Select Model Device build a second device's model with it. Older cores never
    read the attribute."""
    ckpt = read_checkpoint(path, fp8=fp8)
    patcher = model_from_checkpoint(ckpt, weight_dtype)
    patcher.cached_patcher_init = (reload_model, (os.fspath(path), fp8, weight_dtype))
    return patcher, ckpt


def reload_model(path: str, fp8: str = "keep", weight_dtype: str = "default", disable_dynamic: bool = False):
    """A fresh ModelPatcher of the same load (core's `cached_patcher_init` factory: a module-level
    function, called with `disable_dynamic=True` where core wants a plain patcher)."""
    ckpt = read_checkpoint(path, fp8=fp8)
    patcher = model_from_checkpoint(ckpt, weight_dtype, disable_dynamic=disable_dynamic)
    patcher.cached_patcher_init = (reload_model, (path, fp8, weight_dtype))
    return patcher
