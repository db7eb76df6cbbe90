"""The mode nodes inside a real ComfyUI (COMFYUI_PATH).

Virtual try-on: LoadImage x2 -> Compose Subjects -> Ref2V (Cloud 720p, against the
loopback API) -> SaveVideo; the image that reaches the provider is the composed one.

Audio-driven and video-driven: core's own loaders, sampler, VAE decode and Create Video around the
mode nodes, on tiny random-weight models built here (a 12-double-block HunyuanVideo of width 128
with the audio / editing modules in the released key layout, core's HunyuanVideo VAE, a CLIP-L text
encoder, a tiny whisper); the saved MP4 is read back: frame count, fps, audio in sync. Through the
pack's own path too: Load Model (Local) -> mode node -> Conditioning (Local) (the mode's LATENT) ->
KSampler, and -> Ref2V (Local) with the mode's LATENT; KSampler given another LATENT is refused.
The mode example workflows load with no missing nodes or widgets.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_harness import (
    ComfyServer,
    comfyui_path,
    execution_error,
    import_comfy,
    requires_comfyui,
    skip_reason,
)
from hunyuancustom.modes.audio import Waveform
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.mux import stream_durations, write_video, write_wav
from hunyuancustom.video import decode_frames
from workflow_check import check_ui_workflow

pytestmark = requires_comfyui

SECRET = "sk-modes-e2e-5c1d"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
MODE_WORKFLOWS = ("HunyuanCustom Virtual Try-On (Cloud).json", "HunyuanCustom Singing Avatar (Local).json",
                  "HunyuanCustom Subject Replace (Local).json")
WIDTH = 128
AUDIO_CKPT, EDITING_CKPT = "hc_tiny_audio.safetensors", "hc_tiny_editing.safetensors"
AUDIO_FP8, EDITING_PT = "hc_tiny_audio_fp8.pt", "hc_tiny_editing.pt"
VAE_FILE, CLIP_FILE = "hc_tiny_vae.safetensors", "hc_tiny_clip_l.safetensors"
TONE, SOURCE, MASK, BAD_MASK = "hc_e2e_tone.wav", "hc_e2e_source.mp4", "hc_e2e_mask.png", "hc_e2e_mask64.png"
# Model files the example workflows name (the released checkpoints, HunyuanVideo's text encoders
# and VAE): empty files, so the workflows' file widgets find their values when loading.
PLACEHOLDERS = ("diffusion_models/hunyuancustom_audio_720P/mp_rank_00_model_states_fp8.pt",
                "diffusion_models/hunyuancustom_editing_720P/mp_rank_00_model_states_fp8.pt",
                "text_encoders/clip_l.safetensors", "text_encoders/llava_llama3_fp8_scaled.safetensors",
                "clip_vision/llava_llama3_vision.safetensors", "vae/hunyuan_video_vae_bf16.safetensors")


@pytest.fixture(scope="module")
def api():
    with FakeWaveSpeed(Scenario(api_key=SECRET)) as server:
        yield server


class ModesServer(ComfyServer):
    """A ComfyUI with a second extra-model-paths file: the tiny models of these tests."""

    def __init__(self, base_dir, env_extra, models_config: Path):
        super().__init__(base_dir, env_extra)
        self.models_config = models_config

    def command(self):
        return super().command() + ["--extra-model-paths-config", str(self.models_config)]


def build_models(root: Path) -> Path:
    """The tiny models under root/models and a paths file naming them; returns the paths file."""
    from modes_models import (
        audio_state_dict,
        backbone_state_dict,
        clip_l_state_dict,
        editing_state_dict,
        hunyuan_vae_state_dict,
        whisper_folder,
    )
    from safetensors.torch import save_file

    core = import_comfy()
    models = root / "models"
    for sub in ("diffusion_models", "vae", "text_encoders", "clip_vision"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    backbone = backbone_state_dict(core, width=WIDTH, context=768)
    save_file({**backbone, **audio_state_dict(width=WIDTH, dtype=torch.float32)},
              str(models / "diffusion_models" / AUDIO_CKPT))
    save_file({**backbone, **editing_state_dict(width=WIDTH, dtype=torch.float32)},
              str(models / "diffusion_models" / EDITING_CKPT))
    # The released fp8 layout (+ _fp8_map.pt scales), extras in bf16 as released: read by the
    # local model loader, which hands the audio modules over on its MODEL.
    from local_models import backbone_state_dict as released_backbone
    from local_models import write_released_fp8, write_released_pt

    released = released_backbone(double=12, single=1, hidden=WIDTH, text_dim=768)
    diffusion = models / "diffusion_models"
    write_released_fp8(diffusion / AUDIO_FP8, {**released, **audio_state_dict(width=WIDTH)})
    write_released_pt(diffusion / EDITING_PT, {**released, **editing_state_dict(width=WIDTH)})
    save_file(hunyuan_vae_state_dict(core), str(models / "vae" / VAE_FILE))
    save_file(clip_l_state_dict(), str(models / "text_encoders" / CLIP_FILE))
    whisper_folder(root)  # root/models/audio_encoders/whisper-tiny
    # The example workflows name the released files: placeholders let them load (not run).
    for name in PLACEHOLDERS:
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).touch()
    config = root / "models.yaml"
    config.write_text("hunyuancustom_modes_tests:\n"
                      f"    base_path: {json.dumps(str(models))}\n"
                      "    diffusion_models: diffusion_models\n    vae: vae\n"
                      "    text_encoders: text_encoders\n    clip_vision: clip_vision\n"
                      "    audio_encoders: audio_encoders\n")
    return config


def write_inputs(input_dir: Path) -> None:
    """Inputs of the e2e graphs: a 0.4 s stereo tone at 22.05 kHz, a 9-frame 64x48 source clip at
    24 fps with a 1 s tone track, its mask, and a mask of the wrong size."""
    rate = 22050
    t = torch.arange(int(0.4 * rate)) / rate
    write_wav(input_dir / TONE, Waveform((0.3 * torch.sin(2 * math.pi * 440 * t)).repeat(2, 1), rate))
    frames = torch.rand(9, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    t2 = torch.arange(44100) / 44100
    track = Waveform((0.3 * torch.sin(2 * math.pi * 660 * t2))[None], 44100)
    write_video(input_dir / SOURCE, frames, 24, track)
    mask = np.zeros((48, 64, 3), np.uint8)
    mask[12:36, 16:48] = 255
    Image.fromarray(mask).save(input_dir / MASK)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(input_dir / BAD_MASK)


@pytest.fixture(scope="module")
def comfy(api, tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    base = tmp_path_factory.mktemp("comfy-modes")
    config = build_models(base)
    server = ModesServer(base, {"WAVESPEED_API_BASE": api.base_url}, config)
    try:
        server.start()
        (server.data_dir / "api_key").write_text(SECRET)
        # As the README tells users: the sample inputs go into ComfyUI/input.
        for asset in (p for p in EXAMPLES.iterdir() if p.is_file()):
            if asset.suffix != ".json":
                shutil.copy(asset, server.input_dir / asset.name)
        write_inputs(server.input_dir)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base / "models", ignore_errors=True)  # ~750 MB of random weights


@pytest.fixture(autouse=True)
def fresh_api(api):
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=1))
    api.reset()


def compose_node(**widgets):
    node = {"image_1": ["1", 0], "image_2": ["2", 0], "layout": "row", "width": 1280, "height": 720,
            "padding": 16, "invert_masks": False}
    node.update(widgets)
    return node


def tryon_graph(**compose_widgets):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_tryon_person.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_tryon_garment.png"}},
        "3": {"class_type": "HunyuanCustomComposeSubjects", "inputs": compose_node(**compose_widgets)},
        "4": {"class_type": "HunyuanCustomCloudRef2V720p", "inputs": {
            "image": ["3", 0], "prompt": "The person wears the red T-shirt.", "negative_prompt": "",
            "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0, "seed": 5,
            "enable_safety_checker": True}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "video/tryon",
                                                   "format": "auto", "codec": "auto"}},
    }


def test_compose_node_schema(comfy):
    node = comfy.object_info("HunyuanCustomComposeSubjects")["HunyuanCustomComposeSubjects"]
    assert node["category"] == "HunyuanCustom" and node["output"] == ["IMAGE"]
    req, opt = node["input"]["required"], node["input"]["optional"]
    assert list(req) == ["image_1", "layout", "width", "height", "padding", "invert_masks"]
    assert set(opt) == {"image_2", "image_3", "image_4", "mask_1", "mask_2", "mask_3", "mask_4"}
    assert req["width"][1]["step"] == 16 and req["height"][1]["step"] == 16


def test_mode_example_workflows_load_without_missing_nodes_or_widgets(comfy):
    info = comfy.object_info()
    for name in MODE_WORKFLOWS:
        problems = check_ui_workflow(json.loads((EXAMPLES / name).read_text()), info)
        assert not problems, f"{name}: {problems}"


def test_virtual_tryon_sends_the_composed_image_to_the_cloud_node(comfy, api):
    entry = comfy.wait(comfy.queue(tryon_graph()), timeout=120)
    saved = entry["outputs"]["5"]["images"][0]
    assert (comfy.output_dir / saved["subfolder"] / saved["filename"]).stat().st_size > 0
    body = next(r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)
    with urllib.request.urlopen(body["image"], timeout=10) as resp:  # the uploaded reference
        ref = np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB")).astype(int)
    assert ref.shape == (720, 1280, 3)
    # The person (grey top, blue trousers) on the left half, the red garment on the right half.
    red = (ref[..., 0] > 150) & (ref[..., 1] < 80) & (ref[..., 2] < 80)
    navy = (abs(ref[..., 0] - 50) < 20) & (abs(ref[..., 1] - 60) < 20) & (abs(ref[..., 2] - 110) < 20)
    assert red[:, 640:].sum() > 10_000 and red[:, :640].sum() < 200  # (the smile is red too)
    assert navy[:, :640].sum() > 10_000 and navy[:, 640:].sum() == 0
    assert (ref[:16] >= 250).all()  # white margin on top


def test_compose_error_reaches_the_user_before_any_request(comfy, api):
    entry = comfy.wait(comfy.queue(tryon_graph(mask_2=["2", 1])), raise_on_error=False)
    err = execution_error(entry)
    assert err and err["node_type"] == "HunyuanCustomComposeSubjects"
    assert err["exception_message"].startswith("mask_2:") and "64x64" in err["exception_message"]
    assert api.requests == []


# --- local modes, end to end on tiny models ------------------------------------------------------


def conditioning_nodes(width, height, length):
    """Prompt + reference image -> positive (with the reference latent, core's "custom" guidance)."""
    return {
        "20": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion"}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["20", 0], "text": "The person sings."}},
        "22": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["20", 0], "text": "blurry"}},
        "23": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
        "24": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_reference.png"}},
        "25": {"class_type": "HunyuanImageToVideo", "inputs": {
            "positive": ["21", 0], "vae": ["23", 0], "width": width, "height": height, "length": length,
            "batch_size": 1, "guidance_type": "custom", "start_image": ["24", 0]}},
    }


