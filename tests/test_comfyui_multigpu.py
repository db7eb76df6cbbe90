"""The pack's MODEL under core's multi-GPU work units (COMFYUI_PATH, in-process; core 0.33+).

Core's "MultiGPU CFG Split" (`comfy.multigpu.create_multigpu_deepclones`) reloads the MODEL for
each extra device through its loader's factory (`cached_patcher_init`), re-applies every patch to
that clone, and at each step runs the CFG branches in one thread per device, each on its device's
clone with the main MODEL's wrappers and block patches. On the CPU two device entries exist:
`torch.device("cpu")` and `torch.device("cpu", 0)` are different keys, while tensors on both report
"cpu"; core is told those are its devices, and everything else is core's own code: the split, the
threads, the sampler. A second GPU differs in one more way that a CPU cannot show by itself: each
thread gets `sample_sigmas.to(device)`, a new tensor at every call; an outer wrapper reproduces
that here.

Exact equality (torch.equal) with the same MODEL on one device: the released recipe with CFG and
DeepCache at 30 steps, the audio mode (negative branch: zero audio) and the editing mode; the
deep clone's refiner patch and mode modules share no tensor with the original's; two threads
calling the patched model at once give what one device gives.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from local_models import backbone_state_dict, write_released_pt
from modes_models import audio_state_dict, editing_state_dict

from comfyui_harness import comfyui_path, import_comfy, requires_comfyui

pytestmark = requires_comfyui

WIDTH, TEXT_DIM = 128, 32
LATENT = (3, 4, 6)  # t, h, w: 9 frames of 48x32
DEVICES = (torch.device("cpu"), torch.device("cpu", 0))
STEPS = 30  # the released DeepCache runs at exactly 30 steps


def _multigpu_core():
    comfy = import_comfy()
    import comfy.model_patcher as patcher

    if not hasattr(patcher.ModelPatcher, "deepclone_multigpu"):
        pytest.skip(f"core at {comfyui_path()} has no multi-GPU work units (comfy.multigpu, "
                    "ModelPatcher.deepclone_multigpu: ComfyUI 0.33+)")
    return comfy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny released-layout checkpoint (12 double blocks: the audio layers go up to 11) with both
    the audio and the editing modules, float32."""
    path = tmp_path_factory.mktemp("mgpu") / "hc_tiny_modes.pt"
    sd = backbone_state_dict(seed=5, double=12, single=2, hidden=WIDTH, text_dim=TEXT_DIM,
                             dtype=torch.float32)
    write_released_pt(path, {**sd, **audio_state_dict(width=WIDTH, dtype=torch.float32),
                             **editing_state_dict(width=WIDTH, dtype=torch.float32)})
    return path


@pytest.fixture
def two_devices(monkeypatch):
    """Core sees two devices (the CPU twice); loaded models are dropped afterwards."""
    comfy = _multigpu_core()
    mm = comfy.model_management
    monkeypatch.setattr(mm, "get_all_torch_devices", lambda exclude_current=False: list(DEVICES))
    yield comfy
    mm.unload_all_models()


def _pack_model(checkpoint, mode=None, before_mode=None):
    """Load Model (Local)'s MODEL (the pack's loader, the released recipe), with a mode's patches;
    returns (MODEL, ModeInjection or None). An outer wrapper first in line stands in for what a second
    GPU does to sample_sigmas (see the module's docstring). `before_mode`: a node applied to the
    MODEL before the mode node's patches."""
    import comfy.patcher_extension as ext

    from hunyuancustom.local import released
    from hunyuancustom.local.comfy_model import EXTRAS_ATTACHMENT, load_model
    from hunyuancustom.modes.checkpoint import mode_modules_from_extras
    from hunyuancustom.modes.inject import AudioCondition, BackgroundCondition, ModeInjection

    base, _ = load_model(checkpoint, weight_dtype="fp32")
    base.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_gpu_sigmas", _new_sigmas_per_call)
    model = released.apply_released(base)
    if mode is None:
        return model, None
    mods = mode_modules_from_extras(base.get_attachment(EXTRAS_ATTACHMENT), "test")
    if before_mode is not None:
        model = before_mode(model)
    g = torch.Generator().manual_seed(11)
    if mode == "audio":
        windows = torch.randn(1, 4 * LATENT[0] - 3, 10, 3, 16, generator=g)
        inj = ModeInjection(LATENT, audio=AudioCondition(mods.audio, windows, 0.8))
    else:
        inj = ModeInjection(LATENT, background=BackgroundCondition(mods.editing, torch.randn(1, 32, *LATENT,
                                                                                            generator=g)))
    return inj.patch_model(model), inj


