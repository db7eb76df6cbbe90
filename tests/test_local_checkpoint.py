"""Checkpoint reading in every released layout, on tiny random-weight transformers."""

from __future__ import annotations

import pytest
import torch
from local_models import (
    backbone_state_dict,
    write_released_fp8,
    write_released_pt,
    write_safetensors,
    write_scaled_safetensors,
)
from modes_models import audio_state_dict, editing_state_dict

from hunyuancustom.local.checkpoint import (
    SCALED_FP8_MARKER,
    CheckpointError,
    backbone_keys,
    check_backbone_keys,
    convert_to_safetensors,
    fp8_linear_modules,
    fp8_map_path,
    read_checkpoint,
)


def test_released_key_count_is_852():
    keys = backbone_keys()
    assert len(keys) == len(set(keys)) == 852
    # the released fp8 file scales every Linear of the blocks: 10 per double, 3 per single
    assert len(fp8_linear_modules(keys)) == 20 * 10 + 40 * 3


def test_released_bf16_pt_maps_every_key(tmp_path):
    sd = backbone_state_dict(double=2, single=3)
    ckpt = read_checkpoint(write_released_pt(tmp_path / "mp_rank_00_model_states.pt", sd))
    assert ckpt.layout == "pt"
    assert ckpt.depths == (2, 3, 2)
    assert set(ckpt.transformer) == set(sd)
    assert all(torch.equal(ckpt.transformer[k], sd[k]) for k in sd)
    assert ckpt.extras == {}


def test_released_fp8_pt_dequantises_like_the_released_code(tmp_path):
    sd = backbone_state_dict()
    path, scales = write_released_fp8(tmp_path / "mp_rank_00_model_states_fp8.pt", sd)
    assert fp8_map_path(path).name == "mp_rank_00_model_states_fp8_map.pt"
    ckpt = read_checkpoint(path, fp8="dequantize")
    assert ckpt.layout == "pt-fp8" and not ckpt.is_fp8
    raw = torch.load(path, weights_only=True)["module"]
    for module, scale in scales.items():
        w = ckpt.transformer[module + ".weight"]
        # the released forward: weight.to(dtype) * scale.to(dtype)
        assert torch.equal(w, raw[module + ".weight"].to(torch.bfloat16) * scale.to(torch.bfloat16))
        # and the quantisation error against the original bf16 weight is fp8-sized
        ref = sd[module + ".weight"].float()
        assert (w.float() - ref).abs().max() <= ref.abs().max() * 0.07
    untouched = set(sd) - {m + ".weight" for m in scales}
    assert all(torch.equal(ckpt.transformer[k], sd[k]) for k in untouched)


def test_released_fp8_pt_kept_as_comfy_scaled_fp8(tmp_path):
    sd = backbone_state_dict()
    path, scales = write_released_fp8(tmp_path / "x_fp8.pt", sd)
    ckpt = read_checkpoint(path, fp8="keep")
    assert ckpt.is_fp8
    assert ckpt.transformer[SCALED_FP8_MARKER].dtype == torch.float8_e4m3fn
    for module, scale in scales.items():
        assert ckpt.transformer[module + ".weight"].dtype == torch.float8_e4m3fn
        assert ckpt.transformer[module + ".scale_weight"].item() == pytest.approx(scale.item())


def test_fp8_pt_without_map_names_the_missing_file(tmp_path):
    path, _ = write_released_fp8(tmp_path / "w_fp8.pt", backbone_state_dict())
    fp8_map_path(path).unlink()
    with pytest.raises(CheckpointError, match="w_fp8_map.pt"):
        read_checkpoint(path)


def test_a_damaged_or_code_carrying_fp8_map_is_a_checkpoint_error(tmp_path):
    path, _ = write_released_fp8(tmp_path / "w_fp8.pt", backbone_state_dict())
    fp8_map_path(path).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="w_fp8_map.pt cannot be read with torch.load"):
        read_checkpoint(path)
    torch.save({"double_blocks.0.img_attn_qkv": torch.nn.Linear(1, 1)}, fp8_map_path(path))
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)


def test_the_scales_file_is_named_after_the_checkpoint_whatever_its_suffix(tmp_path):
    assert fp8_map_path(tmp_path / "mp_rank_00_model_states_fp8.pt").name == \
        "mp_rank_00_model_states_fp8_map.pt"
    assert fp8_map_path(tmp_path / "w_fp8.pth").name == "w_fp8_map.pt"