def sampling_nodes(mode_node, shift, prefix):
    """Core's shift + KSampler + decode + Create Video (images, the mode's audio and fps) + save."""
    return {
        "30": {"class_type": "ModelSamplingSD3", "inputs": {"model": [mode_node, 0], "shift": shift}},
        "31": {"class_type": "KSampler", "inputs": {
            "model": ["30", 0], "seed": 3, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["25", 0], "negative": ["22", 0],
            "latent_image": [mode_node, 1], "denoise": 1.0}},
        "32": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["23", 0]}},
        "33": {"class_type": "CreateVideo", "inputs": {"images": ["32", 0], "fps": [mode_node, 3],
                                                       "audio": [mode_node, 2]}},
        "34": {"class_type": "SaveVideo", "inputs": {"video": ["33", 0], "filename_prefix": prefix,
                                                    "format": "auto", "codec": "auto"}},
    }


def audio_graph(ckpt=AUDIO_CKPT, frames=0):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": AUDIO_CKPT, "weight_dtype": "default"}},
        "2": {"class_type": "HunyuanCustomLoadModeModules", "inputs": {"ckpt_name": ckpt}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": TONE}},
        "4": {"class_type": "HunyuanCustomAudioDriven", "inputs": {
            "model": ["1", 0], "mode_modules": ["2", 0], "audio": ["3", 0], "whisper_model": "whisper-tiny",
            "audio_strength": 0.8, "frames": frames, "width": 64, "height": 64}},
        **conditioning_nodes(64, 64, 9),
        **sampling_nodes("4", 13.0, "video/hc_audio"),
    }


