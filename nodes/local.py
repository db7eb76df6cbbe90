"""Local ref2v nodes: HunyuanCustom on the user's own GPU through ComfyUI core's model management
and core's own sampler."""

from __future__ import annotations

import time
from fractions import Fraction

import folder_paths
import torch
from comfy_api.latest import InputImpl, Types, io

from ..hunyuancustom.errors import ValidationError
from ..hunyuancustom.local import conditioning as cond
from ..hunyuancustom.local import released
from ..hunyuancustom.local import sampler as local
from ..hunyuancustom.local.comfy_model import WEIGHT_DTYPES, load_model
from ..hunyuancustom.local.prompt import DEFAULT_NAME
from ..hunyuancustom.params import ALL_SIZES, OFFICIAL_NEGATIVE_PROMPT, REF2V_720P, check_value, parse_size
from ..hunyuancustom.video import select_image
from .files import SUBFOLDER, preview_video
from .widgets import widget

FOLDER = "diffusion_models"


def checkpoint_names() -> list[str]:
    # the released fp8 scales file sits next to its weights; it is not a model by itself
    return [n for n in folder_paths.get_filename_list(FOLDER) if not n.endswith("_map.pt")]


def _deepcache_input():
    return io.Boolean.Input("deepcache", default=True,
                            tooltip="The released DeepCache: at exactly 30 steps, steps 11, 12, 14, 15, 17, "
                                    "18, 20 and 21 run only the last single block on the input cached at "
                                    "the previous full step (about a quarter less transformer work). Off: "
                                    "every step in full.")


def recipe_inputs() -> list:
    """Released Recipe's switches, also those of Released Recipe (Ray) (nodes/raylight.py)."""
    return [
        _deepcache_input(),
        io.Float.Input("flow_shift", default=released.RELEASED_SHIFT, min=0.0, max=100.0, step=0.1,
                       tooltip="Flow shift of the sampling schedule (released: 13 for ref2v and audio, 5 "
                               "for editing); 0 keeps the MODEL's own (e.g. from ModelSamplingSD3)."),
        io.Boolean.Input("released_schedule", default=True,
                         tooltip="With the simple scheduler, use the released sigmas exactly (core's simple "
                                 "rounds 1000/steps down: 30 steps start at t=0.967, not 0.9667). Other "
                                 "schedulers are never changed."),
    ]


class LocalModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomLocalModelLoader",
            display_name="Load Model (Local)",
            category="HunyuanCustom",
            description=("Loads the HunyuanCustom transformer from models/diffusion_models: the released "
                         "mp_rank_00_model_states.pt (bf16), its _fp8.pt with the _fp8_map.pt next to it, "
                         "an fp8-scaled or plain .safetensors. Every key is checked. The MODEL computes what "
                         "the released transformer computes (text masks, DeepCache, schedule, flow shift 13) "
                         "in core's KSampler and every other core sampler."),
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_names(),
                               tooltip="File in models/diffusion_models."),
                io.Combo.Input("fp8", options=["keep", "dequantize"], default="keep",
                               tooltip="fp8 files: keep the weights in fp8 with their scales (half the "
                                       "memory) or expand them to bf16."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights in memory (default: ComfyUI decides)."),
                _deepcache_input(),
            ],
            outputs=[io.Model.Output("model", display_name="model",
                                     tooltip="HunyuanCustom MODEL for Ref2V (Local), KSampler or the mode "
                                             "nodes.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        # At /prompt, when Run is pressed: core 0.3.64 does not check a V3 combo's value against its
        # options (0.33.0 does), so a missing file would only fail at execution. Naming ckpt_name
        # here makes core leave this input to this check on every version: one clear error.
        if ckpt_name in checkpoint_names():
            return True
        return (f"'{ckpt_name}' is not in ComfyUI/models/{FOLDER}/ (or another folder set for "
                f"{FOLDER}); download it there, see the pack's README 'Model files and where they "
                "go', or pick a file you have")

    @classmethod
    def execute(cls, ckpt_name, fp8, weight_dtype, deepcache=True) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, ckpt_name)
        patcher, _ = load_model(path, fp8=fp8, weight_dtype=weight_dtype)
        return io.NodeOutput(released.apply_released(patcher, deepcache=deepcache))


class ReleasedRecipe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomReleasedRecipe",
            display_name="Released Recipe (Local)",
            category="HunyuanCustom",
            description=("Makes any HunyuanVideo MODEL (e.g. from core's Load Diffusion Model) compute what "
                         "the released HunyuanCustom transformer computes, under core's samplers: batches of "
                         "any size with a reference latent, the released text masks, DeepCache at 30 steps, "
                         "the released sigmas for the simple scheduler, and the flow shift. Load Model "
                         "(Local) already does this; use this node to change its switches."),
            inputs=[
                io.Model.Input("model", tooltip="A HunyuanVideo / HunyuanCustom MODEL."),
                *recipe_inputs(),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="The MODEL with the released recipe.")],
        )

    @classmethod
    def execute(cls, model, deepcache=True, flow_shift=released.RELEASED_SHIFT,
                released_schedule=True) -> io.NodeOutput:
        if not released.is_hunyuan_video(model):
            raise ValidationError("model", "must be a HunyuanVideo / HunyuanCustom MODEL")
        shift = flow_shift if flow_shift > 0 else None
        return io.NodeOutput(released.apply_released(model, deepcache=deepcache, shift=shift,
                                                     released_schedule=released_schedule))


