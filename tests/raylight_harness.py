"""Raylight's USP HunyuanVideo code in 2 CPU processes over gloo, for the contract test.

`prepare_raylight` copies Raylight's package (RAYLIGHT_PATH is its repo root) to a temp folder and
applies contrib/raylight/*.patch there (all, or some: the runs that prove a fix is needed).
`write_models` saves the model and the mode checkpoints as files, as RayUNETLoader and the (Ray)
mode nodes read them; `ship` cloudpickles the pack's patches as the (Ray) nodes make them
(`hunyuancustom.raylight.transport.worker_function`, in the test process, where the pack is imported
under ComfyUI's module name). `run_workers` starts 2 processes of this file; each loads the shipped
functions before anything of the pack is importable (the transport imports it by file location),
initialises xFuser's groups over gloo and, for each engine in turn (Ulysses degree 2, then CFG
degree 2), installs Raylight's injection exactly as its worker does (`patch_usp`: an ON_LOAD
callback; `patch_cfg`: a DIFFUSION_MODEL wrapper), runs the engine's cases on core's HunyuanVideo
with every shipped patch applied TWICE (a Raylight worker keeps its patched MODEL), and saves the
results. The test runs the same cases on core in its own process with the one-GPU patches applied
once (`OneDevice`) and compares.

The model is a tiny float32 HunyuanVideo with the real architecture (width 256 = 2 heads of 128,
12 double blocks, as the audio mode's six layers need, and 2 single blocks), random weights from
tests/local_models.py; the mode modules are random too (tests/modes_models.py).
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
TESTS = REPO / "tests"
HIDDEN, TEXT_DIM, DOUBLE, SINGLE = 256, 32, 12, 2
LATENT = (2, 4, 4)  # the modes' clip: 5 frames, 2 x 2 tokens a frame
RELEASED_SHIFT, EDITING_SHIFT, AUDIO_STRENGTH = 13.0, 5.0, 1.0  # the (Ray) nodes' values


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


def comfyui_module_name() -> str:
    """The name ComfyUI imports this pack under (core's `load_custom_node`: its folder's path with
    "." as "_x_"): no process but the one that loaded it can import it."""
    return str(REPO).replace(".", "_x_")


def run_workers(raylight_dir: Path, engines: list[str], out: Path, port: int, shipped: Path,
                models: dict[str, Path], only: list[str] | None = None, timeout: float = 300) -> list[dict]:
    """Run the cases of `engines` ("usp", "cfg"; `only` these cases) in 2 processes; each rank's
    {"transport": ..., engine: {case: result}}."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the pack must not be on the path
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    tag = out.name
    procs = []
    for rank in range(2):
        log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        args = [sys.executable, __file__, str(raylight_dir), ",".join(engines), ",".join(only or []),
                str(shipped), str(models["model"]), comfyui_module_name(), str(out / f"rank{rank}.pt")]
        procs.append((subprocess.Popen(args, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                       cwd=out, stdout=log, stderr=subprocess.STDOUT), log))
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
        path = out / f"rank{rank}.pt"
        if p.returncode or not path.is_file():
            tail = (out / f"rank{rank}.log").read_text()[-4000:]
            raise RuntimeError(f"{tag} rank {rank} exited with {p.returncode}:\n{tail}")
        results.append(torch.load(path))
    return results


# --- what the (Ray) nodes read and ship, made in the test process ---------------------------------


def write_models(dest: Path) -> dict[str, Path]:
    """The model file (what RayUNETLoader loads in each worker) and the mode checkpoints (what the
    mode (Ray) nodes name), float32."""
    from local_models import backbone_state_dict
    from modes_models import audio_state_dict, editing_state_dict
    from safetensors.torch import save_file

    files = {name: dest / f"{name}.safetensors" for name in ("model", "audio", "editing")}
    save_file(backbone_state_dict(seed=7, double=DOUBLE, single=SINGLE, hidden=HIDDEN, dtype=torch.float32),
              str(files["model"]))
    save_file(audio_state_dict(seed=1, width=HIDDEN, dtype=torch.float32), str(files["audio"]))
    save_file(editing_state_dict(seed=2, width=HIDDEN, dtype=torch.float32), str(files["editing"]))
    return files