def video_graph(mask=MASK):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": EDITING_CKPT, "weight_dtype": "default"}},
        "2": {"class_type": "HunyuanCustomLoadModeModules", "inputs": {"ckpt_name": EDITING_CKPT}},
        "3": {"class_type": "LoadVideo", "inputs": {"file": SOURCE}},
        "5": {"class_type": "LoadImageMask", "inputs": {"image": mask, "channel": "red"}},
        "4": {"class_type": "HunyuanCustomVideoDriven", "inputs": {
            "model": ["1", 0], "mode_modules": ["2", 0], "vae": ["23", 0], "mask": ["5", 0], "expand": 5,
            "max_frames": 0, "flow_shift": 5.0, "video": ["3", 0]}},
        **conditioning_nodes(64, 48, 9),
        **sampling_nodes("4", 5.0, "video/hc_edit"),
    }


def saved_video(comfy, entry, node="34"):
    saved = entry["outputs"][node]["images"][0]
    return comfy.output_dir / saved["subfolder"] / saved["filename"]


def test_mode_nodes_schema(comfy):
    assert not comfy.pack_import_failed(), comfy.log_tail()
    info = comfy.object_info()
    audio = info["HunyuanCustomAudioDriven"]
    assert audio["output"] == ["MODEL", "LATENT", "AUDIO", "FLOAT"]
    assert audio["output_name"] == ["model", "latent", "audio", "fps"]
    req = audio["input"]["required"]
    assert req["audio_strength"][1]["default"] == 0.8 and req["frames"][1]["default"] == 0
    assert "whisper-tiny" in (req["whisper_model"][1].get("options") or req["whisper_model"][0])
    video = info["HunyuanCustomVideoDriven"]
    assert video["output"] == ["MODEL", "LATENT", "AUDIO", "FLOAT", "IMAGE"]
    assert video["output_name"] == ["model", "latent", "audio", "fps", "masked_frames"]
    req = video["input"]["required"]
    assert req["expand"][1]["default"] == 5
    # The released editing shift, not ref2v's 13: it goes onto the MODEL (steps are KSampler's).
    assert req["flow_shift"][1]["default"] == 5.0 and "steps" not in req
    assert set(video["input"]["optional"]) == {"mode_modules", "video", "frames", "fps", "audio"}
    assert set(audio["input"]["optional"]) == {"mode_modules"}  # or from the local loader's MODEL
    loader = info["HunyuanCustomLoadModeModules"]["input"]["required"]["ckpt_name"]
    assert AUDIO_CKPT in (loader[1].get("options") or loader[0])


