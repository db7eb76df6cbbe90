"""Seconds per sampling step and peak GPU memory of local ref2v at full size (random weights).

Builds the full HunyuanCustom transformer (20 double + 40 single blocks, hidden 3072, text width
4096; 852 tensors in the released key layout) from random weights, loads it through the pack's
loader into ComfyUI core's HunyuanVideo model (bf16, or the released fp8 layout with its scales),
gives it the released recipe (`released.apply_released`, as Load Model (Local) does), and times
`--steps` sampling steps (each a CFG step: positive + negative branch, each with its reference
latent, CONDITIONING in the released layout) through core's KSampler path (`sampler.sample` =
`nodes.common_ksampler`, what Ref2V (Local) and KSampler run) at 1280x720 for 129, 65 and 33
frames, with core's model management loading the whole model ("full") or offloading weights to
the CPU under a VRAM budget ("24" = act as a 24 GB card: core's free-memory reading is lowered
by the difference and PyTorch's allocator is capped at 24 GB, so an over-budget run fails with OOM
instead of passing).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/local_step.py                 # full matrix
    COMFYUI_PATH=... python benchmarks/local_step.py --dtype fp8 --offload 24 --frames 129
    COMFYUI_PATH=... python benchmarks/local_step.py --tiny                       # CPU smoke run
    COMFYUI_PATH=... python benchmarks/local_step.py --dtype bf16 --offload full --frames 129 --steps 30 \
        [--deepcache]     # issue 12 (c): a 30-step run with and without DeepCache's shortened steps
    COMFYUI_PATH=... python benchmarks/local_step.py --gpus 1 2 --dtype bf16 --offload full --steps 3

`--gpus 1 N ...` (ComfyUI 0.33+): for each configuration, one device and core's "MultiGPU CFG Split"
over N devices side by side in the same run: seconds per step of each, the speed-up over one
device, peak memory per device, which devices ran work, and max |difference| of the final latents
from one device's (0 expected: each device runs whole CFG branches). Core splits by CFG branch, so
one video (2 branches) keeps at most 2 devices busy. Each extra device gets its own copy of the
weights (core rebuilds the model through its reload factory), made once per dtype and held in host
memory until loaded: N - 1 more copies of the model in RAM. Without `--gpus` (or with `--gpus 1`)
the script runs and prints exactly as before.

Needs CUDA for the full size and refuses to start without it. `--tiny` (alias `--cpu`) runs the
same code path on the CPU with a tiny model (hidden 128, 2 + 2 blocks) at 64x64, 5 and 9 frames;
with `--gpus 1 2` core is told the CPU is two devices (two CPU device entries), so the split runs
the same code path too; those timings are no speed-up figure.
Targets (README): 1280x720x129 within 24 GB with offload + fp8; one CFG step at 1280x720x129 bf16
on one H100 <= 76 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import core_multigpu

REPO = Path(__file__).resolve().parent.parent
GB = 1024**3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", "--cpu", dest="tiny", action="store_true",
                   help="CPU smoke mode: tiny model, 64x64, same code path")
    p.add_argument("--frames", type=int, nargs="+", default=None, help="frame counts (4k+1)")
    p.add_argument("--dtype", nargs="+", choices=("bf16", "fp8"), default=["bf16", "fp8"])
    p.add_argument("--offload", nargs="+", default=["full", "24"],
                   help="'full' (whole model on the GPU) and/or VRAM budgets in GB for core's offload")
    p.add_argument("--steps", type=int, default=1,
                   help="sampling steps per configuration (one sampler run, timed whole; s/step = total / "
                        "steps, so the sampler's setup is included: use a few steps)")
    p.add_argument("--deepcache", action="store_true",
                   help="the released DeepCache on (it acts at exactly 30 steps: run --steps 30 with and "
                        "without it for the cost of a shortened step)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--text-tokens", type=int, default=831,
                   help="text tokens per branch (released: 831 = 256 template tokens + 575 image features)")
    p.add_argument("--gpus", type=int, nargs="+", default=None, metavar="N",
                   help="device counts (default 1): each N > 1 runs core's MultiGPU CFG Split over N "
                        "devices side by side with one device (ComfyUI 0.33+; --tiny: two CPU device "
                        "entries, N <= 2)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results here (rewritten after each configuration; e.g. $OUT/x.json)")
    args = p.parse_args(argv)
    if args.gpus is not None and min(args.gpus) < 1:
        p.error(f"--gpus: device counts are 1 or more, got {min(args.gpus)}")
    return args


def setup_comfy(tiny: bool):
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("COMFYUI_PATH is not set: point it at a ComfyUI checkout (core runs the model)")
    for path in (str(REPO / "tests"), str(REPO), root):  # root first: core's `nodes`, not this repo's
        if path not in sys.path:
            sys.path.insert(0, path)
    saved = sys.argv
    sys.argv = [saved[0]] + (["--cpu"] if tiny else [])
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management as mm
        import comfy.sd  # noqa: F401
    finally:
        sys.argv = saved
    return mm


def build_checkpoint(size: dict, dtype: str, device):
    """Random weights in the released layout; fp8 the released way (per-Linear max scale)."""
    import torch
    from local_models import _shape  # the released layout's shape table

    from hunyuancustom.local.checkpoint import Checkpoint, backbone_keys, fp8_linear_modules, fp8_to_scaled

    keys = backbone_keys(size["double"], size["single"], 2)
    fp8_modules = set(fp8_linear_modules(keys)) if dtype == "fp8" else set()
    sd, scales = {}, {}
    g = torch.Generator(device=device).manual_seed(0)
    for k in keys:
        shape = _shape(k, size["hidden"], size["text_dim"])
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        t = t * (fan_in ** -0.5 if len(shape) > 1 else 0.02)
        if "norm" in k and k.endswith(".weight"):
            t = t + 1
        module = k[: -len(".weight")]
        if module in fp8_modules:
            scale = t.abs().max() / torch.finfo(torch.float8_e4m3fn).max
            t, scales[module] = (t / scale).to(torch.float8_e4m3fn), scale.cpu()
        else:
            t = t.to(torch.bfloat16)
        sd[k] = t.cpu()
        del t
    if scales:
        sd = fp8_to_scaled(sd, scales)
    return Checkpoint(sd, {}, "pt-fp8" if scales else "pt", (size["double"], size["single"], 2))


def rebuild_model(size: dict, dtype: str, build_device, disable_dynamic: bool = False):
    """Core's reload factory (`cached_patcher_init`) for the benchmark's model: the same seeded
    random weights built again, for the copy that core's multi-GPU split puts on each extra device."""
    from hunyuancustom.local.comfy_model import model_from_checkpoint

    ckpt = build_checkpoint(size, dtype, build_device)
    patcher = model_from_checkpoint(ckpt, disable_dynamic=disable_dynamic)
    patcher.cached_patcher_init = (rebuild_model, (size, dtype, build_device))
    return patcher