def _bound(executor, args, kwargs):
    import inspect

    bound = inspect.signature(executor.original).bind(*args, **kwargs)
    return bound, bound.arguments.get("transformer_options") or {}


def _new_sigmas_per_call(executor, *args, **kwargs):
    # on a second GPU core hands its thread `sample_sigmas.to(device)`: a new tensor each call
    bound, options = _bound(executor, args, kwargs)
    sigmas = options.get("sample_sigmas")
    if options.get("multigpu_thread_device") == DEVICES[1] and isinstance(sigmas, torch.Tensor):
        bound.arguments["transformer_options"] = {**options, "sample_sigmas": sigmas.clone()}
    return executor(*bound.args, **bound.kwargs)


def _split(comfy, model):
    """Core's own "MultiGPU CFG Split" node on the MODEL, 2 GPUs."""
    import comfy_extras.nodes_multigpu as nodes

    out = nodes.MultiGPUCFGSplitNode.execute(model, 2)
    split = out.result[0] if hasattr(out, "result") else out[0]
    clones = split.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [DEVICES[1]]
    return split


def _conds():
    g = torch.Generator().manual_seed(2)
    t, h, w = LATENT
    mask_pos = torch.tensor([[1] * 5 + [0] * 2 + [1] * 2])  # the released shape: text, padding, ones
    mask_neg = torch.tensor([[1] * 3 + [0] * 4 + [1] * 2])
    positive = [[torch.randn(1, 9, TEXT_DIM, generator=g), {
        "pooled_output": torch.randn(1, 768, generator=g), "attention_mask": mask_pos,
        "ref_latent": torch.randn(1, 16, 1, h, w, generator=g)}]]
    negative = [[torch.randn(1, 9, TEXT_DIM, generator=g), {
        "pooled_output": torch.randn(1, 768, generator=g), "attention_mask": mask_neg,
        "ref_latent": torch.randn(1, 16, 1, h, w, generator=g)}]]
    return positive, negative


def _sample(comfy, model):
    positive, negative = _conds()
    latent = torch.zeros(1, 16, *LATENT)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    return comfy.sample.sample(model, noise, STEPS, 7.5, "euler", "simple", positive, negative, latent,
                               seed=7, disable_pbar=True)


def _recording(model):
    """A clone whose outermost wrapper records (thread device, cond_or_uncond) of each call."""
    import comfy.patcher_extension as ext

    seen = []

    def record(executor, *args, **kwargs):
        options = _bound(executor, args, kwargs)[1]
        seen.append((options.get("multigpu_thread_device"), tuple(options.get("cond_or_uncond") or ())))
        return executor(*args, **kwargs)

    m = model.clone()
    wrappers = m.wrappers.setdefault(ext.WrappersMP.DIFFUSION_MODEL, {})
    m.wrappers[ext.WrappersMP.DIFFUSION_MODEL] = {"test_record": [record], **wrappers}  # outermost
    return m, seen


def _params(module) -> set[int]:
    return {id(p) for p in module.parameters()} | {p.data_ptr() for p in module.parameters()}


# --- core's multi-GPU: one device and two give the same latent -------------------------------------

def test_released_recipe_with_deepcache_split_over_two_devices_equals_one(two_devices, checkpoint):
    from hunyuancustom.local import released

    comfy = two_devices
    model, _ = _pack_model(checkpoint)
    one = _sample(comfy, model)
    split, seen = _recording(_split(comfy, model))
    fwd = released.released_forward(split)
    fwd.device_calls.clear()
    two = _sample(comfy, split)
    assert torch.equal(one, two)
    # the work went to both devices, each its branch (core splits the two CFG branches)
    assert set(seen) == {(DEVICES[0], (0,)), (DEVICES[1], (1,))}
    # DeepCache really ran on both: its 8 cached steps per branch, each on its device
    assert fwd.device_calls == {DEVICES[0]: {"full": 22, "cached": 8}, DEVICES[1]: {"full": 22, "cached": 8}}


@pytest.mark.parametrize("mode,split_first", [("audio", False), ("editing", False), ("audio", True)],
                         ids=["audio", "editing", "audio-split-before-the-mode-node"])
