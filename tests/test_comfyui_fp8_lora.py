"""LoRA on an fp8 "keep" model, on every load path of a real ComfyUI core (COMFYUI_PATH).

A tiny random-weight HunyuanCustom transformer in the released fp8 layout (per-layer scale =
max|w| / 448, so the stored weights fill fp8's range), loaded by the pack with fp8 "keep"; LoRA
files in two real key layouts (diffusion-pipe/PEFT `transformer.*.lora_A/lora_B` and
kohya/musubi `lora_unet_*.lora_down/lora_up/alpha`), read and applied by core
(`comfy.utils.load_torch_file` + `comfy.sd.load_lora_for_models`, what *LoraLoaderModelOnly*
runs). A mild LoRA (0.1x the weight) and a strong one (2x the weight).

The reference is float32: the dequantised fp8 weight + the LoRA's delta. Each layer's effective
weight (what its forward multiplies by, read out by feeding it the identity) must match it within
one fp8 step, and so must the model's change of output, on: a full load (core's
`load_models_gpu`), lowvram partial loads (`ModelPatcher.partially_load` with a small budget, the
call `load_models_gpu` makes on a GPU short of memory; it keeps every layer on the CPU, so it is
forceable here), a full load later offloaded (`partially_unload`), and the patch core's dynamic
VRAM (0.33+, `ModelPatcherDynamic`) attaches. Dynamic VRAM itself needs CUDA and comfy-aimdo
(core reroutes a CPU load device to the plain ModelPatcher), so that test attaches the patch to the
layers exactly as `ModelPatcherDynamic.load` does and runs them through core's cast.
"""

from __future__ import annotations

import pytest
import torch
from local_models import backbone_state_dict, write_released_fp8

from comfyui_harness import import_comfy, requires_comfyui

pytestmark = requires_comfyui

FP8 = torch.float8_e4m3fn
RANK = 4
# (module, LoRA layout): one layer per real key layout
LAYERS = {"double_blocks.0.img_attn.qkv": "peft", "single_blocks.0.linear1": "kohya"}


@pytest.fixture(scope="module")
def pack():
    import_comfy()
    from hunyuancustom.local import comfy_model

    return comfy_model


@pytest.fixture(scope="module")
def fp8_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8lora")
    sd = backbone_state_dict(seed=11, double=1, single=1, dtype=torch.bfloat16)
    return write_released_fp8(d / "mp_rank_00_model_states_fp8.pt", sd)[0]


def _layer(patcher, module):
    net = patcher.model.diffusion_model
    for part in module.split("."):
        net = net[int(part)] if part.isdigit() else getattr(net, part)
    return net


def _dequantised(patcher, module):
    layer = _layer(patcher, module)
    assert layer.weight.dtype == FP8
    return layer.weight.float() * layer.scale_weight.float()