def test_singing_avatar_runs_end_to_end_with_the_audio_in_sync(comfy):
    entry = comfy.wait(comfy.queue(audio_graph()), timeout=600)
    path = saved_video(comfy, entry)
    frames, fps = decode_frames(path)
    # 0.4 s of audio -> 10 frames at 25 fps -> 9 frames (4k+1), 64x64.
    assert frames.shape == (9, 64, 64, 3) and abs(fps - 25) < 0.01
    d = stream_durations(path)
    assert abs(d["video"] - 9 / 25) < 1e-3 and abs(d["audio"] - d["video"]) < 1 / 25


def test_subject_replacement_runs_end_to_end_keeping_fps_and_audio(comfy):
    entry = comfy.wait(comfy.queue(video_graph()), timeout=600)
    path = saved_video(comfy, entry)
    frames, fps = decode_frames(path)
    assert frames.shape == (9, 48, 64, 3) and abs(fps - 24) < 0.01  # the source's size and fps
    d = stream_durations(path)
    assert abs(d["video"] - 9 / 24) < 1e-3 and abs(d["audio"] - d["video"]) < 1 / 24


@pytest.mark.parametrize(("graph", "node_type", "message"), [
    (lambda: audio_graph(ckpt=EDITING_CKPT), "HunyuanCustomAudioDriven", "mode_modules: hc_tiny_editing"),
    (lambda: audio_graph(frames=8), "HunyuanCustomAudioDriven", "frames: 8 is not allowed"),
    (lambda: video_graph(mask=BAD_MASK), "HunyuanCustomVideoDriven", "mask: is 64x64 but the video is 64x48"),
])
def test_bad_input_stops_before_sampling_with_a_clear_error(comfy, graph, node_type, message):
    entry = comfy.wait(comfy.queue(graph()), raise_on_error=False, timeout=300)
    err = execution_error(entry)
    # Raised by the mode node, which the sampler waits for: nothing was sampled.
    assert err and err["node_type"] == node_type and err["exception_message"].startswith(message)


