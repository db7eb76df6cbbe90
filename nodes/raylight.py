"""(Ray) versions of the pack's MODEL nodes, for Raylight (komikndr/raylight): more than one GPU.

Raylight's loader builds the MODEL inside each Ray worker; these nodes take and return its
RAY_ACTORS and patch every worker's MODEL with a function run there (`hunyuancustom.raylight`),
after checking their inputs here. Everything a one-GPU mode node prepares in ComfyUI's process
(audio windows, the background latent, the LATENT, audio and fps outputs) is prepared the same way.
`ray` is imported only when a node runs: the pack loads without Raylight.
"""

from __future__ import annotations

import comfy.latent_formats
import folder_paths
from comfy_api.latest import io

from ..hunyuancustom.errors import ValidationError
from ..hunyuancustom.local import released
from ..hunyuancustom.local.layout import check_clip_split
from ..hunyuancustom.modes import editing
from ..hunyuancustom.modes.checkpoint import mode_kinds
from ..hunyuancustom.params import check_value
from ..hunyuancustom.raylight.transport import sequence_degree_reader, worker_function
from .local import recipe_inputs
from .modes import (
    FLOW_SHIFT,
    audio_inputs,
    audio_outputs,
    editing_inputs,
    editing_outputs,
    prepare_audio,
    prepare_editing,
)

CATEGORY = "HunyuanCustom/Raylight"
RayActors = io.Custom("RAY_ACTORS")  # Raylight's {"workers": [Ray actor handles]}
MODE_LABELS = {"audio": ("audio (audio_proj, audio_models)", "hunyuancustom_audio_720P"),
               "editing": ("video-editing (bg_in, bg_proj)", "hunyuancustom_editing_720P")}


def _ray():
    try:
        import ray
    except ImportError:
        raise ValidationError("ray_actors", "needs Ray: install Raylight (komikndr/raylight) and its "
                                            "requirements into ComfyUI's Python") from None
    return ray


def _workers(ray_actors) -> list:
    workers = ray_actors.get("workers") if isinstance(ray_actors, dict) else None
    if not isinstance(workers, list) or not workers:
        raise ValidationError("ray_actors", "must be Raylight's RAY_ACTORS (from RayUNETLoader) with at "
                                            "least one worker")
    return workers


def sequence_degree(ray, workers) -> int:
    """The workers' sequence-parallel degree, as their xFuser state says (1: none)."""
    reader = sequence_degree_reader()
    return max(int(d) for d in ray.get([w.model_function_runner_get_values.remote(reader) for w in workers]))


def ship(ray, workers, fn) -> None:
    """Run `fn` on every worker's MODEL (stored once in Ray's object store)."""
    ref = ray.put(fn)
    ray.get([w.model_function_runner.remote(ref) for w in workers])


def mode_checkpoint(ckpt_name: str, kind: str) -> str:
    """The checkpoint's path, after checking from its key names that it holds the mode's modules."""
    path = folder_paths.get_full_path("diffusion_models", ckpt_name)
    if path is None:
        raise ValidationError("ckpt_name", f"{ckpt_name!r} is not in ComfyUI/models/diffusion_models")
    kinds = mode_kinds(path)
    if kinds is not None and kind not in kinds:
        label, name = MODE_LABELS[kind]
        raise ValidationError("ckpt_name", f"{ckpt_name} has no {label} modules: pick the {name} file "
                                           "(the one RayUNETLoader loads)")
    return path


def _ckpt_input(tooltip: str):
    return io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("diffusion_models"),
                          tooltip=tooltip)


def _actors_input():
    return RayActors.Input("ray_actors", tooltip="From RayUNETLoader (or another (Ray) node).")


def _actors_output():
    return RayActors.Output("ray_actors_out", display_name="ray_actors",
                            tooltip="The same workers, their MODEL patched: for Raylight's samplers.")