def mode_inputs() -> dict[str, torch.Tensor]:
    """What the mode nodes prepare in ComfyUI's process: audio windows, the source latent."""
    from modes_models import WHISPER_LAYERS, WHISPER_WIDTH, WINDOW

    g = torch.Generator().manual_seed(11)
    t = LATENT[0]
    return {"windows": torch.randn(1, 4 * t - 3, WINDOW, WHISPER_LAYERS + 1, WHISPER_WIDTH, generator=g),
            "background": torch.randn(1, 32, *LATENT, generator=g)}


def shipped_functions(transport, models: dict[str, Path]) -> dict:
    """The functions Released Recipe / Audio-Driven / Video-Driven (Ray) ship, made by `transport`
    (the pack's module as ComfyUI imported it)."""
    make = transport.worker_function
    inp = mode_inputs()
    return {
        "released": make("apply_released_recipe", deepcache=False, flow_shift=RELEASED_SHIFT),
        "released_deepcache": make("apply_released_recipe", deepcache=True, flow_shift=RELEASED_SHIFT),
        "audio": make("apply_audio_mode", checkpoint=str(models["audio"]), latent_shape=LATENT,
                      windows=inp["windows"], strength=AUDIO_STRENGTH),
        "editing": make("apply_editing_mode", checkpoint=str(models["editing"]), background=inp["background"],
                        flow_shift=EDITING_SHIFT),
    }


def ship(fns: dict, by_reference, dest: Path) -> Path:
    """cloudpickle `fns` (as Ray does) to `dest`; `by_reference`, a pack function pickled under
    ComfyUI's module name, next to it: what the workers could not load."""
    import cloudpickle

    dest.write_bytes(cloudpickle.dumps(fns))
    dest.with_suffix(".byref").write_bytes(cloudpickle.dumps(by_reference))
    return dest


class OneDevice:
    """The patches as the one-GPU nodes make them, applied once: the reference."""

    def __init__(self, models: dict[str, Path]):
        self.models = models
        self.inputs = mode_inputs()

    def released(self, model, deepcache: bool = False):
        from hunyuancustom.local.released import apply_released

        return apply_released(model, deepcache=deepcache, shift=RELEASED_SHIFT)

    def audio(self, model):
        from hunyuancustom.modes.checkpoint import load_mode_modules
        from hunyuancustom.modes.patching import patch_audio

        mods = load_mode_modules(self.models["audio"]).require_audio()
        return patch_audio(model, mods, LATENT, self.inputs["windows"], AUDIO_STRENGTH)

    def editing(self, model):
        from hunyuancustom.modes.checkpoint import load_mode_modules
        from hunyuancustom.modes.patching import patch_editing

        mods = load_mode_modules(self.models["editing"]).require_editing()
        return patch_editing(model, mods, self.inputs["background"], EDITING_SHIFT)


class Shipped:
    """The functions the (Ray) nodes ship, each applied twice, as on a Raylight worker whose node
    ran again (the worker keeps its patched MODEL)."""

    def __init__(self, fns: dict):
        self.fns = fns

    def _twice(self, name, model):
        return self.fns[name](self.fns[name](model))

    def released(self, model, deepcache: bool = False):
        return self._twice("released_deepcache" if deepcache else "released", model)

    def audio(self, model):
        return self._twice("audio", model)

    def editing(self, model):
        return self._twice("editing", model)


# --- the model and the cases (run both here, on core alone, and in the workers) -------------------