def local_chain(mode_inputs, mode_type, ckpt, width, height, prefix):
    """Load Model (Local) -> mode node -> Conditioning (Local) (the mode's LATENT) -> KSampler ->
    VAE Decode -> Create Video (the mode's audio and fps) -> Save Video. The prompts arrive as CLIP-L
    CONDITIONING (LLaVA is too big here)."""
    cond = conditioning_nodes(width, height, 9)
    return {
        "1": {"class_type": "HunyuanCustomLocalModelLoader",
              "inputs": {"ckpt_name": ckpt, "fp8": "keep", "weight_dtype": "default", "deepcache": True}},
        "4": {"class_type": mode_type, "inputs": {"model": ["1", 0], **mode_inputs}},
        **{k: cond[k] for k in ("20", "21", "22", "23", "24")},
        "40": {"class_type": "HunyuanCustomConditioning", "inputs": {
            "vae": ["23", 0], "image": ["24", 0], "prompt": "The person sings.", "negative_prompt": "",
            "size": "1280*720", "length": 129, "batch_size": 1, "positive": ["21", 0], "negative": ["22", 0],
            "subject": "person", "width": 0, "height": 0, "image_index": -1, "latent": ["4", 1]}},
        "41": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 5, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["40", 0], "negative": ["40", 1], "latent_image": ["40", 2],
            "denoise": 1.0}},
        "42": {"class_type": "VAEDecode", "inputs": {"samples": ["41", 0], "vae": ["23", 0]}},
        "43": {"class_type": "CreateVideo",
               "inputs": {"images": ["42", 0], "fps": ["4", 3], "audio": ["4", 2]}},
        "44": {"class_type": "SaveVideo", "inputs": {"video": ["43", 0], "filename_prefix": prefix,
                                                    "format": "auto", "codec": "auto"}},
    }


AUDIO_MODE = {"audio": ["3", 0], "whisper_model": "whisper-tiny", "audio_strength": 0.8, "frames": 0,
              "width": 64, "height": 64}
EDIT_MODE = {"vae": ["23", 0], "mask": ["5", 0], "expand": 5, "max_frames": 0, "video": ["3", 0],
             "flow_shift": 5.0}


def audio_local_graph():
    graph = local_chain(AUDIO_MODE, "HunyuanCustomAudioDriven", AUDIO_FP8, 64, 64, "video/hc_local_audio")
    graph["3"] = {"class_type": "LoadAudio", "inputs": {"audio": TONE}}
    return graph


