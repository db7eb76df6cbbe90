"""Audio-driven and video-driven HunyuanCustom on ComfyUI core's HunyuanVideo model (local weights).

Each mode node takes the MODEL of the mode's checkpoint (its extra modules come with it from
Load Model (Local), or from Load Mode Modules) and returns it with the modules patched in, plus
the LATENT the patches were prepared for, the clip's fps and audio. Conditioning (Local) takes that
LATENT (its size and length) and passes it on to core's KSampler; Create Video puts the audio back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..hunyuancustom.errors import ValidationError
from ..hunyuancustom.modes import audio as audio_mode
from ..hunyuancustom.modes import editing
from ..hunyuancustom.modes.checkpoint import ModeModules, load_mode_modules, mode_modules_from_extras
from ..hunyuancustom.modes.patching import check_model, patch_audio, patch_editing
from ..hunyuancustom.params import REF2V_720P

FLOW_SHIFT = REF2V_720P.param("flow_shift")  # the same range as every ref2v node

ModeModulesType = io.Custom("HUNYUANCUSTOM_MODE_MODULES")
AUDIO_FOLDER = "audio_encoders"
_whisper_cache: dict[tuple[str, str], audio_mode.WhisperFeatures] = {}
# Where Load Model (Local) leaves the checkpoint's extra modules on its MODEL.
EXTRAS_ATTACHMENT = "hunyuancustom_extras"


def whisper_choices() -> list[str]:
    """Model folders (with a config.json) under ComfyUI/models/audio_encoders; whisper-tiny first."""
    found = set()
    for base in folder_paths.get_folder_paths(AUDIO_FOLDER):
        try:
            found.update(p.name for p in Path(base).iterdir() if (p / "config.json").is_file())
        except OSError:
            continue
    return [audio_mode.WHISPER_FOLDER] + sorted(found - {audio_mode.WHISPER_FOLDER})


def whisper_features(name: str) -> audio_mode.WhisperFeatures:
    bases = folder_paths.get_folder_paths(AUDIO_FOLDER)
    folder = next((Path(b) / name for b in bases if (Path(b) / name / "config.json").is_file()), None)
    if folder is None:
        where = bases[0] if bases else "ComfyUI/models/audio_encoders"
        target = Path(where) / audio_mode.WHISPER_FOLDER
        raise ValidationError("whisper_model", f"no model folder {name!r} in {where}: download "
                                               "openai/whisper-tiny (config.json, preprocessor_config.json, "
                                               f"model.safetensors) into {target}")
    import comfy.model_management as mm

    device = mm.get_torch_device()
    key = (str(folder), str(device))
    if key not in _whisper_cache:
        _whisper_cache.clear()  # keep one encoder at most
        _whisper_cache[key] = audio_mode.WhisperFeatures(folder, device=device)
    return _whisper_cache[key]


def resolve_modules(model, mode_modules: ModeModules | None) -> ModeModules:
    """The connected modules, else those the local model loader attached to the MODEL."""
    if mode_modules is not None:
        return mode_modules
    get = getattr(model, "get_attachment", None)
    extras = get(EXTRAS_ATTACHMENT) if callable(get) else None
    return mode_modules_from_extras(extras, "the MODEL")


def check_size(width: int, height: int) -> None:
    for field, v in (("width", width), ("height", height)):
        if v % 16 or v < 16:
            raise ValidationError(field, f"{v} is not allowed; allowed: multiples of 16")


def audio_output(wave: audio_mode.Waveform) -> dict:
    return {"waveform": wave.samples.unsqueeze(0), "sample_rate": wave.sample_rate}


class LoadModeModules(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomLoadModeModules",
            display_name="Load Mode Modules",
            category="HunyuanCustom",
            description=("Reads the audio modules (audio_proj, audio_models) or the video-editing modules "
                         "(bg_in, bg_proj) from the audio / editing checkpoint, without loading the rest. "
                         "Load the same file with Load Diffusion Model for the MODEL (then Released Recipe "
                         "(Local))."),
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("diffusion_models"),
                                   tooltip="hunyuancustom_audio_720P or hunyuancustom_editing_720P "
                                           "(ComfyUI/models/diffusion_models).")],
            outputs=[ModeModulesType.Output("mode_modules", display_name="mode_modules",
                                            tooltip="The audio or editing modules, for the mode nodes.")],
        )

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        path = folder_paths.get_full_path("diffusion_models", ckpt_name)
        if path is None:
            raise ValidationError("ckpt_name", f"{ckpt_name!r} is not in ComfyUI/models/diffusion_models")
        mods = load_mode_modules(path)
        logging.info("[HunyuanCustom] %s: audio modules %s, editing modules %s", ckpt_name,
                     mods.audio is not None, mods.editing is not None)
        return io.NodeOutput(mods)


@dataclass
class AudioPrep:
    """What Audio-Driven computes before touching a MODEL (shared with its Raylight version)."""

    latent_shape: tuple[int, int, int]
    windows: torch.Tensor  # whisper windows per frame, for `AudioCondition`
    strength: float
    fitted: audio_mode.Waveform  # the audio trimmed / padded to the clip

    def outputs(self) -> tuple:
        """(latent, audio, fps), the node's outputs after its MODEL."""
        return ({"samples": torch.zeros(1, 16, *self.latent_shape)}, audio_output(self.fitted),
                float(audio_mode.FPS))