def base_model(path: Path, prepare=None):
    """The tiny model, loaded from its file as Raylight's loader does (core's
    `load_diffusion_model`); `prepare` installs an engine on it before model management loads it."""
    import comfy.model_management as mm
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    if prepare is not None:
        prepare(model)
    mm.load_models_gpu([model])
    return model


def _inputs(seed, batch=1, text=8, latent=LATENT, ref=True):
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


# Each case takes the base model and the patches (`OneDevice` here, `Shipped` in the workers: the
# released recipe and the modes come only from there); the docstrings name the fixes each needs.


def case_plain(base, patches):
    """C1: core's forward, no pack patch, 8 text / 12 image tokens. Needs R7 (xfuser 0.7)."""
    return forward(base, _inputs(1))


def case_cfg_batch(base, patches):
    """C2: a pos+neg batch through the pack's wrapper (one sample at a time), masks of even sums.
    Needs R7; the pack's refiner calling its blocks' class forward (P3)."""
    inp = _inputs(2, batch=2, text=10)
    return forward(patches.released(base), inp, _mask(6, 4, text=10), cond_or_uncond=[0, 1])


def case_released_masks(base, patches):
    """C3: the released text masks, an odd sum(mask) (5 of 9). Needs R2 (text never padded), P3."""
    return forward(patches.released(base), _inputs(3, text=9), _mask(5, text=9), cond_or_uncond=[0])


def case_deepcache(base, patches):
    """C4: DeepCache, step 10 (full) then 11 (cached) of 30. Layout-agnostic (P4); needs R7."""
    m = patches.released(base, deepcache=True)
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


def case_editing(base, patches):
    """C5: the editing mode (background at double block 0) over the released recipe.
    Needs R1 (block_wrap), R4 (the layout) with the pack's gather/shard (P5)."""
    m = patches.editing(patches.released(base))
    return forward(m, _inputs(6), _mask(6, text=8), cond_or_uncond=[0])


def case_audio(base, patches):
    """C6: the audio mode (after double blocks 1, 3, ..., 11), positive and negative branches in one
    batch. Needs R1, R4, P5."""
    m = patches.audio(patches.released(base))
    return forward(m, _inputs(7, batch=2), _mask(6, 4, text=8), cond_or_uncond=[0, 1])


def case_cfg_parallel(base, patches):
    """C7: CFG-parallel (engine "cfg"): a pos+neg batch; the audio mode must give the negative branch
    zero audio, and a wrapper inside the pack's sees this rank's branch only. Needs R5."""
    import comfy.patcher_extension as ext

    seen = []

    def spy(executor, *args, **kwargs):  # inside the pack's wrapper (added after it)
        from hunyuancustom.local.core_call import Signature

        call = Signature.of(executor.original).bind(args, kwargs)
        seen.append((call["x"].shape[0], list(call["transformer_options"].get("cond_or_uncond") or [])))
        return executor(*args, **kwargs)

    m = patches.audio(patches.released(base))
    m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "contract_spy", spy)  # the test's own probe
    # (key, how many wrappers under it): a patch applied twice must not nest its wrapper (C9)
    keys = [(str(k), len(v)) for k, v in m.wrappers.get(ext.WrappersMP.DIFFUSION_MODEL, {}).items()]
    out = forward(m, _inputs(8, batch=2), _mask(6, 4, text=8), cond_or_uncond=[0, 1])
    return {"out": out, "seen": seen, "wrapper_keys": keys}


def case_odd_text(base, patches):
    """C8a: 7 text tokens (odd), no mask, through the pack's wrapper. Needs R2."""
    return forward(patches.released(base), _inputs(9, text=7), None, cond_or_uncond=[0])


def case_odd_image(base, patches):
    """C8b: 3 image tokens (odd, no reference): refused by the pack before any work (P6)."""
    return forward(patches.released(base), _inputs(10, latent=(1, 2, 6), ref=False), None,
                   cond_or_uncond=[0])


