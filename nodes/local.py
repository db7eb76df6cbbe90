"""Local ref2v nodes: HunyuanCustom on the user's own GPU through ComfyUI core's model management."""

from __future__ import annotations

import time
from fractions import Fraction

import comfy.utils
import folder_paths
from comfy_api.latest import InputImpl, Types, io

from ..hunyuancustom.errors import ValidationError
from ..hunyuancustom.local import reference
from ..hunyuancustom.local import sampler as local
from ..hunyuancustom.local.comfy_model import WEIGHT_DTYPES, load_model
from ..hunyuancustom.local.prompt import DEFAULT_NAME, NEGATIVE_NAME
from ..hunyuancustom.params import ALL_SIZES, OFFICIAL_NEGATIVE_PROMPT, REF2V_720P, check_value, parse_size
from ..hunyuancustom.video import select_image
from .files import SUBFOLDER, preview_video
from .widgets import widget

FOLDER = "diffusion_models"


def checkpoint_names() -> list[str]:
    # the released fp8 scales file sits next to its weights; it is not a model by itself
    return [n for n in folder_paths.get_filename_list(FOLDER) if not n.endswith("_map.pt")]


class LocalModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomLocalModelLoader",
            display_name="HunyuanCustom Model Loader (Local)",
            category="HunyuanCustom",
            description=("Loads the HunyuanCustom transformer from models/diffusion_models: the released "
                         "mp_rank_00_model_states.pt (bf16), its _fp8.pt with the _fp8_map.pt next to it, "
                         "an fp8-scaled or plain .safetensors. Every key is checked."),
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_names(),
                               tooltip="File in models/diffusion_models."),
                io.Combo.Input("fp8", options=["keep", "dequantize"], default="keep",
                               tooltip="fp8 files: keep the weights in fp8 with their scales (half the "
                                       "memory) or expand them to bf16."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights in memory (default: ComfyUI decides)."),
            ],
            outputs=[io.Model.Output("model", display_name="model")],
        )

    @classmethod
    def execute(cls, ckpt_name, fp8, weight_dtype) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, ckpt_name)
        patcher, _ = load_model(path, fp8=fp8, weight_dtype=weight_dtype)
        return io.NodeOutput(patcher)


def _param(name: str):
    return REF2V_720P.param(name)


