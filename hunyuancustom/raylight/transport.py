"""Functions that carry the pack's patches into Raylight's workers.

Raylight applies a patch by running a function in each worker on its MODEL
(`RayWorker.model_function_runner(fn)` sets `model = fn(model)`); Ray pickles that function with
cloudpickle. ComfyUI imports this pack under its folder path ("<path>_x_...nodes"), a name a worker
cannot import, so a pickled pack object fails there. The functions made here are nested (cloudpickle
copies them by value), hold only a path, a name and plain arguments, and import the package by its
plain name `hunyuancustom` inside the worker, from this checkout's folder, by file location: the
folder is not put on `sys.path`, where its `nodes/` package would shadow ComfyUI's `nodes` module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

PACK_ROOT = Path(__file__).resolve().parent.parent.parent  # the folder that holds hunyuancustom/
WORKER_MODULE = "hunyuancustom.raylight.worker"


def worker_function(entry: str, **kwargs: Any) -> Callable:
    """`fn(model) -> model` that calls `hunyuancustom.raylight.worker.<entry>(model, **kwargs)`
    in the process it runs in. `kwargs` must be plain data: paths, numbers, tensors."""
    root = str(PACK_ROOT)
    module = WORKER_MODULE

    def run_in_worker(model):
        import importlib
        import importlib.util
        import os
        import sys

        name = module.split(".")[0]
        folder = os.path.join(root, name)
        pack = sys.modules.get(name)
        if pack is None:
            spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                          submodule_search_locations=[folder])
            if spec is None or not os.path.isdir(folder):
                raise RuntimeError(f"HunyuanCustom: this Ray worker cannot read the pack at {root}; the "
                                   "workers must run on a machine that has the pack at the same path")
            pack = importlib.util.module_from_spec(spec)
            sys.modules[name] = pack
            try:
                spec.loader.exec_module(pack)
            except BaseException:
                del sys.modules[name]
                raise
        elif os.path.realpath(os.path.dirname(pack.__file__ or "")) != os.path.realpath(folder):
            raise RuntimeError(f"HunyuanCustom: this Ray worker already imported another '{name}' "
                               f"package ({pack.__file__}), not the pack's at {folder}")
        return getattr(importlib.import_module(module), entry)(model, **kwargs)

    return run_in_worker


def sequence_degree_reader() -> Callable:
    """`fn(model) -> int` for `model_function_runner_get_values`: the worker's sequence-parallel
    world size (Ulysses x ring) from xFuser's state as Raylight set it up, 1 where none runs."""

    def read_degree(model):
        import sys

        state = sys.modules.get("xfuser.core.distributed.parallel_state")
        group = getattr(state, "_SP", None)
        return int(getattr(group, "world_size", 1)) if group is not None else 1

    return read_degree
