"""Injecting the mode modules through double-block replacement patches: video tokens only."""

from __future__ import annotations

import pytest
import torch
from modes_models import WIDTH, audio_state_dict, editing_state_dict

from hunyuancustom.errors import EngineError, ValidationError
from hunyuancustom.modes.audio import AudioModules, latent_frame_tokens
from hunyuancustom.modes.editing import BackgroundModules
from hunyuancustom.modes.inject import AudioCondition, BackgroundCondition, ModeInjection

LATENT = (3, 4, 6)  # t, h, w -> 3 latent frames of 2x3 tokens = 18 video tokens
VIDEO_TOKENS, REF_TOKENS, FRAMES = 18, 6, 9


@pytest.fixture(scope="module")
def audio_mods():
    return AudioModules.from_state_dict(audio_state_dict())


@pytest.fixture(scope="module")
def bg_mods():
    return BackgroundModules.from_state_dict(editing_state_dict())


def windows(seed=1):
    return torch.randn(1, FRAMES, 10, 3, 16, generator=torch.Generator().manual_seed(seed))


def identity_block(args):
    return {"img": args["img"], "txt": args["txt"]}


def call(patch, img, options=None, block=identity_block):
    args = {"img": img, "txt": torch.zeros(img.shape[0], 5, WIDTH), "vec": None, "pe": None,
            "attention_mask": None, "transformer_options": options or {}}
    return patch(args, {"original_block": block})


def expected_audio_update(mods, w, layer, video, strength):
    tokens = latent_frame_tokens(mods.audio_proj(w), LATENT[0])
    v = video.reshape(video.shape[0], LATENT[0], -1, WIDTH)
    out = mods.audio_models[layer](tokens.expand(video.shape[0], -1, -1, -1), v)
    return strength * out.reshape(video.shape[0], -1, WIDTH)


def test_audio_is_added_to_the_video_tokens_only_after_the_released_blocks(audio_mods):
    w = windows()
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, w, strength=0.8))
    assert inj.blocks() == [1, 3, 5, 7, 9, 11]
    img = torch.randn(1, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    patches = inj.patches()
    assert set(patches) == {("double_block", i) for i in (1, 3, 5, 7, 9, 11)}
    out = call(patches[("double_block", 5)], img)["img"]
    assert torch.equal(out[:, :REF_TOKENS], img[:, :REF_TOKENS])  # the reference tokens: untouched
    update = expected_audio_update(audio_mods, w, 2, img[:, REF_TOKENS:], 0.8)  # block 5 = layer 2
    assert torch.allclose(out[:, REF_TOKENS:] - img[:, REF_TOKENS:], update, atol=1e-5)
    assert update.abs().mean() > 1e-3  # a real change


def test_audio_update_scales_with_strength_and_vanishes_at_zero(audio_mods):
    w = windows()
    img = torch.randn(1, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    deltas = []
    for s in (0.0, 0.4, 0.8):
        inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, w, strength=s))
        deltas.append(call(inj.patches()[("double_block", 1)], img)["img"] - img)
    assert deltas[0].abs().max() == 0
    assert torch.allclose(deltas[2], 2 * deltas[1], atol=1e-5)


def test_negative_branch_hears_silence(audio_mods):
    w = windows()
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, w, strength=1.0))
    img = torch.randn(1, VIDEO_TOKENS, WIDTH).repeat(2, 1, 1)  # no reference tokens in this batch
    out = call(inj.patches()[("double_block", 1)], img, {"cond_or_uncond": [1, 0]})["img"]
    neg = expected_audio_update(audio_mods, torch.zeros_like(w), 0, img[:1], 1.0)
    pos = expected_audio_update(audio_mods, w, 0, img[1:], 1.0)
    assert torch.allclose(out[0] - img[0], neg[0], atol=1e-5)
    assert torch.allclose(out[1] - img[1], pos[0], atol=1e-5)
    assert not torch.allclose(neg, pos, atol=1e-3)


def test_two_videos_per_branch_each_get_their_branch(audio_mods):
    # core's batch_size 2: cond_or_uncond [0, 1] over a batch of 4 = 2 positive, then 2 negative
    w = windows()
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, w, strength=1.0))
    img = torch.randn(4, VIDEO_TOKENS, WIDTH)
    out = call(inj.patches()[("double_block", 1)], img, {"cond_or_uncond": [0, 1]})["img"]
    for i, silent in enumerate((False, False, True, True)):
        want = expected_audio_update(audio_mods, torch.zeros_like(w) if silent else w, 0, img[i:i + 1], 1.0)
        assert torch.allclose(out[i] - img[i], want[0], atol=1e-5), i


