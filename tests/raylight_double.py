"""A CPU stand-in for Raylight's RayWorker, and the tiny model it holds.

`WorkerDouble` has RayWorker's two runner methods with RayWorker's exact semantics
(`model_function_runner`: `self.model = fn(self.model, ...)`; `model_function_runner_get_values`:
`return fn(self.model, ...)`, raylight/distributed_worker/ray_worker.py 581-585) around a real
ComfyUI ModelPatcher: a 12-double-block HunyuanVideo of width 128 with random weights, loaded by
core's diffusion-model loader. Raylight's own RayWorker needs CUDA and NCCL (its __init__ asks
for the device's capability and joins an NCCL group), so the (Ray) nodes' tests run on this one,
in real Ray actors or in a fresh process. Imports nothing of the pack.
"""

from __future__ import annotations

import os
import sys
import types

import torch

WIDTH, CONTEXT, DEPTH = 128, 64, 12
LATENT = (3, 4, 6)  # t, h, w: 9 frames of 48x32; (3 + 1) * 2 * 3 = 24 image tokens


def tiny_model(seed: int = 0):
    from comfyui_harness import core_hunyuan_video, import_comfy

    comfy = import_comfy()
    net = core_hunyuan_video(comfy, width=WIDTH, context=CONTEXT, depth=DEPTH)
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in net.state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd)


def sample(model, steps: int = 30, latent_shape=LATENT, seed: int = 7) -> torch.Tensor:
    """Core's KSampler path (euler, simple, cfg 7.5) on both branches with a reference latent."""
    import comfy.sample

    t, h, w = latent_shape
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(1, 16, 1, h, w, generator=g)
    positive = [[torch.randn(1, 7, CONTEXT, generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g), "ref_latent": ref}]]
    negative = [[torch.randn(1, 7, CONTEXT, generator=g),
                 {"pooled_output": torch.randn(1, 768, generator=g), "ref_latent": ref}]]
    latent = torch.zeros(1, 16, t, h, w)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, 7.5, "euler", "simple", positive, negative, latent,
                                   seed=seed)


class WorkerDouble:
    """Raylight's worker interface on the CPU. `sp_degree` > 1 stands in for the xFuser state
    Raylight's worker sets up (`xfuser.core.distributed.parallel_state._SP`, a group with
    `world_size`), which needs 2+ processes joined in a process group."""

    def __init__(self, comfyui_path: str, seed: int = 0, sp_degree: int = 1):
        os.environ["COMFYUI_PATH"] = comfyui_path
        torch.set_num_threads(1)
        if sp_degree > 1:
            state = types.ModuleType("xfuser.core.distributed.parallel_state")
            state._SP = types.SimpleNamespace(world_size=sp_degree)
            sys.modules[state.__name__] = state
        self.model = tiny_model(seed)
        self.calls = 0

    def model_function_runner(self, fn, *args, **kwargs):
        self.calls += 1
        self.model = fn(self.model, *args, **kwargs)

    def model_function_runner_get_values(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)

    def runner_calls(self) -> int:
        return self.calls

    def sample(self, steps: int = 30, latent_shape=LATENT) -> torch.Tensor:
        return sample(self.model, steps, latent_shape)

    def imported(self) -> dict:
        """Where this process got the pack from (None: not imported)."""
        pack = sys.modules.get("hunyuancustom")
        return {"hunyuancustom": getattr(pack, "__file__", None),
                "comfyui_names": sorted(n for n in sys.modules if "_x_" in n or n.startswith("hc_pack"))}