def _write_lora(path, patcher, size: float, seed: int = 5):
    """A LoRA file whose delta on each layer is `size` times the layer's weight (max |delta| =
    size * max |w|). Returns {module: float32 delta} as core computes it (alpha / rank * up @ down)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for module, layout in LAYERS.items():
        w = _dequantised(patcher, module)
        up, down = torch.randn(w.shape[0], RANK, generator=g), torch.randn(RANK, w.shape[1], generator=g)
        up *= size * w.abs().max() / (up @ down).abs().max()
        if layout == "peft":  # diffusion-pipe: transformer.<block>.img_attn_qkv, no alpha (scale 1)
            name = "transformer." + module.replace("_attn.qkv", "_attn_qkv")
            tensors |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
            deltas[module] = up @ down
        else:  # kohya / musubi-tuner: lora_unet_<module with _>, alpha / rank = 0.5
            name = "lora_unet_" + module.replace(".", "_")
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": 2 * up,
                        f"{name}.alpha": torch.tensor(RANK / 2)}
            deltas[module] = (RANK / 2) / RANK * (2 * up) @ down
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return deltas


def _with_lora(patcher, path):
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    assert all(f"diffusion_model.{m}.weight" in patched.patches for m in LAYERS), "LoRA keys not mapped"
    return patched


def _effective_weight(layer):
    """The weight the layer's forward multiplies by, in float32: rows of the identity, and a zero
    row for the bias."""
    n = layer.weight.shape[1]
    with torch.no_grad():
        out = layer(torch.cat([torch.eye(n), torch.zeros(1, n)]))
    return (out[:-1] - out[-1]).T


def _fp8_step(ref, scale):
    """One float8_e4m3fn step at each value of `ref`, stored with the coarser of the layer's scale
    and the smallest scale that holds `ref` unclipped (max |ref| / 448)."""
    s = torch.maximum(scale.float(), ref.abs().max() / torch.finfo(FP8).max)
    binade = torch.floor(torch.log2((ref.abs() / s).clamp(min=2.0 ** -6)))
    return 2.0 ** (binade - 3) * s


def _assert_within_fp8(layer_weight, ref, scale, what):
    err = (layer_weight - ref).abs()
    tol = 1.001 * _fp8_step(ref, scale) + 1e-7
    worst = (err / tol).max().item()
    assert worst <= 1, (f"{what}: off by {worst:.2f} fp8 steps (max error {err.max().item():.3g}, "
                        f"delta max {ref.abs().max().item():.3g})")


def _inputs(seed=3):
    from local_models import TEXT_DIM

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([500.0]),
            torch.randn(1, 7, TEXT_DIM, generator=g), torch.randn(1, 768, generator=g),
            torch.randn(1, 16, 1, 4, 6, generator=g))


def _output(patcher):
    x, t, context, pooled, ref = _inputs()
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context, y=pooled, ref_latent=ref,
                                             transformer_options={}).float()


def _reference_output(pack, fp8_file, refs):
    """Core's forward with the patched layers' weights set to the float32 reference."""
    reference, _ = pack.load_model(fp8_file, fp8="keep")
    for module, ref in refs.items():
        layer = _layer(reference, module)
        layer.scale_weight = None
        layer.weight = torch.nn.Parameter(ref.clone(), requires_grad=False)
    return _output(reference)


def _check(pack, fp8_file, patcher, refs, plain_out, path):
    for module in LAYERS:
        layer = _layer(patcher, module)
        assert layer.weight.dtype == FP8, f"{module} is no longer stored in fp8 ({path})"
        _assert_within_fp8(_effective_weight(layer), refs[module], layer.scale_weight,
                           f"{module}, {path}")
    # the model's output against core's forward with the float32 reference weights: 0 where the
    # patch is applied at run time, the noise of re-quantising two layers in fp8 (about 2% of the
    # output) on a full load; a clipped strong LoRA is off by about 20%
    effect = _output(patcher) - plain_out
    ref_effect = _reference_output(pack, fp8_file, refs) - plain_out
    err = ((effect - ref_effect).norm() / plain_out.norm()).item()
    assert err < 0.04, (f"{path}: LoRA effect {effect.norm().item():.3f}, float32 reference "
                        f"{ref_effect.norm().item():.3f} (error {err:.3f} of the output)")


@pytest.fixture(params=[0.1, 2.0], ids=["mild", "strong"])
def lora(request, pack, fp8_file, tmp_path):
    """(unpatched model, its output, LoRA file, {module: float32 reference weight})."""
    patcher, _ = pack.load_model(fp8_file, fp8="keep")
    deltas = _write_lora(tmp_path / "hc_lora.safetensors", patcher, request.param)
    refs = {m: _dequantised(patcher, m) + d for m, d in deltas.items()}
    return patcher, _output(patcher), tmp_path / "hc_lora.safetensors", refs


def test_full_load(pack, fp8_file, lora):
    import comfy.model_management as mm

    patcher, plain_out, path, refs = lora
    originals = {m: (_layer(patcher, m).weight.clone(), _effective_weight(_layer(patcher, m)))
                 for m in LAYERS}
    patched = _with_lora(patcher, path)
    mm.load_models_gpu([patched])
    try:
        _check(pack, fp8_file, patched, refs, plain_out, "full load")
    finally:
        mm.unload_all_models()
    # core restores its backups: the stored fp8 weights and their scales are the file's again
    for module, (stored, effective) in originals.items():
        layer = _layer(patcher, module)
        assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))
        assert torch.equal(_effective_weight(layer), effective), module
    assert torch.equal(_output(patcher), plain_out)


def test_lowvram_partial_load(pack, fp8_file, lora):
    """Every layer left to lowvram patches (a 1-byte budget)."""
    patcher, plain_out, path, refs = lora
    patched = _with_lora(patcher, path)
    patched.partially_load(torch.device("cpu"), extra_memory=1)
    try:
        assert patched.model.model_lowvram, "core did not load the model partially"
        _check(pack, fp8_file, patched, refs, plain_out, "lowvram partial load")
    finally:
        patched.unpatch_model(torch.device("cpu"))
    assert torch.equal(_output(patcher), plain_out)


def test_full_load_then_offloaded(pack, fp8_file, lora):
    """A fully loaded, patched model that core later offloads (weights restored, patches moved
    into lowvram patches)."""
    import comfy.model_management as mm

    patcher, plain_out, path, refs = lora
    patched = _with_lora(patcher, path)
    mm.load_models_gpu([patched])
    try:
        patched.partially_unload(torch.device("cpu"), memory_to_free=10 * patched.model_size())
        assert patched.model.model_lowvram
        _check(pack, fp8_file, patched, refs, plain_out, "offloaded after a full load")
    finally:
        mm.unload_all_models()


def test_dynamic_vram_patch(pack, fp8_file, lora):
    import comfy.model_patcher

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI has no dynamic VRAM (ModelPatcherDynamic came after 0.3.64)")
    patcher, plain_out, path, refs = lora
    # on a CPU load device core itself falls back to the plain ModelPatcher
    dyn = comfy.model_patcher.ModelPatcherDynamic(patcher.model, torch.device("cpu"), torch.device("cpu"))
    assert type(dyn) is comfy.model_patcher.ModelPatcher
    patched = _with_lora(patcher, path)
    layers = [_layer(patched, m) for m in LAYERS]
    try:
        # what ModelPatcherDynamic.load does to a streamed layer with a weight patch: the patch
        # as `weight_lowvram_function`, a VRAM allocation `_v`
        for module, layer in zip(LAYERS, layers, strict=True):
            layer.weight_lowvram_function = comfy.model_patcher.LowVramPatch(
                f"diffusion_model.{module}.weight", patched.patches)
            layer._v = ("vbar allocation",)
            layer.seed_key = module
        _check(pack, fp8_file, patched, refs, plain_out, "dynamic VRAM")
        # core's GPU cast, prefetch and write-back read the patch here: they must not apply it to
        # the fp8 weight as stored (nor write that back into the streamed fp8 copy)
        assert all(getattr(layer, "weight_lowvram_function", None) is None for layer in layers)
    finally:
        for layer in layers:
            layer.weight_lowvram_function = None
            layer.__dict__.pop("_v", None)
    assert torch.equal(_output(patcher), plain_out)