def test_a_batch_its_branch_list_does_not_divide_is_refused_not_guessed(audio_mods):
    # Unpatched Raylight CFG-parallel: each rank runs batch 1 but keeps cond_or_uncond [1, 0]; the
    # audio must not silently go to whichever branch a guess picks (the negative would hear it).
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, windows(), strength=1.0))
    img = torch.randn(1, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    for branches in ([1, 0], [0, 1], [1, 1, 0]):
        with pytest.raises(EngineError, match=r"batch of 1 with cond_or_uncond") as e:
            call(inj.patches()[("double_block", 1)], img, {"cond_or_uncond": branches})
        assert "CFG-parallel" in str(e.value) and "04-cfg-per-rank-branch-options.patch (R5)" in str(e.value)


def test_background_tokens_enter_double_block_0_on_the_video_tokens(bg_mods):
    latent = torch.randn(1, 32, *LATENT)
    inj = ModeInjection(LATENT, background=BackgroundCondition(bg_mods, latent))
    assert inj.blocks() == [0]
    seen = {}

    def block(args):
        seen["img"] = args["img"]
        return identity_block(args)

    img = torch.randn(2, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    call(inj.patches()[("double_block", 0)], img, {"cond_or_uncond": [1, 0]}, block=block)
    got = seen["img"]
    assert torch.equal(got[:, :REF_TOKENS], img[:, :REF_TOKENS])
    expected = bg_mods(latent)  # both branches get the source, as released
    assert torch.allclose(got[:, REF_TOKENS:] - img[:, REF_TOKENS:], expected.expand(2, -1, -1), atol=1e-5)


def test_both_modes_and_an_earlier_patch_compose(audio_mods, bg_mods):
    calls = []

    def earlier(args, extra):
        calls.append(args["img"].shape)
        return extra["original_block"](args)

    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, windows()),
                        background=BackgroundCondition(bg_mods, torch.randn(1, 32, *LATENT)))
    assert inj.blocks() == [0, 1, 3, 5, 7, 9, 11]
    options = {"patches_replace": {"dit": {("double_block", 1): earlier}}, "other": 1}
    patched = inj.apply(options)
    assert options["patches_replace"]["dit"] == {("double_block", 1): earlier}  # input unchanged
    dit = patched["patches_replace"]["dit"]
    assert set(dit) == {("double_block", i) for i in (0, 1, 3, 5, 7, 9, 11)} and patched["other"] == 1
    img = torch.randn(1, VIDEO_TOKENS, WIDTH)
    out = call(dit[("double_block", 1)], img)["img"]
    assert calls == [img.shape] and not torch.allclose(out, img)


def test_mismatched_sizes_are_refused_before_sampling(audio_mods, bg_mods):
    with pytest.raises(ValidationError, match="13 frames"):
        ModeInjection((4, 4, 6), audio=AudioCondition(audio_mods, windows()))
    with pytest.raises(ValidationError) as e:
        ModeInjection(LATENT, background=BackgroundCondition(bg_mods, torch.randn(1, 32, 3, 4, 8)))
    assert e.value.field == "video"
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, windows()))
    with pytest.raises(ValidationError, match="not the size"):
        call(inj.patches()[("double_block", 1)], torch.randn(1, 10, WIDTH))


def test_applying_a_mode_again_replaces_its_patches_and_keeps_an_earlier_one_once(audio_mods, bg_mods):
    # A stateful Raylight worker keeps its patched model: the mode node run again patches it again.
    calls = []

    def earlier(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    bg = BackgroundCondition(bg_mods, torch.randn(1, 32, *LATENT))
    inj = ModeInjection(LATENT, audio=AudioCondition(audio_mods, windows()), background=bg)
    options = {"patches_replace": {"dit": {("double_block", 1): earlier}}}
    once = inj.apply(options)
    twice = inj.apply(once)
    img = torch.randn(1, REF_TOKENS + VIDEO_TOKENS, WIDTH)
    for key in once["patches_replace"]["dit"]:
        calls.clear()
        a = call(once["patches_replace"]["dit"][key], img)["img"]
        b = call(twice["patches_replace"]["dit"][key], img)["img"]
        assert torch.equal(a, b), key  # the audio / background added once, not twice
        assert len(calls) == (key == ("double_block", 1)) * 2  # the earlier patch: once per call
    # Another mode applied over this one replaces it everywhere: block 0 gets back what it had.
    audio_only = ModeInjection(LATENT, audio=AudioCondition(audio_mods, windows(2)))
    swapped = audio_only.apply(twice)["patches_replace"]["dit"]
    assert set(swapped) == {("double_block", i) for i in (1, 3, 5, 7, 9, 11)}
    fresh = audio_only.apply(options)["patches_replace"]["dit"]
    for key in fresh:
        assert torch.equal(call(swapped[key], img)["img"], call(fresh[key], img)["img"]), key
