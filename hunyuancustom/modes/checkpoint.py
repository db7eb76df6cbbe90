"""Read only the mode modules' tensors from a HunyuanCustom checkpoint file.

The released audio / editing transformers are 24-30 GB files; the mode modules are a few hundred
MB of them. Safetensors files are read key by key; pickled `.pt` files are memory-mapped
(`weights_only=True`) so only the selected tensors are paged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ValidationError
from .audio import KEY_PREFIXES as AUDIO_PREFIXES
from .audio import AudioModules, select_keys
from .editing import KEY_PREFIXES as EDITING_PREFIXES
from .editing import BackgroundModules

MODE_PREFIXES = AUDIO_PREFIXES + EDITING_PREFIXES


@dataclass
class ModeModules:
    """What a checkpoint holds beyond the ref2v transformer."""

    source: str
    audio: AudioModules | None = None
    editing: BackgroundModules | None = None

    def require_audio(self) -> AudioModules:
        if self.audio is None:
            raise ValidationError("mode_modules", f"{self.source} has no audio modules (audio_proj, "
                                                  "audio_models): load the audio checkpoint "
                                                  "(hunyuancustom_audio_720P)")
        return self.audio

    def require_editing(self) -> BackgroundModules:
        if self.editing is None:
            raise ValidationError("mode_modules", f"{self.source} has no video-editing modules (bg_in, "
                                                  "bg_proj): load the editing checkpoint "
                                                  "(hunyuancustom_editing_720P)")
        return self.editing


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValidationError("ckpt_name", f"file not found: {path}")
    return path


def _safetensors_mode_tensors(path: Path, load: bool) -> dict:
    """The mode modules' keys of a safetensors file, with their tensors (`load`) or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            wanted = [k for k in f.keys() if select_keys({k: None}, MODE_PREFIXES)]
            return select_keys({k: f.get_tensor(k) if load else None for k in wanted}, MODE_PREFIXES)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValidationError("ckpt_name", f"{path.name} is not a readable safetensors file "
                                           f"({type(e).__name__}: {str(e)[:200]})") from None


def _pickled_state_dict(path: Path, mmap_only: bool) -> dict | None:
    """A pickled checkpoint's state dict, memory-mapped (`weights_only=True`); a legacy pickle that
    cannot be mapped is read whole, or gives None with `mmap_only`."""
    try:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            if mmap_only:
                return None
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValidationError("ckpt_name", f"{path.name} is not a readable checkpoint "
                                           f"({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))  # the released files keep the weights under "module"
    if not isinstance(sd, dict):
        raise ValidationError("ckpt_name", f"{path.name} does not hold a state dict")
    return sd


def read_mode_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The `audio_proj.*`, `audio_models.*`, `bg_in.*`, `bg_proj.*` tensors of a checkpoint."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return _safetensors_mode_tensors(path, load=True)
    sd = _pickled_state_dict(path, mmap_only=False)
    return {k: v.clone() for k, v in select_keys(sd, MODE_PREFIXES).items()}


def mode_modules_from_tensors(sd: dict[str, torch.Tensor], source: str) -> ModeModules:
    """Build whichever modules the tensors hold; refuse a checkpoint that holds neither."""
    has_audio = any(k.startswith(AUDIO_PREFIXES) for k in sd)
    has_editing = any(k.startswith(EDITING_PREFIXES) for k in sd)
    if not has_audio and not has_editing:
        raise ValidationError("ckpt_name", f"{source} has neither audio modules (audio_proj, audio_models) "
                                           "nor video-editing modules (bg_in, bg_proj): it is a ref2v "
                                           "checkpoint; the audio- and video-driven modes need "
                                           "hunyuancustom_audio_720P or hunyuancustom_editing_720P")
    return ModeModules(
        source=source,
        audio=AudioModules.from_state_dict(sd, source) if has_audio else None,
        editing=BackgroundModules.from_state_dict(sd, source) if has_editing else None,
    )


def load_mode_modules(path: str | Path) -> ModeModules:
    path = Path(path)
    return mode_modules_from_tensors(read_mode_tensors(path), path.name)


def mode_modules_from_extras(extras: dict[str, dict[str, torch.Tensor]] | None, source: str) -> ModeModules:
    """From the extra-module tensors a loader set aside ({"audio": {...}, "editing": {...}}, as
    `hunyuancustom.local.checkpoint.read_checkpoint` returns them)."""
    merged: dict[str, torch.Tensor] = {}
    for part in (extras or {}).values():
        merged.update(part)
    if not merged:
        raise ValidationError("mode_modules", f"{source} carries no audio or video-editing modules: connect "
                                              "Load Mode Modules, or load the audio / editing "
                                              "checkpoint with Load Model (Local)")
    return mode_modules_from_tensors(merged, source)


def mode_kinds(path: str | Path) -> set[str] | None:
    """Which module sets ("audio", "editing") a checkpoint holds, from its key names only, for a
    check before the modules are read elsewhere; None for a pickle that cannot be memory-mapped
    (reading it would read the whole file)."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        found = _safetensors_mode_tensors(path, load=False)
    else:
        sd = _pickled_state_dict(path, mmap_only=True)
        if sd is None:
            return None
        found = select_keys({k: None for k in sd}, MODE_PREFIXES)
    return {kind for kind, prefixes in (("audio", AUDIO_PREFIXES), ("editing", EDITING_PREFIXES))
            if any(k.startswith(prefixes) for k in found)}
