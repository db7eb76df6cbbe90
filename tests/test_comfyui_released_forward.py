"""How the released-recipe patch meets core's HunyuanVideo forward (COMFYUI_PATH; each tree).

Whatever order core lays its tokens in (0.3.64: video then text; later: text then video, with
`img_slice`), the patch depends on none of it: core's forward gets the first `sum(mask)` text states
and no attention mask, and a DeepCache step is core's own forward with every block but the last
single-stream one passed through. The golden test (test_released_golden.py) proves the numbers;
these tests pin the mechanism down on each tree.
"""

from __future__ import annotations

import pytest
import torch
from local_models import TEXT_DIM, backbone_state_dict

from comfyui_harness import import_comfy, requires_comfyui

pytestmark = requires_comfyui

SCALE = 0.476986


@pytest.fixture(scope="module")
def model():
    import_comfy()
    import comfy.model_management as mm
    import comfy.sd

    from hunyuancustom.local import released

    sd = backbone_state_dict(seed=3, double=2, single=2)
    core = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.float32})
    patched = released.apply_released(core)
    mm.load_models_gpu([patched])
    return patched


def _inputs(seed=0, text=9):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(1, 16, 2, 4, 6, generator=g),
            "context": torch.randn(1, text, TEXT_DIM, generator=g),
            "y": torch.randn(1, 768, generator=g),
            "ref_latent": torch.randn(1, 16, 1, 4, 6, generator=g) * SCALE}


def _call(model, inp, mask, options):
    net = model.model.diffusion_model
    opts = {**model.model_options["transformer_options"], "wrappers": model.wrappers, **options}
    with torch.no_grad():
        return net(inp["x"], torch.tensor([600.0]), inp["context"], y=inp["y"], ref_latent=inp["ref_latent"],
                   attention_mask=mask, transformer_options=opts)


def _recording(model):
    """A clone with a DIFFUSION_MODEL wrapper inside the pack's, recording what core's forward gets."""
    import comfy.patcher_extension as ext

    seen = []

    def record(executor, *args, **kwargs):
        import inspect

        bound = inspect.signature(executor.original).bind(*args, **kwargs).arguments
        seen.append({k: bound.get(k) for k in ("context", "attention_mask", "transformer_options")})
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_record", record)
    return m, seen


def test_core_gets_the_first_sum_text_states_and_no_mask(model):
    from hunyuancustom.local import released

    m, seen = _recording(model)
    inp = _inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 0]])  # the released shape: text, padding, then ones
    out = _call(m, inp, mask, {"cond_or_uncond": [0]})
    assert len(seen) == 1
    got = seen[0]
    assert got["attention_mask"] is None
    assert torch.equal(got["context"], inp["context"][:, :5])
    states, keep = got["transformer_options"][released.TEXT]
    assert torch.equal(states, inp["context"]) and torch.equal(keep, mask.bool())
    # the refiner reads the whole text under the mask: another mask of the same sum differs
    other = _call(model, inp, torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0]]), {"cond_or_uncond": [0]})
    assert not torch.allclose(out, other)


def test_a_mask_of_all_ones_reaches_core_as_no_mask_and_the_whole_text(model):
    m, seen = _recording(model)
    inp = _inputs(seed=1)
    a = _call(m, inp, torch.ones(1, 9, dtype=torch.long), {})
    b = _call(model, inp, None, {})
    assert seen[0]["attention_mask"] is None and seen[0]["context"].shape[1] == 9
    assert torch.equal(a, b)


class _BlockCalls:
    def __init__(self, net):
        self.counts = {}
        self.hooks = []
        for kind in ("double_blocks", "single_blocks"):
            for i, block in enumerate(getattr(net, kind)):
                self.hooks.append(block.register_forward_hook(self._hook((kind, i))))
        for name in ("img_in", "final_layer"):  # core's forward itself ran
            self.hooks.append(getattr(net, name).register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] = self.counts.get(name, 0) + 1
        return hook

    def close(self):
        for h in self.hooks:
            h.remove()


def test_a_deepcache_step_runs_only_the_last_single_block_inside_cores_forward(model):
    """Steps 10 (full) then 11 (cached) of a 30-step run: on step 11 core's forward runs, but only the
    last single-stream block computes, on the input recorded at step 10; the result is the last block
    and core's final layer on that input at step 11's modulation, the same as a full step 11 whose
    earlier blocks were replaced by the recorded input."""
    from hunyuancustom.local import released

    net = model.model.diffusion_model
    fwd = released.released_forward(model)
    sigmas = torch.linspace(1, 0, 31)
    inp = _inputs(seed=2)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 1, 1, 1]])
    calls = _BlockCalls(net)
    try:
        _call(model, inp, mask, {"sample_sigmas": sigmas, "sigmas": sigmas[10:11], "cond_or_uncond": [0]})
        full = dict(calls.counts)
        calls.counts.clear()
        before = dict(fwd.calls)
        _call(model, inp, mask, {"sample_sigmas": sigmas, "sigmas": sigmas[11:12], "cond_or_uncond": [0]})
        cached = dict(calls.counts)
    finally:
        calls.close()
        fwd.forget()  # what the sampler's end (outer_sample) does
    core = {"img_in": 2, "final_layer": 1}  # img_in embeds the video and the reference
    assert full == {**core, **{(k, i): 1 for k in ("double_blocks", "single_blocks") for i in range(2)}}
    assert cached == {**core, ("single_blocks", 1): 1}
    assert fwd.calls["cached"] - before["cached"] == 1 and fwd.calls["full"] == before["full"]


def test_the_cached_step_equals_a_full_step_whose_last_block_gets_the_recorded_input(model):
    """The cached step is core's own tail: the same as a full forward (no DeepCache) in which a patch
    hands the last single block the input recorded at the last full step, bit for bit, whichever
    token order this core uses."""
    from hunyuancustom.local import released

    fwd = released.released_forward(model)
    sigmas = torch.linspace(1, 0, 31)
    inp = _inputs(seed=4)
    step11 = {**inp, "x": _inputs(seed=5)["x"]}  # the sampler moved the latent on
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 1, 1]])
    recorded = []

    def spy(args, extra):  # a user's patch on the last block: the pack keeps it inside its own
        recorded.append(args["img"].clone())
        return extra["original_block"](args)

    m = model.clone()
    m.set_model_patch_replace(spy, "dit", "single_block", 1)
    try:
        _call(m, inp, mask, {"sample_sigmas": sigmas, "sigmas": sigmas[10:11], "cond_or_uncond": [0]})
        cached_out = _call(m, step11, mask, {"sample_sigmas": sigmas, "sigmas": sigmas[11:12],
                                          "cond_or_uncond": [0]})
    finally:
        fwd.forget()
    assert len(recorded) == 2 and torch.equal(recorded[0], recorded[1])  # replayed: the recorded input

    def substitute(args, extra):
        return extra["original_block"]({**args, "img": recorded[0].clone()})

    full = model.clone()
    full.set_model_patch_replace(substitute, "dit", "single_block", 1)
    want = _call(full, step11, mask, {"cond_or_uncond": [0]})  # no sample_sigmas: no DeepCache
    assert torch.equal(cached_out, want)
    # and the cache matters: a full step 11 gives another result
    assert not torch.allclose(cached_out, _call(model, step11, mask, {"cond_or_uncond": [0]}))