class LocalRef2V(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanCustomLocalRef2V",
            display_name="HunyuanCustom Ref2V (Local)",
            category="HunyuanCustom",
            description=("Subject-consistent video from a reference image and a prompt, generated on this "
                         "machine with the released recipe (reference latent, white negative, true CFG, "
                         "shifted flow schedule, Euler). Needs the HunyuanCustom MODEL, the HunyuanVideo "
                         "VAE and either CLIP + CLIP_VISION (text-image fusion) or ready CONDITIONING."),
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae", tooltip="HunyuanVideo VAE (hunyuan_video_vae_bf16.safetensors)."),
                io.Image.Input("image", tooltip="Reference image of the subject."),
                widget(_param("prompt")),
                widget(_param("negative_prompt"), default=OFFICIAL_NEGATIVE_PROMPT),
                widget(_param("size"), choices=ALL_SIZES),
                widget(_param("guidance_scale")),
                widget(_param("flow_shift")),
                widget(_param("seed")),
                io.Int.Input("steps", default=30, min=1, max=200, tooltip="Sampling steps (released: 30)."),
                io.Int.Input("num_frames", default=129, min=1, max=257, step=4,
                             tooltip="Number of frames, 4k+1 (released: 129)."),
                io.Float.Input("frame_rate", default=25.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frame rate of the output video (released: 25)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="HunyuanVideo text encoders (clip_l + llava_llama3), for the "
                                      "text-image fusion."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="LLaVA vision encoder (llava_llama3_vision.safetensors)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Ready prompt conditioning; replaces clip + clip_vision."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Ready negative conditioning; replaces the encoded "
                                              "negative prompt."),
                io.String.Input("subject", default=DEFAULT_NAME, optional=True,
                                tooltip="What the reference shows (released default: object); the prompt "
                                        "gets \"The <subject> looks like <image>\"."),
                io.Int.Input("width", default=0, min=0, max=4096, step=16, optional=True,
                             tooltip="Custom width (multiple of 16); 0 uses size."),
                io.Int.Input("height", default=0, min=0, max=4096, step=16, optional=True,
                             tooltip="Custom height (multiple of 16); 0 uses size."),
                io.Int.Input("image_index", default=-1, min=-1, max=4095, optional=True,
                             tooltip="Which image of a batch to use; -1 accepts a single image only."),
            ],
            outputs=[io.Video.Output("video", display_name="video"),
                     io.Image.Output("frames", display_name="frames"),
                     io.Float.Output("fps", display_name="fps")],
            hidden=[io.Hidden.unique_id],
        )
    # (inputs num_frames / frame_rate: ComfyUI ids must differ from the outputs frames / fps)

    @classmethod
    def fingerprint_inputs(cls, seed=-1, **kwargs):
        # seed -1 draws a new seed each run: never reuse a cached result (a fresh NaN never equals)
        return float("nan") if seed == -1 else seed

    @classmethod
    def execute(cls, model, vae, image, prompt, negative_prompt, size, guidance_scale, flow_shift, seed,
                steps, num_frames, frame_rate, clip=None, clip_vision=None, positive=None, negative=None,
                subject=DEFAULT_NAME, width=0, height=0, image_index=-1) -> io.NodeOutput:
        # all checks before any model work; the numbers against the same table as the cloud node
        # (ComfyUI's own range check lets NaN through)
        guidance_scale = check_value(_param("guidance_scale"), guidance_scale)
        flow_shift = check_value(_param("flow_shift"), flow_shift)
        seed = check_value(_param("seed"), seed)
        negative_prompt = check_value(_param("negative_prompt"), negative_prompt)
        if positive is None:  # the prompt is encoded only when no ready conditioning is given
            prompt = check_value(_param("prompt"), prompt)
        ref_image = select_image(image, image_index)
        w, h = parse_size(size)
        if width or height:
            if not (width and height):
                raise ValidationError("width", "set both width and height, or neither (0 uses size)")
            w, h = width, height
        shape = local.latent_shape(w, h, num_frames)
        fps = local.fps_ok(frame_rate)
        if positive is None and (clip is None or clip_vision is None):
            raise ValidationError("positive", "connect clip and clip_vision (text-image fusion), or a "
                                              "positive CONDITIONING")
        can_encode = clip is not None and clip_vision is not None
        if negative is None and not can_encode and guidance_scale != 1.0:
            raise ValidationError("negative", "connect clip and clip_vision so the negative prompt can be "
                                              "encoded, or a negative CONDITIONING")
        for field, given in (("positive", positive), ("negative", negative)):
            if given is not None:
                local.from_conditioning(given, field)
        subject = subject.strip() or DEFAULT_NAME

        llava = reference.llava_image(ref_image)
        if positive is None:
            positive = local.encode_text_image(clip, clip_vision, prompt, llava, subject)
        if negative is None and can_encode:
            negative = local.encode_text_image(clip, clip_vision, negative_prompt,
                                               reference.white_like(llava), NEGATIVE_NAME)
        ref_latent, white_latent = local.encode_reference(vae, ref_image, w, h)
        pos = local.Branch(*_parts(positive, "positive", ref_latent))
        neg = local.Branch(*_parts(negative, "negative", white_latent)) if negative is not None else None

        bar = comfy.utils.ProgressBar(steps, node_id=cls.hidden.unique_id)
        used_seed = local.resolve_seed(seed)
        started = time.monotonic()
        latent = local.sample(model, pos, neg, shape, steps=steps, guidance_scale=guidance_scale,
                              flow_shift=flow_shift, seed=used_seed,
                              on_step=lambda i, n: bar.update_absolute(i, n))
        sampling_s = time.monotonic() - started
        images = local.decode(vae, latent)
        video = InputImpl.VideoFromComponents(
            Types.VideoComponents(images=images, frame_rate=Fraction(fps).limit_denominator(1001)))
        # Played on the node like the cloud node's result; the info line names the seed used.
        preview = preview_video(video, f"{SUBFOLDER}/local_ref2v")
        info = {"backend": "local", "seed": used_seed, "steps": steps, "sampling_s": round(sampling_s, 2),
                "frames": int(images.shape[0]), "fps": float(fps)}
        return io.NodeOutput(video, images, float(fps), ui={**preview.as_dict(), "hunyuancustom": [info]})


def _parts(conditioning, field, ref_latent):
    context, pooled, mask = local.from_conditioning(conditioning, field)
    return context, pooled, ref_latent, mask


NODES = [LocalModelLoader, LocalRef2V]