def inputs(size: dict, width: int, height: int, frames: int, text_tokens: int, device):
    """(positive, negative, LATENT) as Conditioning (Local) gives them: ready CONDITIONING in the
    released layout (text states, the released mask: prompt ones, padding zeros, 575 image-feature
    ones; pooled [1, 768]), the same reference latent on both branches, the negative mask cut."""
    import torch

    from hunyuancustom.local import conditioning as cond

    latent = cond.empty_latent(width, height, frames)
    _, _, _, h, w = latent["samples"].shape
    g = torch.Generator().manual_seed(1)
    image_ones = min(cond.EXTRA_IMAGE_FEATURES, max(0, text_tokens - 2))
    prompt_ones = max(1, min(40, text_tokens - image_ones))  # released: 40 + 216 padding + 575
    mask = torch.zeros(1, text_tokens, dtype=torch.long)
    mask[:, :prompt_ones] = 1
    mask[:, text_tokens - image_ones:] = 1

    def branch():
        return [[torch.randn(1, text_tokens, size["text_dim"], generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g), "attention_mask": mask.clone()}]]

    ref = torch.randn(1, 16, 1, h, w, generator=g)
    pos = cond.with_reference(branch(), ref, "positive")
    neg = cond.with_reference(branch(), ref, "negative", negative=True)
    return pos, neg, latent


