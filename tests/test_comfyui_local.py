"""Local ref2v inside a real ComfyUI (COMFYUI_PATH), on tiny random-weight checkpoints.

In-process: every checkpoint layout loads into core's HunyuanVideo model with every key mapped; the
fp8 file with its scales gives the same outputs as its dequantised weights. The released-recipe
patch (`released.py`) under core's own samplers: a batch (both CFG branches of equal-length prompts,
batch_size 2) equals unbatched calls exactly, where core's HunyuanVideo alone fails; the one-node
path (Ref2V (Local)) and Conditioning (Local) + core's KSampler give the same latents and the same
transformer calls; core's EasyCache and LazyCache cut the transformer calls on both paths;
TorchCompileModel, CFGZeroStar, RescaleCFG and LoRAs (on a double block and on the token refiner,
through core's LoraLoaderModelOnly) reach the one-node path. Transformer passes are counted with
forward hooks on core's own blocks. End to end in a ComfyUI server (64x64, 5 frames): the loader and
Ref2V (Local) run and return frames, a VIDEO and a preview; Ref2V (Local) alone is an output node;
progress and latent previews arrive over the websocket each step; Cancel stops within a step.
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

from comfyui_harness import ComfyServer, execution_error, import_comfy, import_pack, requires_comfyui
from workflow_check import check_ui_workflow

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "example_workflows" / "HunyuanCustom Ref2V (Local).json"
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


def _branch(g, text, h, w):
    return {"context": torch.randn(1, text, TEXT_DIM, generator=g),
            "pooled": torch.randn(1, 768, generator=g),
            "ref_latent": torch.randn(1, 16, 1, h, w, generator=g)}


def _inputs(seed=0, t=2, h=4, w=6, text=7):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(1, 16, t, h, w, generator=g), "pos": _branch(g, text, h, w),
            "neg": _branch(g, text, h, w)}


def _core_velocity(patcher, x, sigma, branch, **extra):
    """Core's own forward, called directly (with the MODEL's wrappers when it has any)."""
    net = patcher.model.diffusion_model
    options = extra.pop("transformer_options", {})
    with torch.no_grad():
        return net(x, sigma * 1000, branch["context"], y=branch["pooled"],
                   ref_latent=branch["ref_latent"] * SCALE, transformer_options=options, **extra).float()


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


def _batch_of_two(seed=2, h=4, w=6, text=7):
    """Two samples (different latents, prompts, references and released text masks) and their batch."""
    a, b = _inputs(seed=seed, h=h, w=w, text=text), _inputs(seed=seed + 1, h=h, w=w, text=text)
    masks = [torch.tensor([[1, 1, 1, 1, 0, 0, 1]]), torch.tensor([[1, 1, 1, 1, 1, 0, 0]])]
    samples = [(a["x"], a["pos"], masks[0]), (b["x"], b["neg"], masks[1])]
    batch = (torch.cat([a["x"], b["x"]]),
             {k: torch.cat([a["pos"][k], b["neg"][k]]) for k in ("context", "pooled", "ref_latent")},
             torch.cat(masks))
    return samples, batch


def test_core_hunyuanvideo_alone_fails_a_batch_with_a_reference_latent(comfy, files):
    """Why the pack's patch runs one sample at a time: core's forward writes into an expanded view
    of the reference's position ids (core's sampler forms such batches for equal-length prompts)."""
    patcher, _ = comfy.load_model(files["plain"])
    _, (x, branch, _) = _batch_of_two()
    try:
        out = _core_velocity(patcher, x, torch.tensor([0.6, 0.6]), branch)
    except RuntimeError as e:
        assert "refers to a single memory location" in str(e)
    else:
        pytest.skip(f"core's HunyuanVideo now takes a batch with ref_latent (output {tuple(out.shape)})")


def test_patched_batch_equals_unbatched_calls_exactly(comfy, files):
    import comfy.model_management as mm

    from hunyuancustom.local import released

    model = released.apply_released(comfy.load_model(files["plain"])[0])
    mm.load_models_gpu([model])  # the object patch (the released token refiner) goes in
    # what core's sampler hands the model: the MODEL's options with its wrappers
    options = {**model.model_options["transformer_options"], "wrappers": model.wrappers}
    samples, (x, branch, mask) = _batch_of_two()
    sigma = torch.tensor([0.6])
    batched = _core_velocity(model, x, sigma.repeat(2), branch, attention_mask=mask,
                             transformer_options={**options, "cond_or_uncond": [0, 1]})
    single = [_core_velocity(model, xi, sigma, bi, attention_mask=mi,
                             transformer_options={**options, "cond_or_uncond": [c]})
              for c, (xi, bi, mi) in enumerate(samples)]
    assert torch.equal(batched, torch.cat(single))
    # the masks matter: the same batch with all-ones masks gives another result
    ones = _core_velocity(model, x, sigma.repeat(2), branch, attention_mask=torch.ones_like(mask),
                          transformer_options={**options, "cond_or_uncond": [0, 1]})
    assert not torch.allclose(ones, batched)


def test_frames_and_sizes_are_checked():
    from hunyuancustom.errors import ValidationError
    from hunyuancustom.local import conditioning as cond

    with pytest.raises(ValidationError, match="num_frames"):
        cond.check_frames(6, "num_frames")
    with pytest.raises(ValidationError, match="width"):
        cond.empty_latent(72, 64, 5)
    assert cond.empty_latent(1280, 720, 129)["samples"].shape == (1, 16, 33, 90, 160)
    assert cond.empty_latent(64, 48, 5, batch_size=2)["samples"].shape == (2, 16, 2, 6, 8)


# ---- the one-node path and the KSampler path, in-process ----------------------------------------

W, H, FRAMES = 32, 32, 5  # latent [1, 16, 2, 4, 4]


@pytest.fixture(scope="module")
def nodes_local(comfy):
    import importlib

    return importlib.import_module(import_pack().__name__ + ".nodes.local")


@pytest.fixture(scope="module")
def vae(comfy, vae_file):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_file)))


@pytest.fixture(scope="module")
def model_dirs(comfy, tmp_path_factory):
    """Model folders registered with core's folder_paths, as a user's models/ folders; previews
    the nodes write go to a temporary folder."""
    import folder_paths

    base = tmp_path_factory.mktemp("inproc_models")
    dirs = {name: base / name for name in ("diffusion_models", "loras", "temp")}
    for name, d in dirs.items():
        d.mkdir()
        if name != "temp":
            folder_paths.add_model_folder_path(name, str(d))
    saved = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(dirs["temp"]))
    write_released_pt(dirs["diffusion_models"] / "hc_inproc.pt", backbone_state_dict(seed=5))
    yield dirs
    folder_paths.set_temp_directory(saved)


@pytest.fixture(scope="module")
def loaded(nodes_local, model_dirs):
    """The MODEL of Load Model (Local) (released recipe, DeepCache on)."""
    return nodes_local.LocalModelLoader.execute("hc_inproc.pt", "keep", "default", True).args[0]


def _cond(seed, length=6, mask=None):
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, 768, generator=g)}
    if mask is not None:
        extra["attention_mask"] = torch.tensor([mask])
    return [[torch.randn(1, length, TEXT_DIM, generator=g), extra]]


# equal lengths, both with a released-style token mask: core batches the two CFG branches
POSITIVE, NEGATIVE = _cond(1, mask=[1, 1, 1, 1, 0, 1]), _cond(2, mask=[1, 1, 1, 0, 0, 0])
IMAGE = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(0))


class Passes:
    """Transformer passes counted on core's own blocks: `full` = first double block (a whole pass),
    `last` = last single block (whole passes and the released DeepCache's cached steps). A pass a
    step cache skips reaches neither."""

    def __init__(self, model):
        net = model.model.diffusion_model
        self.full = self.last = 0
        self._hooks = [net.double_blocks[0].register_forward_pre_hook(lambda *_: self._add("full")),
                       net.single_blocks[-1].register_forward_pre_hook(lambda *_: self._add("last"))]

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

    @property
    def counts(self):
        return {"full": self.full, "cached": self.last - self.full}


def conditioning_node(nodes_local, vae, batch_size=1, positive=POSITIVE, negative=NEGATIVE):
    with torch.inference_mode():  # as ComfyUI's executor runs every node (core's VAE relies on it)
        out = nodes_local.LocalConditioning.execute(vae, IMAGE, "A man waves.", "", "1280*720", FRAMES,
                                                    batch_size, positive=positive, negative=negative,
                                                    width=W, height=H)
    return out.args


def ksampler(model, positive, negative, latent, steps, seed=3, cfg=7.5):
    import nodes

    with torch.inference_mode():
        return nodes.KSampler().sample(model, seed, steps, cfg, "euler", "simple", positive, negative,
                                       latent)[0]


def one_node(nodes_local, model, vae, steps, seed=3, latent=None, positive=POSITIVE, negative=NEGATIVE):
    """Ref2V (Local)'s execute as ComfyUI calls it (under inference mode); returns (latent, frames, ui)."""
    with torch.inference_mode():
        out = nodes_local.LocalRef2V.execute(
            model, vae, IMAGE, "A man waves.", "", "1280*720", 7.5, 13.0, seed, steps, FRAMES, 25.0,
            positive=positive, negative=negative, width=0 if latent is not None else W,
            height=0 if latent is not None else H, latent=latent)
    return out.args[3], out.args[1], out.ui


def _paths(nodes_local, model, vae, steps, seed=3):
    """(latent, passes) of the one-node path and of Conditioning (Local) + core's KSampler."""
    with Passes(model) as a:
        one = one_node(nodes_local, model, vae, steps, seed)[0]["samples"]
    pos, neg, latent = conditioning_node(nodes_local, vae)
    with Passes(model) as b:
        two = ksampler(model, pos, neg, latent, steps, seed)["samples"]
    return (one, a.counts), (two, b.counts)


@pytest.mark.parametrize("steps", [4, 30])  # 30: the released DeepCache takes part
def test_one_node_equals_conditioning_plus_ksampler(nodes_local, loaded, vae, steps):
    from hunyuancustom.local import released

    batches = []
    spied = loaded.clone()

    def spy(apply, a):
        batches.append(list(a["cond_or_uncond"]))
        return apply(a["input"], a["timestep"], **a["c"])

    spied.set_model_unet_function_wrapper(spy)
    calls = released.released_forward(spied).calls
    before = dict(calls)
    (one, one_passes), (two, two_passes) = _paths(nodes_local, spied, vae, steps)
    assert one.shape == two.shape == (1, 16, 2, 4, 4)
    assert torch.isfinite(one).all()
    assert torch.equal(one, two)
    assert one_passes == two_passes
    # equal-length prompts: core sent both CFG branches in one batch, every step, on both paths
    assert [sorted(b) for b in batches] == [[0, 1]] * (2 * steps)
    cached = 16 if steps == 30 else 0  # DeepCache: 8 cached steps per branch at exactly 30 steps
    assert one_passes == {"full": 2 * steps - cached, "cached": cached}
    # the patch's own count agrees with the hooks
    assert calls["full"] - before["full"] == 2 * one_passes["full"]
    assert calls["cached"] - before["cached"] == 2 * cached


def test_batch_size_2_each_video_equals_its_own_run(nodes_local, loaded, vae):
    pos, neg, latent2 = conditioning_node(nodes_local, vae, batch_size=2)
    assert latent2["samples"].shape[0] == 2
    two = ksampler(loaded, pos, neg, latent2, 4)["samples"]
    one = ksampler(loaded, pos, neg, conditioning_node(nodes_local, vae)[2], 4)["samples"]
    # core draws the batch's noise in one go: video 0 has the batch-1 run's noise
    assert torch.equal(two[:1], one)
    assert not torch.allclose(two[0], two[1])  # video 1 has its own noise
    # the one-node path takes the batch as its latent input and gives the same videos
    latent, frames, _ = one_node(nodes_local, loaded, vae, 4, latent=latent2)
    assert torch.equal(latent["samples"], two) and frames.shape == (2 * FRAMES, H, W, 3)


def _cache(kind, model):
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    node = {"EasyCache": EasyCacheNode, "LazyCache": LazyCacheNode}[kind]
    # a high threshold so that random weights skip steps too
    return node.execute(model, 1.0, 0.0, 1.0, False).args[0]


@pytest.mark.parametrize("steps", [10, 30])
@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_step_caches_cut_transformer_calls_on_both_paths(nodes_local, loaded, vae, kind, steps):
    (plain, plain_passes), (plain_ks, _) = _paths(nodes_local, loaded, vae, steps)
    cached_model = _cache(kind, loaded)
    (one, one_passes), (two, two_passes) = _paths(nodes_local, cached_model, vae, steps)
    print(f"\n{kind} {steps} steps: without {plain_passes}, one-node {one_passes}, KSampler {two_passes}")
    assert one_passes["full"] < plain_passes["full"]
    assert two_passes["full"] < plain_passes["full"]
    assert one_passes == two_passes and torch.equal(one, two)  # the same cache decisions on both paths
    assert torch.isfinite(one).all() and not torch.equal(one, plain)


def test_easycache_keeps_each_video_of_a_batch_apart(nodes_local, loaded, vae):
    """EasyCache keeps a cache per uuid; with batch_size 2 each video must use its own."""
    model = _cache("EasyCache", loaded)
    pos, neg, latent2 = conditioning_node(nodes_local, vae, batch_size=2)
    with Passes(model) as p:
        two = ksampler(model, pos, neg, latent2, 10)["samples"]
    one = ksampler(model, pos, neg, conditioning_node(nodes_local, vae)[2], 10)["samples"]
    assert p.counts["full"] < 2 * 2 * 10  # steps were skipped
    assert torch.equal(two[:1], one)


def _lora(model_dirs, name, module, out_dim, in_dim, seed):
    """A rank-4 LoRA in core's generic key format (`<module>.lora_up/lora_down.weight`)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({f"diffusion_model.{module}.lora_up.weight": 0.5 * torch.randn(out_dim, 4, generator=g),
               f"diffusion_model.{module}.lora_down.weight": 0.5 * torch.randn(4, in_dim, generator=g)},
              str(model_dirs["loras"] / name))
    return name


def _patched(kind, model, model_dirs):
    if kind == "CFGZeroStar":
        from comfy_extras.nodes_cfg import CFGZeroStar

        return CFGZeroStar.execute(model).args[0]
    if kind == "RescaleCFG":
        from comfy_extras.nodes_model_advanced import RescaleCFG

        return RescaleCFG().patch(model, 0.7)[0]
    import nodes

    module = {"lora_double_block": "double_blocks.0.img_attn.qkv",
              "lora_token_refiner": "txt_in.individual_token_refiner.blocks.0.self_attn.qkv"}[kind]
    name = _lora(model_dirs, f"hc_{kind}.safetensors", module, 3 * 128, 128, seed=len(kind))
    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]


@pytest.mark.parametrize("kind", ["CFGZeroStar", "RescaleCFG", "lora_double_block", "lora_token_refiner"])
def test_model_patches_change_the_one_node_output(nodes_local, loaded, vae, model_dirs, kind):
    import comfy.model_management as mm

    plain = one_node(nodes_local, loaded, vae, 4)[0]["samples"]
    patched = _patched(kind, loaded, model_dirs)
    out = one_node(nodes_local, patched, vae, 4)[0]["samples"]
    assert torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-3, kind
    if kind.startswith("lora"):  # the weights go back: the plain MODEL gives the plain result again
        mm.unload_all_models()
        assert torch.equal(one_node(nodes_local, loaded, vae, 4)[0]["samples"], plain)


def test_torch_compile_model_compiles_the_one_node_path(nodes_local, loaded, vae):
    """Core's TorchCompileModel on the one-node path: dynamo traces the transformer during sampling
    and the result stays the same. The node's inductor backend works here too, but takes minutes on
    a shared CPU; the `eager` backend exercises the same wrapper and the same graph capture."""
    import torch._dynamo
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from torch._dynamo.utils import counters

    plain = one_node(nodes_local, loaded, vae, 2)[0]["samples"]
    torch._dynamo.reset()
    counters.clear()
    compiled = TorchCompileModel.execute(loaded, "eager").args[0]
    try:
        out = one_node(nodes_local, compiled, vae, 2)[0]["samples"]
    finally:
        captured = dict(counters["stats"])
        torch._dynamo.reset()
    assert captured.get("unique_graphs", 0) > 0, captured
    assert torch.allclose(out, plain, rtol=1e-4, atol=1e-4)


def test_one_node_reports_and_previews(nodes_local, loaded, vae):
    _, frames, ui = one_node(nodes_local, loaded, vae, 2, seed=11)
    assert frames.shape == (FRAMES, H, W, 3)
    info = ui["hunyuancustom"][0]
    assert info["seed"] == 11 and info["steps"] == 2 and info["sampler"] == "euler"
    assert ui["images"][0]["filename"].endswith(".mp4")


def test_reference_latent_on_both_branches_and_the_negative_mask_cut(nodes_local, vae):
    from hunyuancustom.local import reference

    long_mask = [1] * 600 + [0] * 10  # a negative with the white image's 575 features in it
    neg = _cond(4, length=610, mask=long_mask)
    pos, negative, latent = conditioning_node(nodes_local, vae, negative=neg)
    ref = pos[0][1]["ref_latent"]
    assert ref.shape == (1, 16, 1, H // 8, W // 8)
    assert torch.equal(negative[0][1]["ref_latent"], ref)
    # the reference is the white-padded frame of the video's size, encoded by core's VAE
    assert torch.allclose(ref, vae.encode(reference.vae_reference(IMAGE, W, H)[:, :, :, :3]))
    assert int(negative[0][1]["attention_mask"].sum()) == 600 - 575
    assert torch.equal(pos[0][1]["attention_mask"], POSITIVE[0][1]["attention_mask"])
    assert latent["samples"].shape == (1, 16, 2, H // 8, W // 8)

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

    class HCTestHoldAtStep:
        """Test-only: a MODEL whose transformer, from sampling step `step` (0-based) on, waits until
        ComfyUI's interrupt flag is set (at most 60 s) before computing: the test presses Cancel
        while a step is known to be running."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "step": ("INT", {"default": 3})}}
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "patch"
        CATEGORY = "testing"

        def patch(self, model, step):
            import time

            import comfy.model_management as mm
            import comfy.patcher_extension as ext

            def hold(executor, *args, **kwargs):
                opts = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
                sigmas, all_sigmas = opts.get("sigmas"), opts.get("sample_sigmas")
                index = int((all_sigmas == sigmas[0]).nonzero()[0]) if all_sigmas is not None else 0
                deadline = time.monotonic() + 60
                while index >= step and not mm.processing_interrupted() and time.monotonic() < deadline:
                    time.sleep(0.02)  # waiting for a condition (Cancel), bounded
                return executor(*args, **kwargs)

            m = model.clone()
            m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "hc_test_hold", hold)
            return (m,)

    NODE_CLASS_MAPPINGS = {"HCTestConditioning": HCTestConditioning, "HCTestHoldAtStep": HCTestHoldAtStep}
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
    srv = ComfyServer(base, extra_args=["--preview-method", "latent2rgb"])
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


