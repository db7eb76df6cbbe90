"""The single file ComfyUI HunyuanCustom users download, `hunyuan_video_custom_720p_fp8_scaled.safetensors`
(Kijai/HunyuanVideo_comfy), in its inferred layout (tests/local_models.write_kijai_fp8_scaled; what is
published and what is inferred is in the README), read by the pack's loader on tiny random weights.
The same file inside a real ComfyUI: tests/test_comfyui_single_file.py."""

from __future__ import annotations

import pytest
import torch
from local_models import KIJAI_KEEP, backbone_state_dict, write_kijai_fp8_scaled

from hunyuancustom.local.checkpoint import SCALED_FP8_MARKER, read_checkpoint


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("scale_input", [False, True])
def test_the_single_fp8_scaled_file_reads_with_its_scales(tmp_path, prefix, scale_input):
    sd = backbone_state_dict(double=2, single=2)
    path = write_kijai_fp8_scaled(tmp_path / "hunyuan_video_custom_720p_fp8_scaled.safetensors", sd,
                                  prefix=prefix, scale_input=scale_input)
    kept = read_checkpoint(path, fp8="keep")
    assert kept.layout == "safetensors-fp8-scaled" and kept.depths == (2, 2, 2) and kept.extras == {}
    fp8 = {k for k, v in kept.transformer.items()
           if v.dtype == torch.float8_e4m3fn and k != SCALED_FP8_MARKER}
    # beyond the released fp8 file: the final layer's Linears are fp8 too
    assert {"final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"} <= fp8
    assert not any(s in k for k in fp8 for s in KIJAI_KEEP)
    assert all(k[: -len(".weight")] + ".scale_weight" in kept.transformer for k in fp8)
    deq = read_checkpoint(path, fp8="dequantize").transformer
    assert set(deq) == set(sd)
    for k in fp8:  # fp8-sized error against the original weights, every scale applied
        ref = sd[k].float()
        assert (deq[k].float() - ref).abs().max() <= ref.abs().max() * 0.07, k
