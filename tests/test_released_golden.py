"""The pack against numbers the released pipeline itself produced (tests/data/released_golden.*).

`released_golden.md` says how they were made: `hymm_sp` of Tencent-Hunyuan/HunyuanCustom, run on the
CPU in float32 with its own CFG batching, mask handling, DeepCache, scheduler and transformer, on
the tiny released-layout weights of `tests/local_models.py` and fixed stand-in encoder outputs.

Without ComfyUI: the conditioning the pack builds carries the masks the release hands its
transformer. With ComfyUI (COMFYUI_PATH): core's KSampler, on a MODEL from the pack's patch and the
pack's conditioning (and the Audio-Driven / Video-Driven patches for the mode cases), ends at the
release's final latents to float32 precision, for every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from local_models import backbone_state_dict

from comfyui_harness import import_comfy, requires_comfyui
from hunyuancustom.local import conditioning as cond
from hunyuancustom.local import prompt, released, text_encoder

DATA = Path(__file__).resolve().parent / "data"
SCALE = 0.476986  # HunyuanVideo latent scaling factor: the release samples in the scaled space
# float32 on the CPU, two implementations of the same maths (attention kernels, RoPE, summation
# order): the final latents agree to a few ulps of their size after 30 steps.
RTOL = 2e-5


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    meta = json.loads((DATA / "released_golden.json").read_text())
    return load_file(str(DATA / "released_golden.safetensors")), meta


def _branch(t, side: str):
    return [[t[f"inputs.{side}_text_states"], {"pooled_output": t[f"inputs.{side}_pooled"],
                                                "attention_mask": t[f"inputs.{side}_text_mask"]}]]


def _conditioning(t):
    ref = t["inputs.ref_latent_raw"]
    return (cond.with_reference(_branch(t, "pos"), ref, "positive"),
            cond.with_reference(_branch(t, "neg"), ref, "negative", negative=True))


def test_the_stand_in_masks_are_the_released_text_encoders(golden):
    t, meta = golden
    for side in ("pos", "neg"):
        mask = t[f"inputs.{side}_text_mask"]
        after_crop = int(mask[0, :text_encoder.MAX_LENGTH - prompt.CROP_START].sum())
        assert torch.equal(mask.long(), text_encoder.released_mask(prompt.CROP_START + after_crop))


def test_the_pack_hands_the_transformer_the_releases_masks(golden):
    t, meta = golden
    pos, neg = _conditioning(t)
    for case in sorted(meta["cases"]):
        if meta["cases"][case]["guidance"] <= 1:
            continue
        step0 = t[f"{case}.step0_text_mask"].long()  # [negative, positive], as the release batches
        assert torch.equal(neg[0][1]["attention_mask"].long()[0], step0[0])
        assert torch.equal(pos[0][1]["attention_mask"].long()[0], step0[1])
        assert int(step0[0].sum()) == int(t["inputs.neg_text_mask"].sum()) - cond.EXTRA_IMAGE_FEATURES
    # both branches carry the one reference latent
    assert pos[0][1]["ref_latent"] is neg[0][1]["ref_latent"]


@pytest.fixture(scope="module")
def comfy_model():
    import_comfy()
    import comfy.sd

    sd = backbone_state_dict(seed=0, double=2, single=2)
    return comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.float32})


def _editing(model, t):
    """The Video-Driven mode's patch with the golden's background latent and editing weights."""
    from modes_models import editing_state_dict

    from hunyuancustom.modes.editing import BackgroundModules
    from hunyuancustom.modes.inject import BackgroundCondition, ModeInjection

    mods = BackgroundModules.from_state_dict(editing_state_dict(seed=7, width=128))
    bg = t["inputs.bg_latent"]
    return ModeInjection(tuple(bg.shape[2:]), background=BackgroundCondition(mods, bg)).patch_model(model)


def _audio(model, t, strength: float):
    """The Audio-Driven mode's patch with the golden's whisper windows and audio weights."""
    from modes_models import audio_state_dict

    from hunyuancustom.modes.audio import AudioModules
    from hunyuancustom.modes.inject import AudioCondition, ModeInjection

    mods = AudioModules.from_state_dict(audio_state_dict(width=128))
    shape = tuple(t["inputs.noise"].shape[2:])
    audio = AudioCondition(mods, t["inputs.audio_prompts"], strength)
    return ModeInjection(shape, audio=audio).patch_model(model)


def _ksampler(model, c: dict, pos, neg, t) -> torch.Tensor:
    import comfy.sample

    import nodes

    latent = {"samples": torch.zeros_like(t["inputs.noise"])}
    # core's noise for the seed is the noise the release was given
    assert torch.equal(comfy.sample.prepare_noise(latent["samples"], c["seed"]), t["inputs.noise"])
    return nodes.KSampler().sample(model, c["seed"], c["steps"], c["guidance"], "euler", "simple", pos, neg,
                                   latent)[0]["samples"]


@requires_comfyui
@pytest.mark.parametrize("case", ["ref2v_30_deepcache", "ref2v_30_nocache", "ref2v_6", "ref2v_6_nocfg",
                                  "editing_8", "audio_8"])
def test_core_ksampler_with_the_pack_reaches_the_releases_final_latents(golden, comfy_model, case):
    t, meta = golden
    c = meta["cases"][case]
    model = released.apply_released(comfy_model, deepcache=bool(c["use_deepcache"]), shift=c["shift"])
    if c["editing"]:
        model = _editing(model, t)
    if c["audio"]:
        model = _audio(model, t, c["audio_strength"])
    forward = released.released_forward(model)
    before = dict(forward.calls)
    pos, neg = _conditioning(t)
    out = _ksampler(model, c, pos, neg, t)
    want = t[f"{case}.latent"]
    err = ((out * SCALE - want).abs().max() / want.abs().max()).item()
    assert err < RTOL, f"{case}: relative error {err:.2e} against the released pipeline"
    branches = 2 if c["guidance"] > 1 else 1
    assert forward.calls["cached"] - before["cached"] == branches * len(c["cached_steps"])


@requires_comfyui
def test_without_the_pack_core_differs_from_the_release(golden, comfy_model):
    """What the patches are for: core's own model (one branch, which it can run) with the same
    conditioning misses the released latents (its token refiner reads the released mask otherwise)."""
    t, meta = golden
    c = meta["cases"]["ref2v_6_nocfg"]
    model = released.with_flow_shift(comfy_model, c["shift"])
    pos, neg = _conditioning(t)
    out = _ksampler(model, c, pos, neg, t)
    want = t["ref2v_6_nocfg.latent"]
    assert ((out * SCALE - want).abs().max() / want.abs().max()).item() > 100 * RTOL