def _graph(ckpt="hunyuancustom_720P/mp_rank_00_model_states_fp8.pt", frames=5, seed=3, steps=2, savers=True):
    graph = {
        "1": {"class_type": "HunyuanCustomLocalModelLoader",
              "inputs": {"ckpt_name": ckpt, "fp8": "keep", "weight_dtype": "default", "deepcache": True}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "hunyuan_video_vae_bf16.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_reference.png"}},
        "4": {"class_type": "HCTestConditioning", "inputs": {"seed": 1, "width": TEXT_DIM, "length": 6}},
        "5": {"class_type": "HCTestConditioning", "inputs": {"seed": 2, "width": TEXT_DIM, "length": 4}},
        "6": {"class_type": "HunyuanCustomLocalRef2V", "inputs": {
            "model": ["1", 0], "vae": ["2", 0], "image": ["3", 0], "positive": ["4", 0],
            "negative": ["5", 0], "prompt": "A man waves.", "negative_prompt": "",
            "size": "1280*720", "width": 64, "height": 64, "guidance_scale": 7.5, "flow_shift": 13.0,
            "seed": seed, "steps": steps, "num_frames": frames, "frame_rate": 25.0,
            "sampler_name": "euler", "scheduler": "simple"}},
    }
    if savers:
        graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "local"}}
        graph["8"] = {"class_type": "SaveVideo", "inputs": {"video": ["6", 0], "filename_prefix": "local",
                                                           "format": "auto", "codec": "auto"}}
    return graph


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
    for name in ("prompt", "guidance_scale", "seed"):
        assert local_in[name] == cloud_in[name], name
    # flow shift: the same widget; the local tooltip says more (it wins over ModelSamplingSD3)
    local_shift, cloud_shift = dict(local_in["flow_shift"][1]), dict(cloud_in["flow_shift"][1])
    assert local_shift.pop("tooltip").startswith(cloud_shift.pop("tooltip"))
    assert local_in["flow_shift"][0] == cloud_in["flow_shift"][0] and local_shift == cloud_shift
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
    assert local_out["output"][:3] == cloud_out["output"][:3]
    assert local_out["output_name"][:3] == cloud_out["output_name"][:3] == ["video", "frames", "fps"]
    assert local_out["output"][3] == "LATENT" and local_out["output_node"] is True


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


