"""Raylight's USP HunyuanVideo code in 2 CPU processes over gloo, for the contract test.

`prepare_raylight` copies Raylight's package (RAYLIGHT_PATH is its repo root) to a temp folder and
applies contrib/raylight/*.patch there. `run_workers` starts 2 processes of this file; each
initialises xFuser's groups over gloo (Ulysses degree 2, or CFG degree 2), installs Raylight's
injection exactly as its worker does (`patch_usp`: an ON_LOAD callback; `patch_cfg`: a
DIFFUSION_MODEL wrapper), runs every case of `CASES` on core's HunyuanVideo with the pack's patches,
and saves the results. The test runs the same cases on core in its own process and compares.

The model is a tiny float32 HunyuanVideo with the real architecture (width 256 = 2 heads of 128,
2 double and 2 single blocks), random weights from tests/local_models.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "contrib" / "raylight"
HIDDEN, TEXT_DIM = 256, 32


def raylight_root() -> Path | None:
    value = os.environ.get("RAYLIGHT_PATH")
    return Path(value) if value else None


def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def prepare_raylight(dest: Path, patches: list[Path]) -> Path:
    """A copy of Raylight's package under dest/raylight with `patches` applied (in order); returns
    the folder to put on sys.path. RAYLIGHT_PATH itself is never written."""
    src = raylight_root() / "src" / "raylight"
    work = dest / "src"
    shutil.copytree(src, work / "raylight", ignore=shutil.ignore_patterns("__pycache__"))
    for p in patches:
        done = subprocess.run(["git", "apply", "--whitespace=nowarn", str(p)], cwd=dest,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{p.name} does not apply to Raylight at {src}: {done.stderr}")
    return work


def run_workers(raylight_dir: Path, engine: str, out: Path, port: int, timeout: float = 300) -> list[dict]:
    """Run every case in 2 processes (engine "usp" or "cfg"); each rank's results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}
    procs = []
    for rank in range(2):
        log = open(out / f"{engine}-{rank}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, __file__, str(rank), str(raylight_dir), engine,
                                        str(out / f"{engine}-{rank}.pt")],
                                       env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                       stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=timeout)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    results = []
    for rank, (p, _) in enumerate(procs):
        path = out / f"{engine}-{rank}.pt"
        if p.returncode or not path.is_file():
            tail = (out / f"{engine}-{rank}.log").read_text()[-4000:]
            raise RuntimeError(f"{engine} rank {rank} exited with {p.returncode}:\n{tail}")
        results.append(torch.load(path))
    return results


# --- the model and the cases (run both here, on core alone, and in the workers) -------------------


def base_model(prepare=None):
    """The tiny model; `prepare` installs an engine on it before model management loads it."""
    import comfy.model_management as mm
    import comfy.sd
    from local_models import backbone_state_dict

    sd = backbone_state_dict(seed=7, double=2, single=2, hidden=HIDDEN, dtype=torch.float32)
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
    if prepare is not None:
        prepare(model)
    mm.load_models_gpu([model])
    return model


def _inputs(seed, batch=1, text=8, latent=(2, 4, 4), ref=True):
    g = torch.Generator().manual_seed(seed)
    t, h, w = latent
    return {"x": torch.randn(batch, 16, t, h, w, generator=g),
            "context": torch.randn(batch, text, TEXT_DIM, generator=g),
            "y": torch.randn(batch, 768, generator=g),
            "ref_latent": (torch.randn(batch, 16, 1, h, w, generator=g) * 0.5) if ref else None}


def _mask(*sums, text):
    """The released mask shape: the first n tokens, then padding (n of `text`)."""
    return torch.tensor([[1] * n + [0] * (text - n) for n in sums])


def forward(model, inp, mask=None, timestep=600.0, **options):
    """Core's forward on `model` as the sampler calls it: model management loads the patcher
    (object patches, ON_LOAD callbacks: Raylight's injection), the DIFFUSION_MODEL wrappers run."""
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    net = model.model.diffusion_model
    opts = {**model.model_options["transformer_options"], "wrappers": model.wrappers, **options}
    b = inp["x"].shape[0]
    with torch.no_grad():
        return net(inp["x"], torch.full((b,), timestep), inp["context"], y=inp["y"],
                   ref_latent=inp["ref_latent"], attention_mask=mask, transformer_options=opts)