def test_a_mode_split_over_two_devices_equals_one(two_devices, checkpoint, mode, split_first):
    """Each device runs its own deep-cloned module set; the negative branch (device 1) gets the
    audio layers fed with zero audio, the positive (device 0) the clip's audio. The split node may
    come before the mode node too: core then deep-clones the modules when it matches its clones to
    the MODEL (at sampling; done here first to find them)."""
    from hunyuancustom.modes.audio import latent_frame_tokens

    comfy = two_devices
    model, inj = _pack_model(checkpoint, mode)
    one = _sample(comfy, model)
    if split_first:
        model, inj = _pack_model(checkpoint, mode, before_mode=lambda m: _split(comfy, m))
        split, seen = _recording(model)
        split.match_multigpu_clones()
    else:
        split, seen = _recording(_split(comfy, model))
    clone = split.get_additional_models_with_key("multigpu")[0]
    role = "audio" if mode == "audio" else "background"
    own = inj.audio.modules if mode == "audio" else inj.background.modules
    theirs = [p.model for p in clone.get_additional_models_with_key("hunyuancustom_modes")]
    assert len(theirs) == 1 and _params(theirs[0]).isdisjoint(_params(own))
    calls = {"own": [], "clone": []}
    first = (lambda m: m.audio_models[0]) if mode == "audio" else (lambda m: m.bg_in)
    hooks = [first(m).register_forward_hook(lambda mod, args, out, k=k: calls[k].append(args[0].clone()))
             for k, m in (("own", own), ("clone", theirs[0]))]
    try:
        two = _sample(comfy, split)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(one, two)
    assert set(seen) == {(DEVICES[0], (0,)), (DEVICES[1], (1,))}
    assert inj.modules_for(role, DEVICES[1]) is theirs[0] and inj.modules_for(role, DEVICES[0]) is own
    assert calls["own"] and calls["clone"]  # each device used its own module set
    if mode == "audio":
        with torch.no_grad():
            proj = own.audio_proj
            windows = inj.audio.windows
            zero = latent_frame_tokens(proj(torch.zeros_like(windows)), LATENT[0])
            audio = latent_frame_tokens(proj(windows), LATENT[0])
        assert all(torch.equal(x, audio) for x in calls["own"])  # positive: the clip's audio
        assert all(torch.equal(x, zero) for x in calls["clone"])  # negative: zero audio


# --- the deep clone itself -------------------------------------------------------------------------

def test_a_deep_clone_runs_on_its_own_modules_and_gives_the_same_result(two_devices, checkpoint):
    from hunyuancustom.local.released import ReleasedTokenRefiner

    _ = two_devices
    model, inj = _pack_model(checkpoint, "audio")
    original = model.clone()  # patched in place by patch_model; the MODEL itself stays as it is
    clone = original.deepclone_multigpu(new_load_device=DEVICES[1])
    assert clone.cached_patcher_init is not None  # the reload factory follows the clone
    outputs = {}
    for name, patcher, device in (("original", original, DEVICES[0]), ("clone", clone, DEVICES[1])):
        patcher.patch_model()
        try:
            net = patcher.model.diffusion_model
            refiner = net.txt_in
            assert isinstance(refiner, ReleasedTokenRefiner)
            outputs[name] = (_forward(patcher, device), _params(refiner), _params(net))
        finally:
            patcher.unpatch_model()
    (a, refiner_a, net_a), (b, refiner_b, net_b) = outputs["original"], outputs["clone"]
    assert refiner_b <= net_b and refiner_b.isdisjoint(net_a) and refiner_a.isdisjoint(refiner_b)
    mods_a = [p.model for p in original.get_additional_models_with_key("hunyuancustom_modes")]
    mods_b = [p.model for p in clone.get_additional_models_with_key("hunyuancustom_modes")]
    assert mods_a == [inj.audio.modules] and len(mods_b) == 1
    assert _params(mods_b[0]).isdisjoint(_params(mods_a[0]))
    assert inj.modules_for("audio", DEVICES[1]) is mods_b[0]
    assert torch.equal(a, b)
    # core matches its clones to the MODEL again at each sampling (a clone of the main MODEL on the
    # clone's model): the refiner patch there is on that model's layers too
    main = model.clone()
    main.set_additional_models("multigpu", [clone])
    main.match_multigpu_clones()
    (matched,) = main.get_additional_models_with_key("multigpu")
    refiner = matched.object_patches["diffusion_model.txt_in"]
    assert isinstance(refiner, ReleasedTokenRefiner) and matched.model is clone.model
    assert _params(refiner) <= _params(clone.model) and _params(refiner).isdisjoint(_params(model.model))