def test_scaled_safetensors_with_prefix(tmp_path):
    sd = backbone_state_dict()
    path, scales = write_scaled_safetensors(tmp_path / "hunyuan_custom_fp8_scaled.safetensors", sd)
    kept = read_checkpoint(path)
    assert kept.layout == "safetensors-fp8-scaled"
    assert SCALED_FP8_MARKER in kept.transformer
    deq = read_checkpoint(path, fp8="dequantize")
    assert set(deq.transformer) == set(sd)
    module = next(iter(scales))
    expected = kept.transformer[module + ".weight"].to(torch.bfloat16) * scales[module].to(torch.bfloat16)
    assert torch.equal(deq.transformer[module + ".weight"], expected)


def test_plain_safetensors(tmp_path):
    sd = backbone_state_dict(dtype=torch.float32)
    ckpt = read_checkpoint(write_safetensors(tmp_path / "plain.safetensors", sd))
    assert ckpt.layout == "safetensors" and set(ckpt.transformer) == set(sd)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = backbone_state_dict()
    del sd["double_blocks.0.img_attn_qkv.bias"]
    sd["double_blocks.0.img_attn_extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(write_safetensors(tmp_path / "bad.safetensors", sd))
    assert "double_blocks.0.img_attn_qkv.bias" in str(e.value)
    assert "double_blocks.0.img_attn_extra.weight" in str(e.value)
    assert "1 missing" in str(e.value) and "1 unexpected" in str(e.value)


def test_not_a_transformer_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no double_blocks"):
        check_backbone_keys({"encoder.weight": torch.zeros(1)})
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        read_checkpoint(tmp_path / "a.txt")


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"module": {"x": torch.nn.Linear(1, 1)}}, path)  # a module object, not tensors
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)


def test_audio_and_editing_modules_set_aside(tmp_path):
    sd = backbone_state_dict()
    audio = audio_state_dict(width=128)
    edit = editing_state_dict(width=128)
    ckpt = read_checkpoint(write_released_pt(tmp_path / "a.pt", {**sd, **audio}))
    assert set(ckpt.extras) == {"audio"} and set(ckpt.extras["audio"]) == set(audio)
    assert set(ckpt.transformer) == set(sd)
    path, _ = write_released_fp8(tmp_path / "e_fp8.pt", {**sd, **edit})
    ckpt = read_checkpoint(path, fp8="keep")
    assert set(ckpt.extras["editing"]) == set(edit)
    assert all(torch.equal(ckpt.extras["editing"][k], edit[k]) for k in edit)


def test_convert_pt_to_safetensors_round_trips(tmp_path):
    sd = backbone_state_dict()
    audio = audio_state_dict(width=128)
    src = write_released_pt(tmp_path / "mp_rank_00_model_states.pt", {**sd, **audio})
    dst = tmp_path / "out" / "hunyuancustom_720p.safetensors"
    convert_to_safetensors(src, dst)
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left
    back = read_checkpoint(dst)
    assert back.layout == "safetensors"
    assert all(torch.equal(back.transformer[k], sd[k]) for k in sd)
    assert set(back.extras["audio"]) == set(audio)


def test_convert_fp8_keeps_fp8_and_scales(tmp_path):
    sd = backbone_state_dict()
    src, _ = write_released_fp8(tmp_path / "m_fp8.pt", sd)
    dst = tmp_path / "m_fp8_scaled.safetensors"
    assert convert_to_safetensors(src, dst).layout == "pt-fp8"
    a = read_checkpoint(src, fp8="dequantize").transformer
    b = read_checkpoint(dst, fp8="dequantize").transformer
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_convert_refuses_other_suffix(tmp_path):
    src = write_released_pt(tmp_path / "m.pt", backbone_state_dict())
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        convert_to_safetensors(src, tmp_path / "m.bin")


def test_deepspeed_wrapper_with_other_entries(tmp_path):
    sd = backbone_state_dict()
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": sd, "ds_version": "0.14.0", "global_steps": 1000}, path)
    assert set(read_checkpoint(path).transformer) == set(sd)


def test_hunyuanvideo_t2v_checkpoint_is_named_as_such():
    sd = backbone_state_dict()
    sd["guidance_in.mlp.0.weight"] = torch.zeros(128, 256)
    with pytest.raises(CheckpointError, match="HunyuanVideo text-to-video"):
        check_backbone_keys(sd)
