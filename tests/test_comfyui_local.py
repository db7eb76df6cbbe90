"""Local ref2v inside a real ComfyUI (COMFYUI_PATH), on tiny random-weight checkpoints.

In-process: every checkpoint layout loads into core's HunyuanVideo model with every key mapped; the
fp8 file with its scales gives the same outputs as its dequantised weights; the pack's guided
prediction equals core's own HunyuanVideo forward with `ref_latent` (both branches) to float
tolerance, and the Euler loop equals a hand-written one. End to end: the loader and ref2v nodes run
on the CPU in a ComfyUI server at 64x64, 5 frames, and return frames and a VIDEO; the example
workflow's nodes and widgets match the server's /object_info.
"""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from local_models import (
    TEXT_DIM,
    backbone_state_dict,
    write_released_fp8,
    write_released_pt,
    write_safetensors,
    write_scaled_safetensors,
)

from comfyui_harness import ComfyServer, execution_error, import_comfy, requires_comfyui
from hunyuancustom.local import sampler as local
from hunyuancustom.local.schedule import flow_sigmas
from workflow_check import check_ui_workflow

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "example_workflows" / "hunyuancustom_local_ref2v.json"
SCALE = 0.476986  # HunyuanVideo latent scaling factor


@pytest.fixture(scope="module")
def comfy():
    import_comfy()
    from hunyuancustom.local import comfy_model

    return comfy_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    sd = backbone_state_dict(seed=1, double=2, single=2, dtype=torch.bfloat16)
    return {
        "sd": sd,
        "pt": write_released_pt(d / "mp_rank_00_model_states.pt", sd),
        "fp8": write_released_fp8(d / "mp_rank_00_model_states_fp8.pt", sd)[0],
        "scaled": write_scaled_safetensors(d / "hunyuancustom_fp8_scaled.safetensors", sd)[0],
        "plain": write_safetensors(d / "hunyuancustom_bf16.safetensors", sd),
    }


def _inputs(seed=0, t=2, h=4, w=6, text=7):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(1, 16, t, h, w, generator=g),
        "pos": local.Branch(torch.randn(1, text, TEXT_DIM, generator=g), torch.randn(1, 768, generator=g),
                            torch.randn(1, 16, 1, h, w, generator=g)),
        "neg": local.Branch(torch.randn(1, text, TEXT_DIM, generator=g), torch.randn(1, 768, generator=g),
                            torch.randn(1, 16, 1, h, w, generator=g)),
    }


def _core_velocity(patcher, x, sigma, branch: local.Branch):
    """Core's own forward, called directly: the reference the pack must not drift from."""
    net = patcher.model.diffusion_model
    with torch.no_grad():
        return net(x, sigma * 1000, branch.context, y=branch.pooled, ref_latent=branch.ref_latent * SCALE,
                   transformer_options={}).float()


@pytest.mark.parametrize("layout", ["pt", "fp8", "scaled", "plain"])
def test_every_layout_loads_into_core_with_every_key(comfy, files, layout):
    patcher, ckpt = comfy.load_model(files[layout], fp8="keep")
    net = patcher.model.diffusion_model
    assert type(net).__name__ == "HunyuanVideo"
    assert (len(net.double_blocks), len(net.single_blocks)) == (2, 2)
    assert ckpt.depths == (2, 2, 2)
    assert patcher.get_attachment(comfy.EXTRAS_ATTACHMENT) == {}
    if layout in ("fp8", "scaled"):
        assert net.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn


