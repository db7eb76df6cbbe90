"""`hunyuan_video_custom_720p_fp8_scaled.safetensors` in its inferred layout (tiny random weights,
tests/local_models.write_kijai_fp8_scaled) inside a real ComfyUI (COMFYUI_PATH), in-process: through
the pack's Load Model (Local) it computes what the released .pt computes, within the tolerance the
released fp8 .pt is held to (tests/test_comfyui_local.py); through core's own Load Diffusion Model
too, and Released Recipe (Local) takes that MODEL."""

from __future__ import annotations

import pytest
import torch
from local_models import TEXT_DIM, backbone_state_dict, write_kijai_fp8_scaled, write_released_pt

from comfyui_harness import import_comfy, import_pack, requires_comfyui

pytestmark = requires_comfyui

SCALE = 0.476986  # HunyuanVideo latent scaling factor


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import_comfy()
    d = tmp_path_factory.mktemp("single-file")
    sd = backbone_state_dict(seed=11, double=2, single=2, dtype=torch.bfloat16)
    return {"pt": write_released_pt(d / "mp_rank_00_model_states.pt", sd),
            "single": write_kijai_fp8_scaled(d / "hunyuan_video_custom_720p_fp8_scaled.safetensors", sd,
                                             scale_input=True)}


def _velocity(patcher, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    context, pooled = torch.randn(1, 7, TEXT_DIM, generator=g), torch.randn(1, 768, generator=g)
    ref = torch.randn(1, 16, 1, 4, 6, generator=g)
    with torch.no_grad():
        return patcher.model.diffusion_model(x, torch.tensor([700.0]), context, y=pooled,
                                             ref_latent=ref * SCALE, transformer_options={}).float()


def test_load_model_local_reads_it_like_the_released_file(files):
    from hunyuancustom.local import comfy_model

    reference = _velocity(comfy_model.load_model(files["pt"])[0])
    kept, ckpt = comfy_model.load_model(files["single"], fp8="keep")
    deq, _ = comfy_model.load_model(files["single"], fp8="dequantize")
    assert ckpt.layout == "safetensors-fp8-scaled"
    net = kept.model.diffusion_model
    assert net.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert net.final_layer.linear.weight.dtype == torch.float8_e4m3fn
    a, b = _velocity(kept), _velocity(deq)
    # the tolerances the released fp8 .pt is held to
    assert (a - b).norm() / b.norm() < 0.02
    assert (b - reference).norm() / reference.norm() < 0.1


def test_core_load_diffusion_model_reads_it_and_the_recipe_takes_it(files):
    import importlib

    import comfy.sd

    nodes_local = importlib.import_module(import_pack().__name__ + ".nodes.local")
    core = comfy.sd.load_diffusion_model(str(files["single"]))
    assert type(core.model.diffusion_model).__name__ == "HunyuanVideo"
    from hunyuancustom.local import comfy_model

    reference = _velocity(comfy_model.load_model(files["pt"])[0])
    out = _velocity(core)
    assert (out - reference).norm() / reference.norm() < 0.1  # core applies the scales itself
    patched = nodes_local.ReleasedRecipe.execute(core).result[0]
    assert patched is not core and patched.model is core.model


def test_a_converted_checkpoint_loads_through_cores_loader_as_raylight_loads_it(tmp_path):
    """Raylight's RayUNETLoader builds each worker's model with core's `load_diffusion_model`, so the
    README and the Raylight example tell users to convert the released fp8 .pt first: the converted
    file (an editing checkpoint here, its mode modules kept) must load there and compute what the
    pack's own loader computes from the .pt, and the (Ray) mode nodes read the modules back from it."""
    import_comfy()
    import comfy.sd
    from local_models import write_released_fp8
    from modes_models import editing_state_dict

    from hunyuancustom.local import comfy_model
    from hunyuancustom.local.checkpoint import convert_to_safetensors
    from hunyuancustom.modes.checkpoint import load_mode_modules

    sd = backbone_state_dict(seed=12, double=2, single=2, dtype=torch.bfloat16)
    sd.update(editing_state_dict(width=128))
    pt, _ = write_released_fp8(tmp_path / "mp_rank_00_model_states_fp8.pt", sd)
    out = tmp_path / "hunyuancustom_editing_720P_fp8.safetensors"
    convert_to_safetensors(pt, out)

    reference = _velocity(comfy_model.load_model(pt, fp8="dequantize")[0])
    core = comfy.sd.load_diffusion_model(str(out))
    assert type(core.model.diffusion_model).__name__ == "HunyuanVideo"
    weight = core.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    # kept in fp8: a float8 tensor (0.3.64) or core's QuantizedTensor over fp8 storage (0.33.0)
    assert weight.dtype == torch.float8_e4m3fn or type(weight).__name__ == "QuantizedTensor"
    got = _velocity(core)
    # core applies the fp8 scales itself (0.33.0: 1.9%, 0.3.64 computes in its own dtype: 4.4%; the
    # same weights without their scales are about 86% off)
    assert (got - reference).norm() / reference.norm() < 0.1
    modules = load_mode_modules(out)
    assert modules.editing is not None and modules.audio is None
