"""Local ref2v: transformer calls, wall time and accuracy of each step cache, on both node paths.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/local_paths.py [--json results.json]
        [--hidden 256] [--double 2] [--single 2] [--steps 30] [--size 64] [--frames 9]

A tiny random-weight HunyuanCustom transformer in the released key layout (hidden 256 = 2 heads,
2 double + 2 single blocks, text width 32) is loaded by the pack's loader into core's HunyuanVideo
and given the released recipe (`released.apply_released`, as Load Model (Local) does). One
conditioning in the released layout (text states [1, 831, 32] with the released mask: 40 ones,
216 zeros, 575 ones; pooled [1, 768]; a reference latent through Conditioning (Local)'s own
code with a stand-in VAE) feeds, in this one run, side by side:

  one-node   the chain Ref2V (Local) runs before decoding: its conditioning, the released
             patch, its flow shift, core's KSampler path (`sampler.sample` = common_ksampler);
  KSampler   Conditioning (Local).execute, then core's KSampler node;

each x {no step cache, core's EasyCache node, core's LazyCache node (default settings)} x
{DeepCache off, on}. Per video: full transformer passes and DeepCache-shortened passes (counted
by hooks on the first double block and the last single block, so a pass a step cache skips is not
counted), wall time, and the max |difference| of the final latent from the same path's run with
no cache at all. The two paths must give the same latent with no cache (exit 1 otherwise).

CPU only (ComfyUI runs with --cpu); the VAE decode is left out (it is the same for every row).
Wall times on a shared CPU are noisy and say nothing about GPU seconds: see local_step.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = (40, 216, 575)  # the released mask: prompt ones, padding zeros, 575 appended ones
STEP_CACHES = ("none", "EasyCache", "LazyCache")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="transformer width (multiple of 128)")
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="sampling steps (DeepCache acts at exactly 30)")
    p.add_argument("--size", type=int, default=64, help="width = height in pixels (multiple of 16)")
    p.add_argument("--frames", type=int, default=9, help="frames, 4k+1")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def setup():
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("COMFYUI_PATH is not set: point it at a ComfyUI checkout (core runs the model)")
    for path in (str(REPO), str(REPO / "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)
    from comfyui_harness import import_pack

    return import_pack()


class StandInVAE:
    """What Conditioning (Local) asks of a VAE for the reference latent: `encode` of the padded
    reference frame. Gives a fixed random latent of the video's size (the real VAE's cost is the
    same on every row, so it is left out)."""

    def __init__(self, generator):
        self.g = generator
        self.latent = None

    def encode(self, frame):
        import torch

        if self.latent is None:
            h, w = frame.shape[1] // 8, frame.shape[2] // 8
            self.latent = torch.randn(1, 16, 1, h, w, generator=self.g)
        return self.latent


def ready_conditioning(text_dim: int, g):
    """(positive, negative) CONDITIONING as core's HunyuanVideo text encoder gives them with the
    released template: states [1, 831, text_dim], the released mask, pooled [1, 768]."""
    import torch

    mask = torch.cat([torch.ones(TEXT[0]), torch.zeros(TEXT[1]), torch.ones(TEXT[2])]).long()[None]

    def one():
        return [[torch.randn(1, sum(TEXT), text_dim, generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g), "attention_mask": mask.clone()}]]

    return one(), one()


class PassCounter:
    """Forward pre-hooks: a full pass runs the first double block; every pass (full or DeepCache-
    shortened) runs the last single block. A step a step cache skips runs neither."""

    def __init__(self, net):
        self.first = self.last = 0
        net.double_blocks[0].register_forward_pre_hook(lambda *_: self._bump("first"))
        net.single_blocks[-1].register_forward_pre_hook(lambda *_: self._bump("last"))

    def _bump(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def take(self) -> tuple[int, int]:
        out = (self.first, self.last - self.first)
        self.first = self.last = 0
        return out


def main(argv=None) -> int:
    args = parse_args(argv)
    pack = setup()
    import torch
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode
    from local_models import backbone_state_dict, write_released_pt

    from hunyuancustom.local import released
    from hunyuancustom.local import sampler as local
    from hunyuancustom.local.comfy_model import load_model

    core_nodes = importlib.import_module("nodes")  # core's nodes.py (its root is first on sys.path)
    assert hasattr(core_nodes, "KSampler"), core_nodes
    node_local = importlib.import_module(pack.__name__ + ".nodes.local")
    text_dim = 32
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        sd = backbone_state_dict(seed=1, double=args.double, single=args.single, hidden=args.hidden,
                                 text_dim=text_dim)
        base, _ = load_model(write_released_pt(Path(d) / "mp_rank_00_model_states.pt", sd))
    net = base.model.diffusion_model
    counter = PassCounter(net)
    params = sum(p.numel() for p in net.parameters()) / 1e6

    g = torch.Generator().manual_seed(7)
    positive, negative = ready_conditioning(text_dim, g)
    image = torch.rand(1, args.size, args.size, 3, generator=g)
    vae = StandInVAE(g)
    common = {"prompt": "", "negative_prompt": "", "size": "1280*720", "positive": positive,
              "negative": negative, "width": args.size, "height": args.size}
    shift = released.RELEASED_SHIFT

    def one_node(model):
        # Ref2V (Local).execute up to its decode, in its order
        pos, neg, w, h = node_local._conditioning(vae, image, "", "", "1280*720", args.size, args.size,
                                                  None, None, positive, negative, "object", -1)
        start = local.cond.empty_latent(w, h, args.frames)
        if released.released_forward(model) is None:
            model = released.apply_released(model)
        model = released.with_flow_shift(model, shift)
        return local.sample(model, pos, neg, start, seed=args.seed, steps=args.steps, cfg=args.cfg)

    def ksampler(model):
        pos, neg, latent = node_local.LocalConditioning.execute(vae=vae, image=image, length=args.frames,
                                                                batch_size=1, **common).args
        return core_nodes.KSampler().sample(model, args.seed, args.steps, args.cfg, local.RELEASED_SAMPLER,
                                            local.RELEASED_SCHEDULER, pos, neg, latent)[0]

    def with_cache(model, name):
        if name == "EasyCache":
            return EasyCacheNode.execute(model, 0.2, 0.15, 0.95, False).args[0]
        if name == "LazyCache":
            return LazyCacheNode.execute(model, 0.2, 0.15, 0.95, False).args[0]
        return model

    paths = {"one-node": one_node, "KSampler": ksampler}
    rows, reference = [], {}
    print(f"model: {params:.1f} M params (hidden {args.hidden}, {args.double}+{args.single} blocks), "
          f"{args.size}x{args.size}x{args.frames}, {args.steps} steps, cfg {args.cfg}, euler/simple; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU threads, {platform.machine()}",
          flush=True)
    with torch.inference_mode():
        for deepcache in (False, True):
            patched = released.apply_released(base, deepcache=deepcache)
            for cache in STEP_CACHES:
                for path, run in paths.items():
                    model = with_cache(patched, cache)
                    counter.take()
                    t0 = time.perf_counter()
                    out = run(model)["samples"].float()
                    wall = time.perf_counter() - t0
                    full, short = counter.take()
                    if not deepcache and cache == "none":
                        reference[path] = out
                    diff = float((out - reference[path]).abs().max())
                    row = {"path": path, "step_cache": cache, "deepcache": deepcache, "full_passes": full,
                           "shortened_passes": short, "wall_s": round(wall, 3), "max_abs_diff": diff,
                           "latent_abs_max": float(out.abs().max())}
                    rows.append(row)
                    print(f"  {path:9s} {cache:9s} deepcache={'on ' if deepcache else 'off'} "
                          f"full {full:3d} short {short:2d}  {wall:6.2f} s  max|diff| {diff:.3g}", flush=True)

    same = float((reference["one-node"] - reference["KSampler"]).abs().max())
    baseline = {r["path"]: r["full_passes"] for r in rows if r["step_cache"] == "none" and not r["deepcache"]}
    print(f"\nmax |one-node - KSampler| with no cache: {same:.3g} "
          f"({'same latent' if same == 0 else 'DIFFERENT'})\n")
    print("| path | step cache | DeepCache | full passes | shortened | transformer work | wall s / video "
          "| max abs diff vs no cache |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        work = r["full_passes"] / baseline[r["path"]]
        r["full_pass_fraction"] = round(work, 3)
        print(f"| {r['path']} | {r['step_cache']} | {'on' if r['deepcache'] else 'off'} | {r['full_passes']} "
              f"| {r['shortened_passes']} | {work:.0%} | {r['wall_s']:.2f} | {r['max_abs_diff']:.3g} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "params_m": params, "paths_same_latent_max_diff": same,
                                         "rows": rows}, indent=2))
    return 0 if same == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
