"""The mode patches inside ComfyUI core's own HunyuanVideo model and sampler (COMFYUI_PATH, in-process).

A 12-double-block HunyuanVideo (width 128, one head) with random weights is loaded through core's
diffusion-model loader; the audio / editing modules (released key layout, width 128) are patched in
through `patches_replace`, and core's sampler runs positive (with a reference latent) and
negative branches. Run with ComfyUI's interpreter:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_modes_comfy_model.py
"""

from __future__ import annotations

import pytest
import torch
from modes_models import audio_state_dict, editing_state_dict

from comfyui_harness import core_hunyuan_video, import_comfy, import_pack, requires_comfyui
from hunyuancustom.modes.audio import AudioModules
from hunyuancustom.modes.editing import BackgroundModules
from hunyuancustom.modes.inject import MODEL_KEY, AudioCondition, BackgroundCondition, ModeInjection

pytestmark = requires_comfyui

WIDTH, CONTEXT = 128, 64
LATENT = (3, 4, 6)  # t, h, w of the clip's latent (9 frames, 48x32 pixels)
REF_TOKENS, VIDEO_TOKENS = 6, 18


@pytest.fixture(scope="module")
def comfy():
    core = import_comfy()
    return {"hv": core.ldm.hunyuan_video.model, "ops": core.ops, "sd": core.sd, "sample": core.sample,
            "mm": core.model_management}


@pytest.fixture(scope="module")
def model(comfy):
    torch.manual_seed(0)
    net = core_hunyuan_video(import_comfy(), width=WIDTH, context=CONTEXT, depth=12)
    sd = {k: torch.randn(v.shape) * 0.05 for k, v in net.state_dict().items()}
    m = comfy["sd"].load_diffusion_model_state_dict(sd)
    net = m.model.diffusion_model
    assert type(net).__name__ == "HunyuanVideo" and len(net.double_blocks) == 12
    return m


@pytest.fixture(scope="module")
def audio_mods():
    return AudioModules.from_state_dict(audio_state_dict(width=WIDTH))


@pytest.fixture(scope="module")
def bg_mods():
    return BackgroundModules.from_state_dict(editing_state_dict(width=WIDTH))


def audio_injection(mods, strength=0.8):
    windows = torch.randn(1, 4 * LATENT[0] - 3, 10, 3, 16, generator=torch.Generator().manual_seed(3))
    return ModeInjection(LATENT, audio=AudioCondition(mods, windows, strength))


def bg_injection(mods):
    latent = torch.randn(1, 32, *LATENT, generator=torch.Generator().manual_seed(4))
    return ModeInjection(LATENT, background=BackgroundCondition(mods, latent))


def forward(model, options, ref=True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, *LATENT, generator=g)
    ctx, y = torch.randn(1, 7, CONTEXT, generator=g), torch.randn(1, 768, generator=g)
    ref_latent = torch.randn(1, 16, 1, 4, 6, generator=g) if ref else None
    with torch.no_grad():
        return model.model.diffusion_model(x, torch.tensor([500.0]), ctx, y=y, ref_latent=ref_latent,
                                          transformer_options=options)


def recorder(store, name):
    def patch(args, extra):
        store[name] = args["img"].clone()
        return extra["original_block"](args)
    return patch