def test_fp8_with_scales_matches_dequantised_weights(comfy, files):
    inp = _inputs()
    sigma = torch.tensor([0.7])
    kept, _ = comfy.load_model(files["fp8"], fp8="keep")
    deq, _ = comfy.load_model(files["fp8"], fp8="dequantize")
    bf16, _ = comfy.load_model(files["pt"])
    a = _core_velocity(kept, inp["x"], sigma, inp["pos"])
    b = _core_velocity(deq, inp["x"], sigma, inp["pos"])
    c = _core_velocity(bf16, inp["x"], sigma, inp["pos"])
    # kept: weight.to(fp32) * scale; dequantised: stored as bf16(weight) * bf16(scale)
    assert (a - b).norm() / b.norm() < 0.02
    # fp8 quantisation error against the original bf16 weights stays small (core's own loader,
    # which ignores the scales, is off by more than 100%)
    assert (b - c).norm() / c.norm() < 0.1


def test_guided_prediction_equals_core_forward(comfy, files):
    patcher, _ = comfy.load_model(files["plain"])
    inp = _inputs(seed=2)
    sigma = torch.tensor([0.6])
    x = inp["x"]
    with torch.no_grad():
        ours = local.predict(patcher, x, sigma, inp["pos"], inp["neg"], 7.5, {})
    v_pos = _core_velocity(patcher, x, sigma, inp["pos"])
    v_neg = _core_velocity(patcher, x, sigma, inp["neg"])
    expected = x - sigma * (v_neg + 7.5 * (v_pos - v_neg))
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4)
    # the negative branch really sees its own reference latent
    assert not torch.allclose(v_pos, _core_velocity(patcher, x, sigma, local.Branch(
        inp["pos"].context, inp["pos"].pooled, inp["neg"].ref_latent)))


def test_unequal_text_lengths(comfy, files):
    patcher, _ = comfy.load_model(files["plain"])
    inp = _inputs(seed=3)
    short = local.Branch(inp["neg"].context[:, :3], inp["neg"].pooled, inp["neg"].ref_latent)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        ours = local.predict(patcher, inp["x"], sigma, inp["pos"], short, 5.0, {})
    v_pos = _core_velocity(patcher, inp["x"], sigma, inp["pos"])
    v_neg = _core_velocity(patcher, inp["x"], sigma, short)
    assert torch.allclose(ours, inp["x"] - sigma * (v_neg + 5.0 * (v_pos - v_neg)), rtol=1e-4, atol=1e-4)