def _watch(server, graph, on_progress=None, timeout=600):
    """Queue `graph` and read the websocket as the front end does, until the prompt ends. Returns
    (final event, [(value, max) of node 6's progress messages], [binary preview payloads])."""
    import asyncio

    import aiohttp

    async def run():
        progress, previews = [], []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
                prompt_id = await asyncio.to_thread(server.queue, graph)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        previews.append(msg.data)
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    data = m.get("data") or {}
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if m["type"] == "progress" and data.get("node") == "6":
                        progress.append((data["value"], data["max"]))
                        if on_progress is not None:
                            await asyncio.to_thread(on_progress, prompt_id, data["value"])
                    if m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                        return m["type"], progress, previews

    return asyncio.run(asyncio.wait_for(run(), timeout))


PREVIEW_EVENTS = (1, 4)  # core's BinaryEventTypes.PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA


def test_progress_and_latent_previews_arrive_each_step(server):
    """The one-node path over the websocket (server started with --preview-method latent2rgb): one
    progress message and one latent preview image per sampling step."""
    import struct

    from PIL import Image

    steps = 6
    kind, progress, previews = _watch(server, _graph(seed=21, steps=steps, savers=False))
    assert kind == "execution_success"
    assert progress == [(i, steps) for i in range(1, steps + 1)]
    events = [struct.unpack(">I", p[:4])[0] for p in previews]
    images = [p for p, e in zip(previews, events, strict=True) if e in PREVIEW_EVENTS]
    assert len(images) >= steps, events
    if events[0] == 1:  # event type, image type, then the encoded image
        assert min(Image.open(io.BytesIO(images[0][8:])).size) > 0