def test_audio_changes_only_video_tokens_inside_core_forward(model, audio_mods):
    seen_plain, seen_audio = {}, {}
    plain = {"patches_replace": {"dit": {("double_block", 2): recorder(seen_plain, "in2")}}}
    out_plain = forward(model, plain)
    inj = audio_injection(audio_mods)
    out_audio = forward(model, inj.apply({"patches_replace": {"dit": {
        ("double_block", 2): recorder(seen_audio, "in2")}}}))
    a, b = seen_plain["in2"], seen_audio["in2"]
    assert a.shape == (1, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    # What block 2 receives: block 1's output plus the audio update on the video tokens only.
    assert torch.equal(a[:, :REF_TOKENS], b[:, :REF_TOKENS])
    assert (a[:, REF_TOKENS:] - b[:, REF_TOKENS:]).abs().mean() > 1e-3
    assert out_plain.shape == out_audio.shape == (1, 16, *LATENT)
    assert not torch.allclose(out_plain, out_audio)
    # Strength 0: the model's output is exactly the plain one.
    assert torch.equal(forward(model, audio_injection(audio_mods, 0.0).apply({})), out_plain)


def test_background_enters_before_block_0_on_video_tokens_only(model, bg_mods):
    seen_plain, seen_bg = {}, {}
    forward(model, {"patches_replace": {"dit": {("double_block", 0): recorder(seen_plain, "in0")}}})
    inj = bg_injection(bg_mods)
    forward(model, inj.apply({"patches_replace": {"dit": {("double_block", 0): recorder(seen_bg, "in0")}}}))
    a, b = seen_plain["in0"], seen_bg["in0"]
    assert torch.equal(a[:, :REF_TOKENS], b[:, :REF_TOKENS])
    expected = bg_mods(inj.background.latent)
    assert torch.allclose(b[:, REF_TOKENS:] - a[:, REF_TOKENS:], expected, atol=1e-5)
    # Without a reference latent (the negative branch) every token is a video token.
    forward(model, inj.apply({"patches_replace": {"dit": {("double_block", 0): recorder(seen_bg, "neg")}}}),
            ref=False)
    assert seen_bg["neg"].shape[1] == VIDEO_TOKENS


def test_core_sampler_runs_both_branches_through_the_patched_model(comfy, model, audio_mods, bg_mods):
    branches = []

    def spy(args, extra):
        branches.append(tuple(args["transformer_options"].get("cond_or_uncond") or ()))
        return extra["original_block"](args)

    g = torch.Generator().manual_seed(2)
    positive = [[torch.randn(1, 7, CONTEXT, generator=g), {
        "pooled_output": torch.randn(1, 768, generator=g),
        "ref_latent": torch.randn(1, 16, 1, 4, 6, generator=g)}]]
    negative = [[torch.randn(1, 7, CONTEXT, generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g)}]]
    latent = torch.zeros(1, 16, *LATENT)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))

    def sample(m):
        return comfy["sample"].sample(m, noise, 3, 7.5, "euler", "simple", positive, negative, latent, seed=7)

    plain = sample(model)
    spied = model.clone()
    spied.set_model_patch_replace(spy, "dit", "double_block", 1)
    inj = ModeInjection(LATENT, audio=audio_injection(audio_mods).audio,
                        background=bg_injection(bg_mods).background)
    patched = inj.patch_model(spied)
    # The modules travel with the MODEL as ComfyUI models of their own ...
    managed = patched.get_additional_models_with_key(MODEL_KEY)
    assert [p.model for p in managed] == [audio_mods, bg_mods]
    result = sample(patched)
    # ... so core's model management loaded them with the transformer (and may offload them).
    loaded = [lm.model.model for lm in comfy["mm"].current_loaded_models if lm.model is not None]
    assert any(x is audio_mods for x in loaded) and any(x is bg_mods for x in loaded)
    assert result.shape == plain.shape and bool(torch.isfinite(result).all())
    assert not torch.allclose(result, plain)
    # Both branches went through the patched blocks, each labelled by core's sampler.
    assert {0, 1} <= {c for b in branches for c in b}
    # The original MODEL is unchanged: sampling it again gives the plain result.
    assert torch.equal(sample(model), plain)


@pytest.fixture(scope="module")
def pack(comfy):
    """The pack's modes nodes module, imported as ComfyUI imports the pack."""
    import importlib

    return importlib.import_module(import_pack().__name__ + ".nodes.modes")


def test_unreadable_or_empty_source_video_is_refused_by_name(pack):
    import io

    from comfy_api.latest import InputImpl, Types

    from hunyuancustom.errors import ValidationError as VE

    def error(**kw):
        args = {"video": None, "frames": None, "fps": 25.0, "audio": None, **kw}
        with pytest.raises(Exception) as e:
            pack.source_components(**args)
        assert type(e.value).__name__ == VE.__name__ and e.value.field == "video"
        return str(e.value)

    assert "could not be read" in error(video=InputImpl.VideoFromFile(io.BytesIO(b"not a video")))
    empty = InputImpl.VideoFromComponents(Types.VideoComponents(images=torch.zeros(0, 32, 32, 3),
                                                                frame_rate=25))
    assert "has no frames" in error(video=empty)
    assert "not both" in error(video=empty, frames=torch.zeros(1, 32, 32, 3))
    assert "connect the source" in error()


def test_a_model_of_another_width_is_refused(pack, model):
    with pytest.raises(Exception) as e:
        pack.check_model(model, 3072)
    assert e.value.field == "model" and "128 wide" in str(e.value)
    pack.check_model(model, WIDTH, 12)  # the matching width passes; 12 blocks hold the audio layers
    with pytest.raises(Exception, match="has 12 double blocks; the mode needs 13"):
        pack.check_model(model, WIDTH, 13)


@pytest.mark.parametrize("latent", [(3, 4, 8), (2, 4, 6), (3, 6, 6)])  # wider, shorter, taller
def test_sampling_another_latent_than_prepared_is_refused(comfy, model, audio_mods, latent):
    """A mode's tokens are found by position: sampled at another size or length it would run,
    silently wrong. Core's sampler with another LATENT stops with the reason, before any step."""
    from hunyuancustom.errors import ValidationError

    patched = audio_injection(audio_mods).patch_model(model)
    g = torch.Generator().manual_seed(2)
    t, h, w = latent
    positive = [[torch.randn(1, 7, CONTEXT, generator=g), {
        "pooled_output": torch.randn(1, 768, generator=g),
        "ref_latent": torch.randn(1, 16, 1, h, w, generator=g)}]]
    negative = [[torch.randn(1, 7, CONTEXT, generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g)}]]
    empty = torch.zeros(1, 16, *latent)
    steps = []
    with pytest.raises(ValidationError) as e:
        comfy["sample"].sample(patched, torch.randn(empty.shape, generator=g), 3, 7.5, "euler", "simple",
                               positive, negative, empty, seed=7, callback=lambda *a: steps.append(a[0]))
    assert e.value.field == "latent" and steps == []
    assert f"the sampler's latent is {t} latent frames of {w * 8}x{h * 8}" in str(e.value)
    assert "the mode was prepared for 3 (9 frames) of 48x32" in str(e.value)
