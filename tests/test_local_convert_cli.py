"""`python -m hunyuancustom convert`: .pt -> safetensors through the real CLI entry point."""

from __future__ import annotations

import pytest
import torch
from local_models import backbone_state_dict, write_released_fp8, write_released_pt
from modes_models import audio_state_dict

from hunyuancustom.cli import main
from hunyuancustom.local.checkpoint import CheckpointError, read_checkpoint


def test_convert_released_pt(tmp_path, capsys):
    sd = backbone_state_dict()
    src = write_released_pt(tmp_path / "mp_rank_00_model_states.pt", {**sd, **audio_state_dict(width=128)})
    dst = tmp_path / "hunyuancustom_audio_720P.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "1 double / 1 single blocks" in out and "audio:" in out
    back = read_checkpoint(dst)
    assert all(torch.equal(back.transformer[k], sd[k]) for k in sd)
    assert "audio" in back.extras


def test_convert_fp8_dequantize(tmp_path):
    src, _ = write_released_fp8(tmp_path / "m_fp8.pt", backbone_state_dict())
    dst = tmp_path / "m_bf16.safetensors"
    assert main(["convert", str(src), str(dst), "--fp8", "dequantize"]) == 0
    back = read_checkpoint(dst)
    assert not back.is_fp8
    ref = read_checkpoint(src, fp8="dequantize").transformer
    assert all(torch.equal(back.transformer[k], ref[k]) for k in ref)


def test_convert_refuses_to_overwrite_and_bad_input(tmp_path, capsys):
    src = write_released_pt(tmp_path / "m.pt", backbone_state_dict())
    dst = tmp_path / "m.safetensors"
    dst.write_bytes(b"keep me")
    assert main(["convert", str(src), str(dst)]) == 2
    assert dst.read_bytes() == b"keep me"
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    bad = tmp_path / "bad.pt"
    torch.save({"module": {"foo.weight": torch.zeros(2)}}, bad)
    assert main(["convert", str(bad), str(tmp_path / "x.safetensors")]) == 2
    assert "source" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def _damaged_copies(tmp_path):
    """A real checkpoint of each kind cut in half: what an interrupted download leaves."""
    sd = backbone_state_dict()
    pt = write_released_pt(tmp_path / "cut.pt", sd)
    st = tmp_path / "cut.safetensors"
    assert main(["convert", str(pt), str(st)]) == 0
    for p in (pt, st):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return pt, st


def test_a_damaged_checkpoint_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    for src in _damaged_copies(tmp_path):
        with pytest.raises(CheckpointError, match=rf"{src.name} (is not a readable safetensors|cannot be "
                                                  r"read with torch.load)"):
            read_checkpoint(src)
        capsys.readouterr()
        dst = tmp_path / f"from_{src.stem}_{src.suffix[1:]}.safetensors"
        assert main(["convert", str(src), str(dst)]) == 2
        err = capsys.readouterr().err
        assert "source" in err and src.name in err and "Traceback" not in err
        assert not dst.exists()