def _param(name: str):
    return REF2V_720P.param(name)


def _size(size: str, width: int, height: int) -> tuple[int, int]:
    w, h = parse_size(size)
    if width or height:
        if not (width and height):
            raise ValidationError("width", "set both width and height, or neither (0 uses size)")
        w, h = width, height
    return w, h


def _latent_size(latent, width: int, height: int) -> tuple[int, int]:
    """(width, height) in pixels of a video LATENT, which then sets the size."""
    if width or height:
        raise ValidationError("width", "a latent input sets the size; leave width and height at 0")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 5:
        raise ValidationError("latent", "must be a video LATENT [batch, 16, frames, height, width]")
    return samples.shape[-1] * 8, samples.shape[-2] * 8


def _reference_inputs() -> list:
    """The inputs shared by Conditioning (Local) and Ref2V (Local), after their required ones."""
    return [
        io.Clip.Input("clip", optional=True,
                      tooltip="HunyuanVideo text encoders (clip_l + llava_llama3), for the text-image "
                              "fusion."),
        io.ClipVision.Input("clip_vision", optional=True,
                            tooltip="LLaVA vision encoder (llava_llama3_vision.safetensors)."),
        io.Conditioning.Input("positive", optional=True,
                              tooltip="Ready prompt conditioning; replaces clip + clip_vision for the "
                                      "prompt. The reference latent is attached to it."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Ready negative conditioning; replaces the encoded negative prompt."),
        io.String.Input("subject", default=DEFAULT_NAME, optional=True,
                        tooltip="What the reference shows (released default: object); the prompt gets "
                                "\"The <subject> looks like <image>\"."),
        io.Int.Input("width", default=0, min=0, max=4096, step=16, optional=True,
                     tooltip="Custom width (multiple of 16); 0 uses size."),
        io.Int.Input("height", default=0, min=0, max=4096, step=16, optional=True,
                     tooltip="Custom height (multiple of 16); 0 uses size."),
        io.Int.Input("image_index", default=-1, min=-1, max=4095, optional=True,
                     tooltip="Which image of a batch to use; -1 accepts a single image only."),
    ]


def _conditioning(vae, image, prompt, negative_prompt, size, width, height, clip, clip_vision, positive,
                  negative, subject, image_index, check_prompt=True):
    """All checks, then (positive, negative, width, height) as the release builds them."""
    negative_prompt = check_value(_param("negative_prompt"), negative_prompt)
    if positive is None and check_prompt:
        prompt = check_value(_param("prompt"), prompt)
    ref_image = select_image(image, image_index)
    w, h = _size(size, width, height)
    local.check_sources(clip, clip_vision, positive, negative)
    subject = (subject or "").strip() or DEFAULT_NAME
    pos, neg = local.ref2v_conditioning(vae, ref_image, w, h, prompt=prompt, negative_prompt=negative_prompt,
                                        subject=subject, clip=clip, clip_vision=clip_vision,
                                        positive=positive, negative=negative)
    return pos, neg, w, h


class LocalConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomConditioning",
            display_name="Conditioning (Local)",
            category="HunyuanCustom",
            description=("What the released pipeline feeds the transformer, for core's KSampler: the prompt "
                         "and the negative prompt through the text-image fusion (CLIP + CLIP_VISION) or "
                         "ready CONDITIONING, the reference image's latent on both branches, the negative's "
                         "image features masked as the release masks them, and an empty video LATENT. "
                         "Recipe: euler, simple, 30 steps, cfg 7.5 (the MODEL from Load Model (Local) "
                         "brings the rest)."),
            inputs=[
                io.Vae.Input("vae", tooltip="HunyuanVideo VAE (hunyuan_video_vae_bf16.safetensors)."),
                io.Image.Input("image", tooltip="Reference image of the subject."),
                widget(_param("prompt")),
                widget(_param("negative_prompt"), default=OFFICIAL_NEGATIVE_PROMPT),
                widget(_param("size"), choices=ALL_SIZES),
                io.Int.Input("length", default=129, min=1, max=257, step=4,
                             tooltip="Number of frames, 4k+1 (released: 129)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Videos sampled at once (each with its own noise)."),
                *_reference_inputs(),
                io.Latent.Input("latent", optional=True,
                                tooltip="The LATENT of Audio-Driven / Video-Driven (Local): its size, length "
                                        "and batch replace size, length and batch_size, and it is passed "
                                        "on as this node's latent."),
            ],
            # (output ids differ from the optional inputs of the same names, as ComfyUI requires)
            outputs=[io.Conditioning.Output("positive_out", display_name="positive",
                                            tooltip="Prompt branch, with the reference latent."),
                     io.Conditioning.Output("negative_out", display_name="negative",
                                            tooltip="Negative branch, with the same reference latent."),
                     io.Latent.Output("latent_out", display_name="latent",
                                      tooltip="Empty video latent of the chosen size and length, or the "
                                              "latent input.")],
        )

    @classmethod
    def execute(cls, vae, image, prompt, negative_prompt, size, length, batch_size, clip=None,
                clip_vision=None, positive=None, negative=None, subject=DEFAULT_NAME, width=0, height=0,
                image_index=-1, latent=None) -> io.NodeOutput:
        if latent is not None:
            width, height = _latent_size(latent, width, height)
        else:
            cond.check_frames(length)
        pos, neg, w, h = _conditioning(vae, image, prompt, negative_prompt, size, width, height, clip,
                                       clip_vision, positive, negative, subject, image_index)
        return io.NodeOutput(pos, neg, latent if latent is not None else cond.empty_latent(w, h, length,
                                                                                          batch_size))