def run_config(mm, patcher, size, args, frames, offload, width, height, side_by_side=False):
    """One configuration through core's KSampler path on `patcher`'s device, and on its device
    clones when core's MultiGPU CFG Split made any. `side_by_side`: the result also carries the
    peak memory and transformer passes per device and the final latent ("samples", a tensor)."""
    import torch

    from hunyuancustom.local import released
    from hunyuancustom.local import sampler as local

    device = patcher.load_device
    devices = core_multigpu.split_devices(patcher)  # [device] unless split
    gpus = [d for d in devices if d.type == "cuda"]
    totals = {d: torch.cuda.get_device_properties(d).total_memory for d in gpus}
    real_free = mm.get_free_memory
    try:
        if gpus and offload != "full":
            # act as `budget`-sized cards: core's free-memory reading (which decides how much of
            # the model stays on a GPU) loses the rest, and PyTorch's allocator is capped there
            budget = float(offload) * GB

            def free_on_budget(dev=None, torch_free_too=False):
                hidden = max(0.0, totals.get(torch.device(dev) if dev is not None else device,
                                             totals[gpus[0]]) - budget)
                out = real_free(dev, torch_free_too)
                if torch_free_too:
                    return max(0.0, out[0] - hidden), out[1]
                return max(0.0, out - hidden)

            mm.get_free_memory = free_on_budget
            for d in gpus:
                torch.cuda.set_per_process_memory_fraction(min(1.0, budget / totals[d]), d)
        for d in gpus:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(d)
        pos, neg, latent = inputs(size, width, height, frames, args.text_tokens, device)
        shape = latent["samples"].shape
        memory = patcher.model.memory_required([2, *shape[1:]]) * 1.5
        clones = patcher.get_additional_models_with_key("multigpu")
        mm.load_models_gpu([patcher, *clones], memory_required=memory, force_full_load=offload == "full")
        # core's KSampler path with the pack's MODEL patch (Load Model (Local) gives the same MODEL)
        model = released.apply_released(patcher, deepcache=args.deepcache)
        fwd = released.released_forward(model)
        passes = fwd.calls
        for d in gpus:
            torch.cuda.synchronize(d)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = local.sample(model, pos, neg, latent, seed=0, steps=args.steps, cfg=7.5)
        for d in gpus:
            torch.cuda.synchronize(d)
        total = time.perf_counter() - t0
        times = [total / args.steps]
        peak = torch.cuda.max_memory_allocated(device) / GB if gpus else None
        on_gpu = patcher.loaded_size() / GB if hasattr(patcher, "loaded_size") else None
        r = {"s_per_step": sum(times) / len(times), "sampling_s": total, "steps": args.steps,
             "deepcache": args.deepcache, "full_passes": passes["full"],
             "shortened_passes": passes["cached"], "peak_gb": peak,
             "weights_on_gpu_gb": on_gpu, "status": "ok"}
        if side_by_side:
            r.update(gpus=len(devices), devices=[str(d) for d in devices],
                     device_names=[torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"
                                   for d in devices],
                     peak_gb_per_device=[torch.cuda.max_memory_allocated(d) / GB if d.type == "cuda" else None
                                         for d in devices],
                     # passes per device as the pack's forward counted them: which devices ran work
                     device_passes={str(d): dict(fwd.device_calls.get(d, {"full": 0, "cached": 0}))
                                    for d in devices},
                     samples=out["samples"].detach().to("cpu", torch.float32))
        return r
    except torch.OutOfMemoryError as e:
        return {"status": "OOM", "error": str(e).splitlines()[0]}
    finally:
        mm.unload_all_models()
        mm.get_free_memory = real_free
        for d in gpus:
            torch.cuda.set_per_process_memory_fraction(1.0, d)
            torch.cuda.empty_cache()
        gc.collect()


def side_by_side(mm, patcher, splits, size, args, frames, offload, width, height) -> list[dict]:
    """One device, then each split, on one configuration; each split's result gains its speed-up
    over one device and the max |difference| of its final latent from one device's."""
    one = run_config(mm, patcher, size, args, frames, offload, width, height, side_by_side=True)
    base = one.pop("samples", None)
    out = [one]
    for n in sorted(splits):
        r = run_config(mm, splits[n], size, args, frames, offload, width, height, side_by_side=True)
        latent = r.pop("samples", None)
        if r["status"] == "ok" and one["status"] == "ok":
            r["speedup"] = one["s_per_step"] / r["s_per_step"]
            r["max_abs_diff"] = float((latent - base).abs().max())
        out.append(r)
    return out


def _gb(values) -> str:
    if all(v is None for v in values):
        return "n/a (CPU)"
    return " / ".join("n/a" if v is None else f"{v:.1f}" for v in values) + " GB"