def prepare_audio(audio, whisper_model: str, audio_strength: float, frames: int, width: int,
                  height: int, check_latent=None) -> AudioPrep:
    """`check_latent(latent_shape)`, if given, runs before the whisper encoder does."""
    audio_strength = audio_mode.check_strength(audio_strength)
    check_size(width, height)
    wave = audio_mode.waveform_from_audio(audio)
    n = audio_mode.video_frame_count(wave, frames)
    if check_latent is not None:
        check_latent(((n - 1) // 4 + 1, height // 8, width // 8))
    windows = audio_mode.audio_windows(wave, whisper_features(whisper_model), n)
    t = (n - 1) // 4 + 1
    fitted = audio_mode.fit_waveform(wave, n / audio_mode.FPS)
    return AudioPrep((t, height // 8, width // 8), windows, audio_strength, fitted)


# The mode nodes' own widgets and outputs, shared by the (Local) nodes and the (Ray) nodes
# (nodes/raylight.py): one definition of each parameter.
def audio_inputs() -> list:
    return [
        io.Audio.Input("audio", tooltip="Speech or song; any sample rate, mono or stereo."),
        io.Combo.Input("whisper_model", options=whisper_choices(), default=audio_mode.WHISPER_FOLDER,
                       tooltip="Folder in ComfyUI/models/audio_encoders with openai/whisper-tiny."),
        io.Float.Input("audio_strength", default=audio_mode.DEFAULT_STRENGTH, min=0.0,
                       max=audio_mode.MAX_STRENGTH, step=0.05,
                       tooltip="Scale of the audio's effect (released default 0.8)."),
        io.Int.Input("frames", default=0, min=0, max=1025,
                     tooltip="0: follow the audio (longest 4k+1 frames it covers at 25 fps); else 4k+1."),
        io.Int.Input("width", default=1280, min=64, max=4096, step=16,
                     tooltip="Video width, a multiple of 16 (released: 1280)."),
        io.Int.Input("height", default=720, min=64, max=4096, step=16,
                     tooltip="Video height, a multiple of 16 (released: 720)."),
    ]


def audio_outputs() -> list:
    return [
        io.Latent.Output("latent", display_name="latent",
                         tooltip="The empty video latent the audio was prepared for: connect it to "
                                 "Conditioning (Local)."),
        io.Audio.Output("clip_audio", display_name="audio",
                        tooltip="The audio fitted to the clip's duration (Create Video)."),
        io.Float.Output("fps", display_name="fps", tooltip="25 (Create Video)."),
    ]


def editing_inputs(target: str) -> list:
    """Everything after the VAE; `target`: what the flow shift is set on ("MODEL", "workers' MODEL")."""
    return [
        io.Mask.Input("mask", tooltip="White = region to replace; one mask for all frames or one per frame, "
                                      "the video's size."),
        io.Int.Input("expand", default=editing.DEFAULT_EXPAND, min=-64, max=64,
                     tooltip="Grow (>0) or shrink (<0) the mask: elliptical kernel of this many pixels, "
                             "applied 3 times (released recipe: 5)."),
        io.Int.Input("max_frames", default=0, min=0, max=1025,
                     tooltip="0: the whole source (cut to 4k+1 frames); else at most this many (4k+1)."),
        # The editing recipe's shift differs from ref2v's 13: it goes onto the MODEL here.
        io.Float.Input("flow_shift", default=editing.DEFAULT_FLOW_SHIFT, min=FLOW_SHIFT.minimum,
                       max=FLOW_SHIFT.maximum, step=FLOW_SHIFT.step or 0.1,
                       tooltip=f"Flow shift set on the {target} (released editing recipe: 5)."),
        io.Video.Input("video", optional=True, tooltip="Source video (its fps and audio are kept)."),
        io.Image.Input("frames", optional=True, tooltip="Source frames, instead of a VIDEO."),
        io.Float.Input("fps", default=25.0, min=1.0, max=120.0, optional=True,
                       tooltip="Frame rate of IMAGE frames (a VIDEO brings its own)."),
        io.Audio.Input("audio", optional=True, tooltip="Audio for IMAGE frames (a VIDEO brings its own)."),
    ]


def editing_outputs() -> list:
    return [
        io.Latent.Output("latent", display_name="latent",
                         tooltip="The empty video latent of the source's size and length (4k+1): connect "
                                 "it to Conditioning (Local)."),
        io.Audio.Output("clip_audio", display_name="audio",
                        tooltip="The source's audio fitted to the clip (silence if it had none)."),
        io.Float.Output("clip_fps", display_name="fps", tooltip="The source's frame rate."),
        io.Image.Output("masked_frames", display_name="masked_frames",
                        tooltip="What the model sees: the source with the region blacked out."),
    ]


class AudioDriven(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomAudioDriven",
            display_name="Audio-Driven (Local)",
            category="HunyuanCustom",
            description=("Talking / singing avatar: patches the audio checkpoint's modules into the MODEL "
                         "(added to the video tokens after double blocks 1, 3, 5, 7, 9, 11; zero audio on "
                         "the negative branch) and makes the LATENT as long as the audio at 25 fps. Connect "
                         "the latent to Conditioning (Local), the model to KSampler; recipe: euler, simple, "
                         "30 steps, cfg 7.5. Then Create Video with this node's audio and fps."),
            inputs=[
                io.Model.Input("model", tooltip="The audio checkpoint (Load Model (Local), or Load "
                                                "Diffusion Model for a bf16 file)."),
                ModeModulesType.Input("mode_modules", optional=True,
                                      tooltip="From Load Mode Modules (same file); not needed when the "
                                              "MODEL comes from Load Model (Local)."),
                *audio_inputs(),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="model",
                                tooltip="The MODEL with the audio modules, for KSampler."),
                *audio_outputs(),
            ],
        )

    @classmethod
    def execute(cls, model, audio, whisper_model, audio_strength, frames, width, height,
                mode_modules: ModeModules | None = None) -> io.NodeOutput:
        audio_strength = audio_mode.check_strength(audio_strength)
        mods = resolve_modules(model, mode_modules).require_audio()
        check_model(model, mods.width, max(mods.insert_after) + 1)
        prep = prepare_audio(audio, whisper_model, audio_strength, frames, width, height)
        patched = patch_audio(model, mods, prep.latent_shape, prep.windows, prep.strength)
        return io.NodeOutput(patched, *prep.outputs())


def source_components(video, frames, fps, audio):
    """(frames [N, H, W, 3], fps, Waveform | None) from a VIDEO or from IMAGE frames (+ fps, AUDIO)."""
    if video is not None and frames is not None:
        raise ValidationError("video", "connect either a VIDEO or IMAGE frames, not both")
    if video is None and frames is None:
        raise ValidationError("video", "connect the source: a VIDEO (Load Video) or IMAGE frames")
    if video is not None:
        try:
            comp = video.get_components()
        except Exception as e:  # PyAV and core raise many types for unreadable files
            raise ValidationError("video", f"could not be read ({type(e).__name__}: "
                                           f"{str(e)[:200]})") from None
        images, rate = comp.images, float(comp.frame_rate)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0 \
                or images.shape[1] == 0:
            raise ValidationError("video", "has no frames (zero-length or unreadable video)")
        wave = comp.audio
    else:
        images, rate, wave = frames, fps, audio
    return images, rate, (audio_mode.waveform_from_audio(wave) if wave is not None else None)


@dataclass
class EditingPrep:
    """What Video-Driven computes before touching a MODEL (shared with its Raylight version)."""

    background: torch.Tensor  # [1, 32, t, h, w]: the masked source and the mask, encoded
    clip: editing.SourceClip
    fitted: audio_mode.Waveform

    def outputs(self) -> tuple:
        """(latent, audio, fps, masked_frames), the node's outputs after its MODEL."""
        return ({"samples": torch.zeros(1, 16, *self.clip.latent_shape)}, audio_output(self.fitted),
                self.clip.fps, self.clip.masked)


def prepare_editing(vae, mask, expand: int, max_frames: int, latent_format, video=None, frames=None,
                    fps=25.0, audio=None, check_latent=None) -> EditingPrep:
    """`check_latent(latent_shape)`, if given, runs before the VAE does."""
    images, rate, wave = source_components(video, frames, fps, audio)
    clip = editing.prepare_source(images, mask, rate, expand=expand, max_frames=max_frames)
    if check_latent is not None:
        check_latent(clip.latent_shape)
    bg = editing.background_latent(clip, lambda x: vae.encode(x).to(torch.float32), latent_format.process_in)
    if wave is None:  # silence keeps Create Video's output uniform
        wave = audio_mode.Waveform(torch.zeros(1, 1), 44100)
    return EditingPrep(bg, clip, audio_mode.fit_waveform(wave, clip.seconds))


class VideoDriven(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomVideoDriven",
            display_name="Video-Driven (Local)",
            category="HunyuanCustom",
            description=("Insert or replace a subject in a video: blacks out the masked region, encodes the "
                         "masked clip and the mask with the VAE, patches the editing checkpoint's bg_in / "
                         "bg_proj into the MODEL and sets its flow shift. Connect the latent (the source's "
                         "size and length) to Conditioning (Local), the model to KSampler; recipe: euler, "
                         "simple, 50 steps, cfg 7.5. Then Create Video with this node's audio and fps: the "
                         "source's."),
            inputs=[
                io.Model.Input("model", tooltip="The editing checkpoint (Load Model (Local), or Load "
                                                "Diffusion Model for a bf16 file)."),
                ModeModulesType.Input("mode_modules", optional=True,
                                      tooltip="From Load Mode Modules (same file); not needed when the "
                                              "MODEL comes from Load Model (Local)."),
                io.Vae.Input("vae", tooltip="HunyuanVideo VAE."),
                *editing_inputs("MODEL"),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="model",
                                tooltip="The MODEL with the editing modules and flow shift, for KSampler."),
                *editing_outputs(),
            ],
        )

    @classmethod
    def execute(cls, model, vae, mask, expand, max_frames, flow_shift=editing.DEFAULT_FLOW_SHIFT,
                mode_modules: ModeModules | None = None,
                video=None, frames=None, fps=25.0, audio=None) -> io.NodeOutput:
        mods = resolve_modules(model, mode_modules).require_editing()
        check_model(model, mods.bg_proj.out_features)
        prep = prepare_editing(vae, mask, expand, max_frames, model.get_model_object("latent_format"),
                               video, frames, fps, audio)
        patched = patch_editing(model, mods, prep.background, flow_shift)
        return io.NodeOutput(patched, *prep.outputs())


NODES = [LoadModeModules, AudioDriven, VideoDriven]