class ReleasedRecipeRay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomReleasedRecipeRay",
            display_name="Released Recipe (Ray)",
            category=CATEGORY,
            description=("Released Recipe (Local) on every Raylight worker's MODEL (load a core-layout "
                         "HunyuanCustom file with RayUNETLoader): the released text masks, DeepCache at 30 "
                         "steps, the released sigmas for simple, the flow shift. Running it again replaces "
                         "the earlier patch."),
            inputs=[
                _actors_input(),
                *recipe_inputs(),
            ],
            outputs=[_actors_output()],
        )

    @classmethod
    def execute(cls, ray_actors, deepcache=True, flow_shift=released.RELEASED_SHIFT,
                released_schedule=True) -> io.NodeOutput:
        workers = _workers(ray_actors)
        if not 0 <= flow_shift <= 100:
            raise ValidationError("flow_shift", f"{flow_shift} is not allowed; allowed: 0 - 100")
        ray = _ray()
        ship(ray, workers, worker_function("apply_released_recipe", deepcache=bool(deepcache),
                                           flow_shift=float(flow_shift),
                                           released_schedule=bool(released_schedule)))
        return io.NodeOutput(ray_actors)


class AudioDrivenRay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomAudioDrivenRay",
            display_name="Audio-Driven (Ray)",
            category=CATEGORY,
            description=("Audio-Driven (Local) on every Raylight worker: each worker reads the audio modules "
                         "from ckpt_name (the audio checkpoint RayUNETLoader loaded) and patches its MODEL; "
                         "the whisper features are computed here once. Connect the latent to Conditioning "
                         "(Local), the ray_actors to Raylight's sampler (euler, simple, 30 steps, cfg 7.5)."),
            inputs=[
                _actors_input(),
                _ckpt_input("The audio checkpoint (hunyuancustom_audio_720P, converted to .safetensors), "
                            "in models/diffusion_models: its audio modules are read by each worker."),
                *audio_inputs(),
            ],
            outputs=[
                _actors_output(),
                *audio_outputs(),
            ],
        )

    @classmethod
    def execute(cls, ray_actors, ckpt_name, audio, whisper_model, audio_strength, frames, width,
                height) -> io.NodeOutput:
        workers = _workers(ray_actors)
        path = mode_checkpoint(ckpt_name, "audio")
        ray = _ray()
        degree = sequence_degree(ray, workers)
        prep = prepare_audio(audio, whisper_model, audio_strength, frames, width, height,
                             check_latent=lambda shape: check_clip_split("frames", shape, degree))
        ship(ray, workers, worker_function("apply_audio_mode", checkpoint=path,
                                           latent_shape=prep.latent_shape, windows=prep.windows.cpu(),
                                           strength=float(prep.strength)))
        return io.NodeOutput(ray_actors, *prep.outputs())


class VideoDrivenRay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomVideoDrivenRay",
            display_name="Video-Driven (Ray)",
            category=CATEGORY,
            description=("Video-Driven (Local) on every Raylight worker: the masked source and the mask are "
                         "VAE-encoded here once; each worker reads the editing modules from ckpt_name (the "
                         "editing checkpoint RayUNETLoader loaded), patches its MODEL and sets the flow "
                         "shift. Connect the latent to Conditioning (Local), the ray_actors to Raylight's "
                         "sampler (euler, simple, 50 steps, cfg 7.5)."),
            inputs=[
                _actors_input(),
                _ckpt_input("The editing checkpoint (hunyuancustom_editing_720P, converted to "
                            ".safetensors), in models/diffusion_models: its editing modules are read by "
                            "each worker."),
                io.Vae.Input("vae", tooltip="HunyuanVideo VAE."),
                *editing_inputs("workers' MODEL"),
            ],
            outputs=[
                _actors_output(),
                *editing_outputs(),
            ],
        )

    @classmethod
    def execute(cls, ray_actors, ckpt_name, vae, mask, expand, max_frames,
                flow_shift=editing.DEFAULT_FLOW_SHIFT, video=None, frames=None, fps=25.0,
                audio=None) -> io.NodeOutput:
        workers = _workers(ray_actors)
        flow_shift = check_value(FLOW_SHIFT, flow_shift)
        path = mode_checkpoint(ckpt_name, "editing")
        ray = _ray()
        degree = sequence_degree(ray, workers)
        # the workers' MODEL is not here: HunyuanVideo's latent format is core's, by name
        prep = prepare_editing(vae, mask, expand, max_frames, comfy.latent_formats.HunyuanVideo(), video,
                               frames, fps, audio,
                               check_latent=lambda shape: check_clip_split("video", shape, degree))
        ship(ray, workers, worker_function("apply_editing_mode", checkpoint=path,
                                           background=prep.background.cpu(), flow_shift=float(flow_shift)))
        return io.NodeOutput(ray_actors, *prep.outputs())


NODES = [ReleasedRecipeRay, AudioDrivenRay, VideoDrivenRay]