USP_CASES = {"plain": case_plain, "cfg_batch": case_cfg_batch, "released_masks": case_released_masks,
             "deepcache": case_deepcache, "editing": case_editing, "audio": case_audio,
             "odd_text": case_odd_text, "odd_image": case_odd_image}
CFG_CASES = {"cfg_parallel": case_cfg_parallel}
ENGINE_CASES = {"usp": USP_CASES, "cfg": CFG_CASES}


def run_cases(cases: dict, base, patches) -> dict:
    """{name: result, or {"error": "Type: message"}}: a case failing does not stop the others."""
    out = {}
    for name, fn in cases.items():
        try:
            out[name] = fn(base, patches)
        except Exception as e:  # noqa: BLE001 (reported per case)
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
    return out


# --- the worker process ------------------------------------------------------------------------------


def load_shipped(path: str, comfyui_name: str) -> tuple[dict, dict]:
    """C10: the shipped functions, loaded where neither the pack's plain name nor ComfyUI's name for
    it can be imported; and what loading a pack function pickled by reference gives."""
    import importlib.util

    import cloudpickle

    names = ("hunyuancustom", comfyui_name)
    info = {"plain_name_importable": importlib.util.find_spec("hunyuancustom") is not None,
            "pack_modules_before": [n for n in sys.modules if n.split(".")[0] in names]}
    try:
        cloudpickle.loads(Path(path).with_suffix(".byref").read_bytes())
        info["by_reference"] = "loaded"
    except ModuleNotFoundError as e:
        info["by_reference"] = f"ModuleNotFoundError: {e}"
    return cloudpickle.loads(Path(path).read_bytes()), info


def _import_raylight(raylight_dir: str):
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
    from xfuser.core.distributed import init_distributed_environment

    init_distributed_environment(rank=int(os.environ["RANK"]), world_size=2, backend="gloo")
    from raylight.distributed_modules import attention

    attention.set_attn_type("TORCH_MATH")
    attention.set_sync_ulysses(False)


def _engine(engine: str):
    """xFuser's groups for `engine` and Raylight's injection as its worker installs it: a `prepare`
    for `base_model`."""
    import comfy.patcher_extension as ext
    from xfuser.core.distributed import initialize_model_parallel

    if engine == "usp":  # RayWorker.patch_usp
        from raylight.distributed_modules.usp import USPInjectRegistry

        initialize_model_parallel(ulysses_degree=2)
        return lambda model: model.add_callback(ext.CallbacksMP.ON_LOAD, USPInjectRegistry.inject)
    from raylight.distributed_modules.cfg import CFGParallelInjectRegistry  # RayWorker.patch_cfg

    initialize_model_parallel(classifier_free_guidance_degree=2)
    return lambda model: model.add_wrapper(ext.WrappersMP.DIFFUSION_MODEL,
                                           CFGParallelInjectRegistry.inject(model))


def worker_main(raylight_dir: str, engines: str, only: str, shipped: str, model_path: str, comfyui_name: str,
                out: str):
    sys.path.insert(0, str(TESTS))  # comfyui_harness; never the pack's folder
    from comfyui_harness import import_comfy

    import_comfy()
    fns, transport = load_shipped(shipped, comfyui_name)
    _import_raylight(raylight_dir)
    from xfuser.core.distributed.parallel_state import destroy_model_parallel

    results = {"transport": transport}
    patches = Shipped(fns)
    for engine in engines.split(","):
        prepare = _engine(engine)
        cases = {k: v for k, v in ENGINE_CASES[engine].items() if not only or k in only.split(",")}
        results[engine] = run_cases(cases, base_model(Path(model_path), prepare), patches)
        destroy_model_parallel()
    pack = sys.modules.get("hunyuancustom")
    transport.update(pack_file=getattr(pack, "__file__", None),
                     comfyui_names=[n for n in sys.modules if n.split(".")[0] == comfyui_name])
    torch.save(results, out)


if __name__ == "__main__":
    worker_main(*sys.argv[1:])