def _forward(patcher, device=None, step=None, sigmas=None, seed=3):
    """One call of the patched model's forward through its wrappers, as a device thread makes it."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = LATENT
    options = {**patcher.model_options.get("transformer_options", {}), "wrappers": patcher.wrappers,
               "cond_or_uncond": [0]}
    if device is not None:
        options["multigpu_thread_device"] = device
    if step is not None:
        options.update(sample_sigmas=sigmas, sigmas=sigmas[step:step + 1])
    with torch.no_grad():
        return patcher.model.diffusion_model(
            torch.randn(1, 16, t, h, w, generator=g), torch.tensor([600.0]),
            torch.randn(1, 9, TEXT_DIM, generator=g), y=torch.randn(1, 768, generator=g),
            ref_latent=torch.randn(1, 16, 1, h, w, generator=g),
            attention_mask=torch.tensor([[1] * 6 + [0] * 2 + [1]]), transformer_options=options)


# --- two threads at once ---------------------------------------------------------------------------

def test_two_threads_calling_the_patched_model_at_once_equal_one_device(two_devices, checkpoint):
    """Steps 9 to 12 of a 30-step DeepCache run (10 full, 11 and 12 cached) in two threads at once,
    each as core's multi-GPU thread for its device with its own inputs and its own copy of the
    sigmas (a second GPU's), in lock step; the same calls one after the other on one device give
    the same outputs, and each thread's cached steps were its own."""
    from hunyuancustom.local import released

    _ = two_devices
    model, _inj = _pack_model(checkpoint, "audio")
    model.patch_model()
    try:
        fwd = released.released_forward(model)
        sigmas = torch.linspace(1, 0, STEPS + 1)
        steps = (9, 10, 11, 12)

        def run(device, seed, barrier=None):
            out = []
            own = sigmas.clone()
            for step in steps:
                if barrier is not None:
                    barrier.wait()
                out.append(_forward(model, device, step, own.clone() if device == DEVICES[1] else own,
                                    seed=seed + step))
            return out

        want = {d: run(d, seed) for d, seed in zip(DEVICES, (100, 200), strict=True)}
        fwd.forget()
        fwd.device_calls.clear()
        barrier = threading.Barrier(2)
        got, errors = {}, []

        def worker(device, seed):
            try:
                got[device] = run(device, seed, barrier)
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)
                barrier.abort()

        pairs = zip(DEVICES, (100, 200), strict=True)
        threads = [threading.Thread(target=worker, args=pair) for pair in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    finally:
        model.unpatch_model()
        released.released_forward(model).forget()
    for d in DEVICES:
        assert all(torch.equal(a, b) for a, b in zip(got[d], want[d], strict=True))
    assert fwd.device_calls == {d: {"full": 2, "cached": 2} for d in DEVICES}


# --- older cores ---------------------------------------------------------------------------------

def test_the_reload_factory_gives_a_fresh_equal_model_and_is_harmless_without_multigpu(checkpoint):
    """On every core: Load Model (Local)'s patcher names its reload factory, which loads the same
    weights afresh; on a core without multi-GPU the patches register no multi-GPU callbacks and
    sampling runs as before."""
    comfy = import_comfy()
    import comfy.patcher_extension as ext

    from hunyuancustom.local.comfy_model import load_model, reload_model

    base, _ = load_model(checkpoint, weight_dtype="fp32")
    factory, args = base.cached_patcher_init
    assert factory is reload_model
    fresh = factory(*args)
    a, b = base.model.diffusion_model.state_dict(), fresh.model.diffusion_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].data_ptr() != b[k].data_ptr() for k in a)
    model, inj = _pack_model(checkpoint, "audio")
    multigpu = [getattr(ext.CallbacksMP, n, None)
                for n in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES")]
    if None in multigpu:  # this core has no multi-GPU work units
        assert not any("multigpu" in str(k) for k in model.callbacks)
    else:
        keys = {"hunyuancustom_release", "hunyuancustom_modes"}
        assert all(set(model.callbacks[c]) == keys for c in multigpu)
    out = _sample(comfy, model)
    assert out.shape == (1, 16, *LATENT) and bool(torch.isfinite(out).all())