def test_singing_avatar_through_local_loader_conditioning_and_ksampler(comfy):
    """As the example workflow: fp8 released layout, modules carried by the loader's MODEL."""
    entry = comfy.wait(comfy.queue(audio_local_graph()), timeout=600)
    path = saved_video(comfy, entry, "44")
    frames, fps = decode_frames(path)
    assert frames.shape == (9, 64, 64, 3) and abs(fps - 25) < 0.01
    d = stream_durations(path)
    assert abs(d["audio"] - d["video"]) < 1 / 25


def test_singing_avatar_through_ref2v_local_with_the_modes_latent(comfy):
    """The one-node path: Ref2V (Local) samples the mode's MODEL from the mode's LATENT."""
    graph = audio_local_graph()
    for k in ("40", "41", "42"):
        del graph[k]
    graph["40"] = {"class_type": "HunyuanCustomLocalRef2V", "inputs": {
        "model": ["4", 0], "vae": ["23", 0], "image": ["24", 0], "prompt": "The person sings.",
        "negative_prompt": "", "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0, "seed": 5,
        "steps": 2, "num_frames": 129, "frame_rate": ["4", 3], "sampler_name": "euler", "scheduler": "simple",
        "positive": ["21", 0], "negative": ["22", 0], "subject": "person", "width": 0, "height": 0,
        "image_index": -1, "latent": ["4", 1], "denoise": 1.0}}
    graph["43"]["inputs"]["images"] = ["40", 1]
    entry = comfy.wait(comfy.queue(graph), timeout=600)
    path = saved_video(comfy, entry, "44")
    frames, fps = decode_frames(path)
    assert frames.shape == (9, 64, 64, 3) and abs(fps - 25) < 0.01
    d = stream_durations(path)
    assert abs(d["audio"] - d["video"]) < 1 / 25
    assert entry["outputs"]["40"]["hunyuancustom"][0]["frames"] == 9


def test_subject_replacement_through_local_loader_conditioning_and_ksampler(comfy):
    graph = local_chain(EDIT_MODE, "HunyuanCustomVideoDriven", EDITING_PT, 64, 48, "video/hc_local_edit")
    graph["3"] = {"class_type": "LoadVideo", "inputs": {"file": SOURCE}}
    graph["5"] = {"class_type": "LoadImageMask", "inputs": {"image": MASK, "channel": "red"}}
    entry = comfy.wait(comfy.queue(graph), timeout=600)
    path = saved_video(comfy, entry, "44")
    frames, fps = decode_frames(path)
    assert frames.shape == (9, 48, 64, 3) and abs(fps - 24) < 0.01  # the source's size and fps
    d = stream_durations(path)
    assert abs(d["audio"] - d["video"]) < 1 / 24


@pytest.mark.parametrize(("width", "height", "length", "got"), [
    (64, 48, 9, "3 latent frames of 64x48"),  # another size
    (64, 64, 13, "4 latent frames of 64x64"),  # another length
])
def test_ksampler_with_another_latent_than_the_modes_is_refused(comfy, width, height, length, got):
    """A mode prepared for one size and sampled at another would run, silently wrong: refused."""
    graph = audio_local_graph()
    graph["45"] = {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": width, "height": height, "length": length, "batch_size": 1}}
    graph["41"]["inputs"]["latent_image"] = ["45", 0]
    entry = comfy.wait(comfy.queue(graph), raise_on_error=False, timeout=300)
    err = execution_error(entry)
    assert err and err["node_type"] == "KSampler", err
    message = err["exception_message"]
    assert message.startswith(f"latent: the sampler's latent is {got}"), message
    assert "the mode was prepared for 3 (9 frames) of 64x64" in message


def test_a_model_without_mode_modules_is_refused(comfy):
    graph = audio_graph()
    del graph["2"], graph["4"]["inputs"]["mode_modules"]  # core's UNETLoader attaches nothing
    entry = comfy.wait(comfy.queue(graph), raise_on_error=False, timeout=300)
    err = execution_error(entry)
    assert err and err["node_type"] == "HunyuanCustomAudioDriven"
    assert err["exception_message"].startswith("mode_modules: the MODEL carries no audio")