class LocalRef2V(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        shift = _param("flow_shift")
        return io.Schema(
            node_id="HunyuanCustomLocalRef2V",
            display_name="Ref2V (Local)",
            category="HunyuanCustom",
            description=("Subject-consistent video from a reference image and a prompt, generated on this "
                         "machine with the released recipe, in one node: the conditioning of Conditioning "
                         "(Local), then core's own sampler (the KSampler path: every patch, step cache, LoRA "
                         "and guidance tweak on the MODEL applies, with latent previews), then a tiled VAE "
                         "decode."),
            inputs=[
                io.Model.Input("model", tooltip="HunyuanCustom MODEL (Load Model (Local), or any "
                                                "HunyuanVideo MODEL: the released recipe is added when "
                                                "missing)."),
                io.Vae.Input("vae", tooltip="HunyuanVideo VAE (hunyuan_video_vae_bf16.safetensors)."),
                io.Image.Input("image", tooltip="Reference image of the subject."),
                widget(_param("prompt")),
                widget(_param("negative_prompt"), default=OFFICIAL_NEGATIVE_PROMPT),
                widget(_param("size"), choices=ALL_SIZES),
                widget(_param("guidance_scale")),
                widget(shift, tooltip=f"{shift.description} Allowed: {shift.allowed()}. This node's value "
                                      "wins over a ModelSamplingSD3 upstream."),
                widget(_param("seed")),
                io.Int.Input("steps", default=30, min=1, max=200, tooltip="Sampling steps (released: 30)."),
                io.Int.Input("num_frames", default=129, min=1, max=257, step=4,
                             tooltip="Number of frames, 4k+1 (released: 129); ignored with a latent input."),
                io.Float.Input("frame_rate", default=25.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frame rate of the output video (released: 25)."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS),
                               default=local.RELEASED_SAMPLER, tooltip="Core's sampler (released: euler)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS),
                               default=local.RELEASED_SCHEDULER,
                               tooltip="Core's scheduler; simple gives the released sigmas on this MODEL."),
                *_reference_inputs(),
                io.Latent.Input("latent", optional=True,
                                tooltip="Start from this latent (a second pass, or video to video); its size "
                                        "and length replace size and num_frames."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="With a latent input: how much of it to redraw (1 = all)."),
            ],
            outputs=[io.Video.Output("video", display_name="video", tooltip="The video (core VIDEO)."),
                     io.Image.Output("frames", display_name="frames", tooltip="Decoded frames (IMAGE)."),
                     io.Float.Output("fps", display_name="fps", tooltip="Frame rate of the video."),
                     io.Latent.Output("latent_out", display_name="latent",
                                      tooltip="The sampled latent, before decoding.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )
    # (inputs num_frames / frame_rate / latent: ComfyUI ids must differ from the outputs')

    @classmethod
    def fingerprint_inputs(cls, seed=-1, **kwargs):
        # seed -1 draws a new seed each run: never reuse a cached result (a fresh NaN never equals)
        return float("nan") if seed == -1 else seed

    @classmethod
    def execute(cls, model, vae, image, prompt, negative_prompt, size, guidance_scale, flow_shift, seed,
                steps, num_frames, frame_rate, sampler_name=local.RELEASED_SAMPLER,
                scheduler=local.RELEASED_SCHEDULER, clip=None, clip_vision=None, positive=None, negative=None,
                subject=DEFAULT_NAME, width=0, height=0, image_index=-1, latent=None,
                denoise=1.0) -> io.NodeOutput:
        # all checks before any model work; the numbers against the same table as the cloud node
        # (ComfyUI's own range check lets NaN through)
        guidance_scale = check_value(_param("guidance_scale"), guidance_scale)
        flow_shift = check_value(_param("flow_shift"), flow_shift)
        seed = check_value(_param("seed"), seed)
        fps = local.fps_ok(frame_rate)
        if not released.is_hunyuan_video(model):
            raise ValidationError("model", "must be a HunyuanVideo / HunyuanCustom MODEL")
        if latent is None:
            cond.check_frames(num_frames, "num_frames")
        if not 0.0 < denoise <= 1.0:
            raise ValidationError("denoise", f"must be in (0, 1], got {denoise}")
        if latent is not None:
            width, height = _latent_size(latent, width, height)
        pos, neg, w, h = _conditioning(vae, image, prompt, negative_prompt, size, width, height, clip,
                                       clip_vision, positive, negative, subject, image_index)
        start = latent if latent is not None else cond.empty_latent(w, h, num_frames)

        if released.released_forward(model) is None:  # a MODEL from core's loader
            model = released.apply_released(model)
        model = released.with_flow_shift(model, flow_shift)
        used_seed = local.resolve_seed(seed)
        started = time.monotonic()
        out = local.sample(model, pos, neg, start, seed=used_seed, steps=steps, cfg=guidance_scale,
                           sampler_name=sampler_name, scheduler=scheduler,
                           denoise=denoise if latent is not None else 1.0)
        sampling_s = time.monotonic() - started
        images = local.decode(vae, out["samples"])
        video = InputImpl.VideoFromComponents(
            Types.VideoComponents(images=images, frame_rate=Fraction(fps).limit_denominator(1001)))
        # Played on the node like the cloud node's result; the info line names the seed used.
        preview = preview_video(video, f"{SUBFOLDER}/local_ref2v")
        info = {"backend": "local", "seed": used_seed, "steps": steps, "sampling_s": round(sampling_s, 2),
                "frames": int(images.shape[0]), "fps": float(fps), "sampler": sampler_name,
                "scheduler": scheduler}
        return io.NodeOutput(video, images, float(fps), out,
                             ui={**preview.as_dict(), "hunyuancustom": [info]})


NODES = [LocalModelLoader, ReleasedRecipe, LocalConditioning, LocalRef2V]
