"""Core's multi-GPU work units (ComfyUI 0.33+) as the benchmarks use them: the devices core would
split a MODEL over, and core's own "MultiGPU CFG Split" node applied to it.

On the CPU (the benchmarks' --tiny smoke mode) core is told it has two devices, the CPU twice:
`torch.device("cpu")` and `torch.device("cpu", 0)` are different keys while tensors on both report
"cpu" (as tests/test_comfyui_multigpu.py does), so the same code path runs without a GPU. Those
two "devices" share one processor: their timings say nothing about a speed-up.
"""

from __future__ import annotations

CPU_ENTRIES = ("cpu", ("cpu", 0))  # torch.device arguments of the two CPU device entries


class MultiGpuUnavailable(RuntimeError):
    """This core or this machine cannot run the requested split (the message says why)."""


def split_node():
    """Core's MultiGPU CFG Split node class; refuses a core without multi-GPU work units."""
    try:
        import comfy.model_patcher
        import comfy.multigpu  # noqa: F401 (its presence is what is checked)
        from comfy_extras.nodes_multigpu import MultiGPUCFGSplitNode
    except ImportError as e:
        raise MultiGpuUnavailable(
            f"--gpus: this ComfyUI has no multi-GPU work units ({e}); core's MultiGPU CFG Split "
            "(comfy.multigpu, comfy_extras/nodes_multigpu.py) needs ComfyUI 0.33 or newer") from None
    if not hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu"):
        raise MultiGpuUnavailable("--gpus: this ComfyUI's ModelPatcher has no deepclone_multigpu, which "
                                  "core's MultiGPU CFG Split needs (ComfyUI 0.33 or newer)")
    return MultiGPUCFGSplitNode


def devices(mm, counts: list[int], tiny: bool) -> list:
    """The devices core will split over (core's own list), after checking that the largest of
    `counts` fits. In tiny mode core is first told its devices are the two CPU entries."""
    import torch

    split_node()
    largest = max(counts)
    if tiny:
        if largest > len(CPU_ENTRIES):
            raise MultiGpuUnavailable(f"--gpus {largest}: the --tiny smoke mode has {len(CPU_ENTRIES)} CPU "
                                      f"device entries; use --gpus 1 2")
        entries = [torch.device(*e) if isinstance(e, tuple) else torch.device(e) for e in CPU_ENTRIES]
        mm.get_all_torch_devices = lambda exclude_current=False: list(entries)
    found = mm.get_all_torch_devices(exclude_current=False)
    if largest > len(found):
        names = ", ".join(str(d) for d in found) or "none"
        raise MultiGpuUnavailable(f"--gpus {largest}: core sees {len(found)} device(s) ({names}); "
                                  f"torch sees {torch.cuda.device_count()} CUDA device(s). Ask for at most "
                                  f"{len(found)}, or make the GPUs visible (CUDA_VISIBLE_DEVICES)")
    return found


def split(model, n: int):
    """`model` through core's MultiGPU CFG Split node with max_gpus `n`; checks that core really
    gave it n - 1 device clones (core silently gives fewer when it finds fewer devices)."""
    out = split_node().execute(model, n)
    result = out.result[0] if hasattr(out, "result") else out[0]
    clones = result.get_additional_models_with_key("multigpu")
    if len(clones) != n - 1:
        raise MultiGpuUnavailable(f"--gpus {n}: core's MultiGPU CFG Split made {len(clones)} device "
                                  f"clone(s), not {n - 1}")
    return result


def splits(model, counts: list[int]) -> dict:
    """{n: the MODEL split over n devices} for each n > 1 in `counts`. The largest split is made
    from `model` (core loads one copy of the weights per extra device through the MODEL's reload
    factory); the smaller ones from it, where core's node keeps the first n - 1 of its clones and
    loads nothing new."""
    wanted = sorted({n for n in counts if n > 1}, reverse=True)
    if not wanted:
        return {}
    out = {wanted[0]: split(model, wanted[0])}
    for n in wanted[1:]:
        out[n] = split(out[wanted[0]], n)
    return out


def split_devices(model) -> list:
    """The MODEL's own load device, then its device clones' (one entry without a split)."""
    return [model.load_device] + [c.load_device for c in model.get_additional_models_with_key("multigpu")]