def test_cancel_stops_the_one_node_path_within_a_step(server):
    """Cancel pressed while step 4 of 200 is running: that step is the last, the run ends
    interrupted, nothing after it runs (the test model holds step 4 until the interrupt flag is
    set, so this does not depend on timing)."""
    steps, hold = 200, 3
    graph = _graph(seed=99, steps=steps, savers=False)
    graph["9"] = {"class_type": "HCTestHoldAtStep", "inputs": {"model": ["1", 0], "step": hold}}
    graph["6"]["inputs"]["model"] = ["9", 0]
    pressed = []

    def on_progress(prompt_id, value):
        if value == hold and not pressed:
            pressed.append(value)
            server.interrupt(prompt_id)

    kind, progress, _ = _watch(server, graph, on_progress, timeout=300)
    assert pressed == [hold]
    assert kind == "execution_interrupted", (kind, progress[-3:])
    # steps 1..hold reported; the step running when Cancel came was the last one
    assert progress == [(i, steps) for i in range(1, hold + 1)]


def test_ref2v_alone_is_an_output_node(server):
    """A graph whose only output is Ref2V (Local) (no Save node) is accepted and runs; its own
    video preview is the result."""
    graph = _graph(seed=5, savers=False)
    assert not {n["class_type"] for n in graph.values()} & {"SaveImage", "SaveVideo", "PreviewImage"}
    entry = server.wait(server.queue(graph), timeout=900)
    own = entry["outputs"]["6"]["images"][0]
    assert own["filename"].endswith(".mp4")
    assert server.view(own["filename"], own["subfolder"], own["type"])[4:8] == b"ftyp"
