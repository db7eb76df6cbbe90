"""Reading the mode modules out of checkpoint files laid out like the released ones."""

from __future__ import annotations

import pytest
import torch
from modes_models import WIDTH, audio_state_dict, editing_state_dict
from safetensors.torch import save_file

from hunyuancustom.errors import ValidationError
from hunyuancustom.modes.checkpoint import load_mode_modules, mode_modules_from_extras, read_mode_tensors


def backbone(prefix=""):
    """A few ref2v transformer tensors (the part every HunyuanCustom checkpoint has)."""
    return {prefix + "img_in.proj.weight": torch.randn(WIDTH, 16, 1, 2, 2).bfloat16(),
            prefix + "double_blocks.0.img_attn.qkv.weight": torch.randn(3 * WIDTH, WIDTH).bfloat16(),
            prefix + "final_layer.linear.weight": torch.randn(64, WIDTH).bfloat16()}


def test_released_pt_layout_gives_the_audio_modules(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {**backbone(), **audio_state_dict()}}, path)
    mods = load_mode_modules(path)
    assert mods.audio is not None and mods.editing is None and mods.source == path.name
    assert mods.require_audio().width == WIDTH
    assert torch.equal(mods.audio.audio_models[3].to_kv.weight,
                       audio_state_dict()["audio_models.3.to_kv.weight"].float())
    with pytest.raises(ValidationError) as e:
        mods.require_editing()
    assert e.value.field == "mode_modules" and "hunyuancustom_editing_720P" in str(e.value)


def test_safetensors_with_a_prefix_gives_the_editing_modules_only(tmp_path):
    path = tmp_path / "editing.safetensors"
    prefix = "model.diffusion_model."
    save_file({**backbone(prefix), **editing_state_dict(prefix)}, str(path))
    tensors = read_mode_tensors(path)
    assert set(tensors) == set(editing_state_dict())  # the backbone is not read
    mods = load_mode_modules(path)
    assert mods.editing is not None and mods.audio is None
    with pytest.raises(ValidationError, match="hunyuancustom_audio_720P"):
        mods.require_audio()


def test_ref2v_checkpoint_is_refused_with_what_is_missing(tmp_path):
    path = tmp_path / "ref2v.pt"
    torch.save({"module": backbone()}, path)
    with pytest.raises(ValidationError) as e:
        load_mode_modules(path)
    assert e.value.field == "ckpt_name" and "neither audio modules" in str(e.value)


@pytest.mark.parametrize("name", ["broken.pt", "broken.safetensors"])
def test_unreadable_or_missing_files_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValidationError, match="not a readable"):
        load_mode_modules(path)
    with pytest.raises(ValidationError, match="file not found"):
        load_mode_modules(tmp_path / "missing.pt")


def test_extras_set_aside_by_the_local_loader_give_the_modules():
    extras = {"audio": audio_state_dict(), "editing": editing_state_dict()}
    mods = mode_modules_from_extras(extras, "the MODEL")
    assert mods.audio is not None and mods.editing is not None
    with pytest.raises(ValidationError) as e:
        mode_modules_from_extras({}, "the MODEL")
    assert e.value.field == "mode_modules" and "Load Mode Modules" in str(e.value)
    with pytest.raises(ValidationError, match="hunyuancustom_audio_720P"):
        mode_modules_from_extras({"editing": editing_state_dict()}, "the MODEL").require_audio()