def _released(model, **kw):
    from hunyuancustom.local import released

    return released.apply_released(model, shift=None, **kw)


def _audio_modules():
    from modes_models import audio_state_dict

    from hunyuancustom.modes.audio import AudioModules

    mods = AudioModules.from_state_dict(audio_state_dict(width=HIDDEN, dtype=torch.float32))
    return AudioModules(mods.audio_proj, list(mods.audio_models)[:2], insert_after=(0, 1))


def _modes(model, latent, audio=False, background=False, seed=11):
    from modes_models import editing_state_dict

    from hunyuancustom.modes.editing import BackgroundModules
    from hunyuancustom.modes.inject import AudioCondition, BackgroundCondition, ModeInjection

    g = torch.Generator().manual_seed(seed)
    t = latent[0]
    a = AudioCondition(_audio_modules(), torch.randn(1, 4 * t - 3, 10, 3, 16, generator=g), strength=1.0) \
        if audio else None
    bg = BackgroundModules.from_state_dict(editing_state_dict(width=HIDDEN, dtype=torch.float32))
    b = BackgroundCondition(bg, torch.randn(1, 32, *latent, generator=g)) if background else None
    return ModeInjection(latent, audio=a, background=b).patch_model(model)


def case_plain(base):
    """C1: core's forward, no pack patch, 8 text / 12 image tokens. Needs R7 (xfuser 0.7)."""
    return forward(base, _inputs(1))


def case_cfg_batch(base):
    """C2: a pos+neg batch through the pack's wrapper (one sample at a time), masks of even sums.
    Needs R7; the pack's refiner calling its blocks' class forward (P3)."""
    inp = _inputs(2, batch=2, text=10)
    return forward(_released(base, deepcache=False), inp, _mask(6, 4, text=10), cond_or_uncond=[0, 1])


def case_released_masks(base):
    """C3: the released text masks, an odd sum(mask) (5 of 9). Needs R2 (text never padded), P3."""
    return forward(_released(base, deepcache=False), _inputs(3, text=9), _mask(5, text=9), cond_or_uncond=[0])


def case_deepcache(base):
    """C4: DeepCache, step 10 (full) then 11 (cached) of 30. Layout-agnostic (P4); needs R7."""
    m = _released(base)
    sigmas = torch.linspace(1, 0, 31)
    mask = _mask(6, text=8)
    out = {}
    for step, seed in ((10, 4), (11, 5)):
        out[f"step{step}"] = forward(m, _inputs(seed), mask, sample_sigmas=sigmas,
                                     sigmas=sigmas[step:step + 1], cond_or_uncond=[0])
    from hunyuancustom.local import released

    calls = released.released_forward(m).calls
    out["calls"] = torch.tensor([calls["full"], calls["cached"]])
    return out


def case_editing(base):
    """C5: the editing mode (background at double block 0) over the released recipe.
    Needs R1 (block_wrap), R4 (the layout) with the pack's gather/shard (P5)."""
    m = _modes(_released(base, deepcache=False), (2, 4, 4), background=True)
    return forward(m, _inputs(6), _mask(6, text=8), cond_or_uncond=[0])


def case_audio(base):
    """C6: the audio mode (after double blocks 0 and 1), positive and negative branches in one batch.
    Needs R1, R4, P5."""
    m = _modes(_released(base, deepcache=False), (2, 4, 4), audio=True)
    return forward(m, _inputs(7, batch=2), _mask(6, 4, text=8), cond_or_uncond=[0, 1])