def test_euler_loop_equals_hand_written_loop(comfy, files):
    patcher, _ = comfy.load_model(files["plain"])
    inp = _inputs(seed=4)
    steps, shift, scale, seed = 3, 13.0, 7.5, 11
    seen = []
    with torch.no_grad():
        out = local.sample(patcher, inp["pos"], inp["neg"], (1, 16, 2, 4, 6), steps=steps,
                           guidance_scale=scale, flow_shift=shift, seed=seed,
                           on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    sigmas = flow_sigmas(steps, shift)
    x = torch.randn((1, 16, 2, 4, 6), generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        s = sigmas[i:i + 1]
        v_pos = _core_velocity(patcher, x, s, inp["pos"])
        v_neg = _core_velocity(patcher, x, s, inp["neg"])
        x = x + (sigmas[i + 1] - s) * (v_neg + scale * (v_pos - v_neg))
    assert torch.allclose(out, x / SCALE, rtol=1e-3, atol=1e-3)


def test_cancel_between_steps(comfy, files):
    import comfy.model_management as mm

    patcher, _ = comfy.load_model(files["plain"])
    inp = _inputs(seed=5)
    calls = []

    def on_step(i, n):
        calls.append(i)
        mm.interrupt_current_processing(True)

    with pytest.raises(mm.InterruptProcessingException):
        local.sample(patcher, inp["pos"], inp["neg"], (1, 16, 2, 4, 6), steps=5, guidance_scale=7.5,
                     flow_shift=13.0, seed=0, on_step=on_step)
    mm.interrupt_current_processing(False)
    assert calls == [1]


def test_frames_must_be_4k_plus_1():
    from hunyuancustom.errors import ValidationError

    with pytest.raises(ValidationError, match="num_frames"):
        local.latent_shape(64, 64, 6)
    assert local.latent_shape(1280, 720, 129) == (1, 16, 33, 90, 160)


# ---- end to end in a ComfyUI server -----------------------------------------------------------

TEST_PACK = textwrap.dedent('''
    import torch

    class HCTestConditioning:
        """Test-only: a random prompt conditioning at the tiny model's text width."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seed": ("INT", {"default": 0}), "width": ("INT", {"default": 32}),
                                 "length": ("INT", {"default": 6})}}
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, seed, width, length):
            g = torch.Generator().manual_seed(seed)
            return ([[torch.randn(1, length, width, generator=g),
                      {"pooled_output": torch.randn(1, 768, generator=g)}]],)

    NODE_CLASS_MAPPINGS = {"HCTestConditioning": HCTestConditioning}
''')


def _random_vae(comfy, path: Path) -> Path:
    """Core's HunyuanVideo VAE architecture (fixed size, ~246 M parameters) with random weights."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0, "conv3d": True, "time_compress": 4}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=16)  # core's ops leave weights uninitialised
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in vae.state_dict().items():
        if v.ndim > 1:
            sd[k] = torch.randn(v.shape, generator=g) * (v[0].numel() ** -0.5)
        else:  # norm scales 1, biases 0: activations stay finite through the whole stack
            sd[k] = torch.ones(v.shape) if k.endswith(".weight") else torch.zeros(v.shape)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def vae_file(comfy, tmp_path_factory):
    return _random_vae(comfy, tmp_path_factory.mktemp("vae") / "hunyuan_video_vae_bf16.safetensors")


def test_reference_and_white_latents_follow_the_recipe(comfy, vae_file):
    import comfy.sd
    import comfy.utils

    from hunyuancustom.local import reference

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_file)))
    image = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(0))
    ref, white = local.encode_reference(vae, image, 64, 48)
    assert ref.shape == white.shape == (1, 16, 1, 6, 8)
    assert torch.isfinite(ref).all() and torch.isfinite(white).all()
    # the reference is the white-padded frame of the video's size; the negative is a white frame
    assert torch.allclose(ref, vae.encode(reference.vae_reference(image, 64, 48)))
    assert torch.allclose(white, vae.encode(torch.ones(1, 48, 64, 3)))
    assert not torch.allclose(ref, white)


@pytest.fixture(scope="module")
def server(comfy, vae_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_local")
    models = base / "models"
    released = models / "diffusion_models" / "hunyuancustom_720P"
    for d in (released, models / "vae", models / "text_encoders", models / "clip_vision"):
        d.mkdir(parents=True)
    sd = backbone_state_dict(seed=7, double=1, single=1)
    write_released_pt(released / "mp_rank_00_model_states.pt", sd)
    write_released_fp8(released / "mp_rank_00_model_states_fp8.pt", sd)
    shutil.copy(vae_file, models / "vae" / vae_file.name)
    # The example workflow's text and vision encoders are only listed (the 8B LLaVA cannot run
    # here): empty placeholders make their names appear in /object_info.
    for name in ("text_encoders/clip_l.safetensors", "text_encoders/llava_llama3_fp8_scaled.safetensors",
                 "clip_vision/llava_llama3_vision.safetensors"):
        (models / name).touch()
    srv = ComfyServer(base)
    pack = srv.custom_nodes_dir / "hc_local_test_nodes"
    pack.mkdir()
    (pack / "__init__.py").write_text(TEST_PACK)
    srv.paths_config.write_text(srv.paths_config.read_text() + (
        f"    diffusion_models: {json.dumps(str(models / 'diffusion_models'))}\n"
        f"    vae: {json.dumps(str(models / 'vae'))}\n"
        f"    text_encoders: {json.dumps(str(models / 'text_encoders'))}\n"
        f"    clip_vision: {json.dumps(str(models / 'clip_vision'))}\n"))
    shutil.copy(REPO / "example_workflows" / "hunyuancustom_reference.png", srv.input_dir)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _graph(ckpt="hunyuancustom_720P/mp_rank_00_model_states_fp8.pt", frames=5, seed=3, steps=2):
    return {
        "1": {"class_type": "HunyuanCustomLocalModelLoader",
              "inputs": {"ckpt_name": ckpt, "fp8": "keep", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "hunyuan_video_vae_bf16.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_reference.png"}},
        "4": {"class_type": "HCTestConditioning", "inputs": {"seed": 1, "width": TEXT_DIM, "length": 6}},
        "5": {"class_type": "HCTestConditioning", "inputs": {"seed": 2, "width": TEXT_DIM, "length": 4}},
        "6": {"class_type": "HunyuanCustomLocalRef2V", "inputs": {
            "model": ["1", 0], "vae": ["2", 0], "image": ["3", 0], "positive": ["4", 0],
            "negative": ["5", 0], "prompt": "A man waves.", "negative_prompt": "",
            "size": "1280*720", "width": 64, "height": 64, "guidance_scale": 7.5, "flow_shift": 13.0,
            "seed": seed, "steps": steps, "num_frames": frames, "frame_rate": 25.0}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "local"}},
        "8": {"class_type": "SaveVideo", "inputs": {"video": ["6", 0], "filename_prefix": "local",
                                                    "format": "auto", "codec": "auto"}},
    }


def test_local_node_runs_and_returns_frames(server):
    entry = server.wait(server.queue(_graph()), timeout=900)
    assert execution_error(entry) is None
    outputs = entry["outputs"]
    assert len(outputs["7"]["images"]) == 5
    from PIL import Image

    first = outputs["7"]["images"][0]
    png = Image.open(io.BytesIO(server.view(first["filename"], first["subfolder"], first["type"])))
    assert png.size == (64, 64)
    videos = outputs["8"].get("images") or outputs["8"].get("videos") or outputs["8"].get("animated")
    assert videos, outputs["8"]
    # The node previews its own result (a temp MP4 that plays) and names the seed it used.
    own = outputs["6"]["images"][0]
    assert own["type"] == "temp" and own["filename"].endswith(".mp4") and outputs["6"]["animated"] == [True]
    preview = server.view(own["filename"], own["subfolder"], own["type"])
    assert preview[4:8] == b"ftyp"  # a complete MP4, not a half-written one
    info = outputs["6"]["hunyuancustom"][0]
    assert info["backend"] == "local" and info["seed"] == 3 and info["frames"] == 5


def test_bad_frames_is_refused_with_the_field_name(server):
    entry = server.wait(server.queue(_graph(frames=6)), timeout=300, raise_on_error=False)
    err = execution_error(entry)
    assert err is not None and "num_frames" in json.dumps(err)


@pytest.mark.parametrize("field, value, message", [
    ("guidance_scale", float("nan"), "guidance_scale: must be a finite number"),
    ("flow_shift", float("nan"), "flow_shift: must be a finite number"),
])
def test_non_finite_numbers_are_refused_before_any_model_work(server, field, value, message):
    # ComfyUI's own min/max check lets NaN through (every comparison with NaN is false).
    graph = _graph()
    graph["6"]["inputs"][field] = value
    entry = server.wait(server.queue(graph), timeout=300, raise_on_error=False)
    err = execution_error(entry)
    assert err is not None and message in json.dumps(err), err


def test_example_workflow_matches_object_info(server):
    assert check_ui_workflow(json.loads(WORKFLOW.read_text()), server.object_info()) == []


def test_missing_prompt_conditioning_is_refused_before_sampling(server):
    graph = _graph()
    for name in ("positive", "negative"):
        del graph["6"]["inputs"][name]
    entry = server.wait(server.queue(graph), timeout=300, raise_on_error=False)
    err = json.dumps(execution_error(entry))
    assert "positive" in err and "clip_vision" in err


def test_shared_widgets_equal_the_cloud_node(server):
    info = server.object_info()
    local_in = info["HunyuanCustomLocalRef2V"]["input"]["required"]
    cloud_in = info["HunyuanCustomCloudRef2V720p"]["input"]["required"]
    for name in ("prompt", "guidance_scale", "flow_shift", "seed"):
        assert local_in[name] == cloud_in[name], name
    # negative prompt: same widget, the model's official negative prompt as the local default
    assert {k: v for k, v in local_in["negative_prompt"][1].items() if k != "default"} == \
        {k: v for k, v in cloud_in["negative_prompt"][1].items() if k != "default"}
    assert local_in["negative_prompt"][1]["default"].startswith("Aerial view")
    # size: every size of both hosted models
    assert set(cloud_in["size"][1]["options"]) <= set(local_in["size"][1]["options"])
    assert local_in["steps"][1]["default"] == 30 and local_in["num_frames"][1]["default"] == 129
    assert local_in["frame_rate"][1]["default"] == 25.0
    # and the same outputs, by type and by name, as far as the cloud node's go
    local_out, cloud_out = info["HunyuanCustomLocalRef2V"], info["HunyuanCustomCloudRef2V720p"]
    assert local_out["output"] == cloud_out["output"][:3]
    assert local_out["output_name"] == cloud_out["output_name"][:3] == ["video", "frames", "fps"]


def test_bf16_file_stored_in_fp8_by_core(comfy, files):
    inp = _inputs(seed=6)
    sigma = torch.tensor([0.4])
    fp8, _ = comfy.load_model(files["pt"], weight_dtype="fp8_e4m3fn")
    ref, _ = comfy.load_model(files["pt"])
    assert fp8.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    a = _core_velocity(fp8, inp["x"], sigma, inp["pos"])
    b = _core_velocity(ref, inp["x"], sigma, inp["pos"])
    assert torch.isfinite(a).all() and (a - b).norm() / b.norm() < 0.25


def test_weight_patches_on_scaled_fp8_use_the_scales(comfy, files):
    """A LoRA-style weight patch on an fp8 Linear lands in real units, as on the bf16 weights."""
    import comfy.model_management as mm

    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    delta = 0.05 * torch.randn(3 * 128, 128, generator=torch.Generator().manual_seed(9))
    inp = _inputs(seed=8)
    sigma = torch.tensor([0.5])
    outs = []
    for fp8 in ("keep", "dequantize"):
        patcher, _ = comfy.load_model(files["fp8"], fp8=fp8)
        plain = _core_velocity(patcher, inp["x"], sigma, inp["pos"])
        patched = patcher.clone()
        patched.add_patches({key: (delta,)}, 1.0)
        mm.load_models_gpu([patched])
        outs.append((plain, _core_velocity(patched, inp["x"], sigma, inp["pos"])))
        mm.unload_all_models()
    (kept, kept_patched), (deq, deq_patched) = outs
    assert (kept_patched - kept).norm() > 0.03 * kept.norm()  # the patch changes the output
    assert (kept_patched - deq_patched).norm() / deq_patched.norm() < 0.05


def test_progress_per_step_and_cancel_between_steps(server):
    """Over the websocket, as the front end sees it: one progress message per sampling step, and
    Cancel pressed mid-sampling stops the run before the last step."""
    import asyncio

    import aiohttp

    steps = 200  # the widget maximum

    async def run():
        interrupted = False
        seen: list[tuple[int, int]] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
                prompt_id = await asyncio.to_thread(server.queue, _graph(seed=99, steps=steps))
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    data = m.get("data") or {}
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if m["type"] == "progress" and data.get("node") == "6":
                        seen.append((data["value"], data["max"]))
                        if data["value"] >= 3 and not interrupted:
                            interrupted = True
                            await asyncio.to_thread(server.interrupt, prompt_id)
                    if m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                        return m["type"], seen

    kind, seen = asyncio.run(asyncio.wait_for(run(), 600))
    assert kind == "execution_interrupted", (kind, seen[-3:])
    assert seen[:3] == [(1, steps), (2, steps), (3, steps)]
    assert max(v for v, _ in seen) < steps