def side_by_side_line(r: dict, unit: str) -> str:
    n = r.get("gpus", 1)
    label = f"{n} {unit}{'s' if n > 1 else ''}"  # "1 GPU", "2 GPUs"
    if r["status"] != "ok":
        return f"    {label:10s}: {r['status']}: {r.get('error', '')}"
    line = f"    {label:10s}: {r['s_per_step']:.2f} s/CFG step"
    if n == 1:
        return (f"{line}, peak {_gb([r['peak_gb']])}, passes {r['full_passes']} full + "
                f"{r['shortened_passes']} shortened")
    busy = [d for d, c in r["device_passes"].items() if c["full"] + c["cached"]]
    passes = ", ".join(f"{d} {c['full']}+{c['cached']}" for d, c in r["device_passes"].items())
    speed = f"speed-up {r['speedup']:.2f}x" if "speedup" in r else "speed-up n/a (1 device failed)"
    diff = f"{r['max_abs_diff']:.3g}" if "max_abs_diff" in r else "n/a"
    return (f"{line}, {speed}, peak per device {_gb(r['peak_gb_per_device'])}, work on {len(busy)} of {n} "
            f"devices (passes full+shortened: {passes}), max |latent - 1 {unit}'s| {diff}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        sys.exit("benchmarks/local_step.py: no CUDA GPU found. The full-size model (12.8 B parameters, "
                 "1280x720) needs one; run with --tiny (or --cpu) for the CPU smoke mode of the same code.")
    mm = setup_comfy(args.tiny)
    from hunyuancustom.local.comfy_model import model_from_checkpoint

    counts = sorted({1, *(args.gpus or [])})
    split_mode = len(counts) > 1
    if split_mode:  # refused before any model is built
        try:
            core_multigpu.devices(mm, counts, args.tiny)
        except core_multigpu.MultiGpuUnavailable as e:
            sys.exit(f"benchmarks/local_step.py: {e}")
        if args.tiny:
            print("CPU smoke run: the split's two devices are two entries for one CPU; its timings and "
                  "speed-up are no GPU figure", flush=True)
    unit = "device" if args.tiny else "GPU"
    if args.tiny:
        size = {"double": 2, "single": 2, "hidden": 128, "text_dim": 32}
        frames = args.frames or [9, 5]
        width, height = args.width or 64, args.height or 64
        args.text_tokens = min(args.text_tokens, 16)
    else:
        size = {"double": 20, "single": 40, "hidden": 3072, "text_dim": 4096}
        frames = args.frames or [129, 65, 33]
        width, height = args.width or 1280, args.height or 720
    build_device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    results = []
    for dtype in args.dtype:
        t0 = time.perf_counter()
        ckpt = build_checkpoint(size, dtype, build_device)
        patcher = model_from_checkpoint(ckpt)
        del ckpt
        print(f"[{dtype}] model built and loaded by core in {time.perf_counter() - t0:.1f} s "
              f"({sum(p.numel() for p in patcher.model.diffusion_model.parameters()) / 1e6:.1f} M params)",
              flush=True)
        splits = {}
        if split_mode:
            t0 = time.perf_counter()
            patcher.cached_patcher_init = (rebuild_model, (size, dtype, build_device))
            splits = core_multigpu.splits(patcher, counts)
            print(f"[{dtype}] core's MultiGPU CFG Split over {', '.join(map(str, sorted(splits)))} devices: "
                  f"copies of the model for {max(counts) - 1} extra device(s) built in "
                  f"{time.perf_counter() - t0:.1f} s",
                  flush=True)
        for offload in args.offload:
            for n in frames:
                name = "cpu"
                if build_device == "cuda":
                    name = torch.cuda.get_device_name()
                if split_mode:
                    runs = side_by_side(mm, patcher, splits, size, args, n, offload, width, height)
                    print(f"  {dtype:4s} offload={offload:5s} {width}x{height}x{n:<3d}:", flush=True)
                    for r in runs:
                        r.update({"dtype": dtype, "offload": offload, "frames": n,
                                  "size": f"{width}x{height}", "device": name})
                        results.append(r)
                        print(side_by_side_line(r, unit), flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=2))
                    continue
                r = run_config(mm, patcher, size, args, n, offload, width, height)
                r.update({"dtype": dtype, "offload": offload, "frames": n, "size": f"{width}x{height}",
                          "device": name})
                results.append(r)
                if args.json:  # after every configuration, so a run cut short keeps its figures
                    args.json.write_text(json.dumps(results, indent=2))
                peak = f"{r['peak_gb']:.1f} GB" if r.get("peak_gb") is not None else "n/a (CPU)"
                line = (f"{r['s_per_step']:.2f} s/CFG step, peak {peak}, passes {r['full_passes']} full + "
                        f"{r['shortened_passes']} shortened" if r["status"] == "ok"
                        else f"{r['status']}: {r.get('error', '')}")
                print(f"  {dtype:4s} offload={offload:5s} {width}x{height}x{n:<3d}: {line}", flush=True)
        del patcher, splits
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