def case_cfg_parallel(base):
    """C7: CFG-parallel (engine "cfg"): a pos+neg batch; the audio mode must give the negative branch
    zero audio, and a wrapper inside the pack's sees this rank's branch only. Needs R5."""
    import comfy.patcher_extension as ext

    seen = []

    def spy(executor, *args, **kwargs):  # inside the pack's wrapper (added after it)
        from hunyuancustom.local.core_call import Signature

        call = Signature.of(executor.original).bind(args, kwargs)
        seen.append((call["x"].shape[0], list(call["transformer_options"].get("cond_or_uncond") or [])))
        return executor(*args, **kwargs)

    m = _modes(_released(base, deepcache=False), (2, 4, 4), audio=True)
    m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "contract_spy", spy)
    keys = list(m.wrappers.get(ext.WrappersMP.DIFFUSION_MODEL, {}))
    out = forward(m, _inputs(8, batch=2), _mask(6, 4, text=8), cond_or_uncond=[0, 1])
    return {"out": out, "seen": seen, "wrapper_keys": [str(k) for k in keys]}


def case_odd_text(base):
    """C8a: 7 text tokens (odd), no mask, through the pack's wrapper. Needs R2."""
    return forward(_released(base, deepcache=False), _inputs(9, text=7), None, cond_or_uncond=[0])


def case_odd_image(base):
    """C8b: 3 image tokens (odd, no reference): refused by the pack before any work (P6)."""
    return forward(_released(base, deepcache=False), _inputs(10, latent=(1, 2, 6), ref=False), None,
                   cond_or_uncond=[0])


USP_CASES = {"plain": case_plain, "cfg_batch": case_cfg_batch, "released_masks": case_released_masks,
             "deepcache": case_deepcache, "editing": case_editing, "audio": case_audio,
             "odd_text": case_odd_text, "odd_image": case_odd_image}
CFG_CASES = {"cfg_parallel": case_cfg_parallel}


def run_cases(cases: dict, base) -> dict:
    """{name: result, or {"error": "Type: message"}}: a case failing does not stop the others."""
    out = {}
    for name, fn in cases.items():
        try:
            out[name] = fn(base)
        except Exception as e:  # noqa: BLE001 (reported per case)
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
    return out


# --- the worker process ------------------------------------------------------------------------------


def _import_raylight(raylight_dir: str, engine: str):
    """Raylight's modules set up as its Ray worker does, on the CPU over gloo."""
    sys.path.insert(0, raylight_dir)
    cuda_available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # xFuser defines its attention classes only with CUDA
    try:
        import raylight  # noqa: F401 (installs Raylight's xFuser shim)
        import xfuser.envs as envs
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention  # noqa: F401
    finally:
        torch.cuda.is_available = cuda_available
    envs.get_device = lambda local_rank: torch.device("cpu")
    envs.get_torch_distributed_backend = lambda: "gloo"
    if hasattr(envs, "get_device_name"):  # Raylight's shim lacks it without contrib 01 (R7)
        envs.get_device_name = lambda: "cpu"
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(rank=int(os.environ["RANK"]), world_size=2, backend="gloo")
    if engine == "usp":
        initialize_model_parallel(ulysses_degree=2)
    else:
        initialize_model_parallel(classifier_free_guidance_degree=2)
    from raylight.distributed_modules import attention

    attention.set_attn_type("TORCH_MATH")
    attention.set_sync_ulysses(False)


def worker_main(rank: str, raylight_dir: str, engine: str, out: str):
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    from comfyui_harness import import_comfy

    import_comfy()
    _import_raylight(raylight_dir, engine)
    import comfy.patcher_extension as ext

    if engine == "usp":  # Raylight's RayWorker.patch_usp
        from raylight.distributed_modules.usp import USPInjectRegistry

        def prepare(model):
            model.add_callback(ext.CallbacksMP.ON_LOAD, USPInjectRegistry.inject)

        cases = USP_CASES
    else:  # RayWorker.patch_cfg
        from raylight.distributed_modules.cfg import CFGParallelInjectRegistry

        def prepare(model):
            model.add_wrapper(ext.WrappersMP.DIFFUSION_MODEL, CFGParallelInjectRegistry.inject(model))

        cases = CFG_CASES
    torch.save(run_cases(cases, base_model(prepare)), out)


if __name__ == "__main__":
    worker_main(*sys.argv[1:])
