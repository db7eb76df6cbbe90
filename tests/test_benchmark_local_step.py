"""benchmarks/local_step.py's CPU smoke mode with core's multi-GPU split (COMFYUI_PATH).

The benchmark runs as a GPU owner runs it (its own process, core's `--cpu`), on the tiny model:
`--gpus 1 2 --tiny` runs one device and core's MultiGPU CFG Split over two CPU device entries side
by side, and the split's final latent equals one device's exactly, with both entries running work.
A core without multi-GPU work units (0.3.64) is refused before any model is built. No timing is
asserted: speed is what the benchmark measures on GPUs, not what a test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from comfyui_harness import REPO_ROOT, comfyui_path, requires_comfyui

pytestmark = requires_comfyui

SCRIPT = REPO_ROOT / "benchmarks" / "local_step.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path()), "OMP_NUM_THREADS": "1"}
    return subprocess.run([python, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO_ROOT)


def _core_has_multigpu() -> bool:
    # what the benchmark itself needs from core: comfy.multigpu and its MultiGPU CFG Split node
    root = comfyui_path()
    return all((root / p).is_file() for p in ("comfy/multigpu.py", "comfy_extras/nodes_multigpu.py"))


def test_gpus_1_2_tiny_runs_one_device_and_core_split_side_by_side_with_equal_latents(tmp_path):
    out = tmp_path / "split.json"
    done = _run("--tiny", "--gpus", "1", "2", "--dtype", "bf16", "--offload", "full", "--frames", "5",
                "--json", str(out))
    if not _core_has_multigpu():
        # refused, with the reason, before any model is built
        assert done.returncode != 0, done.stdout
        assert "no multi-GPU work units" in done.stderr and "0.33" in done.stderr, done.stderr
        assert "model built" not in done.stdout
        assert not out.exists()
        return
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = json.loads(out.read_text())
    assert (one["gpus"], two["gpus"]) == (1, 2) and one["status"] == two["status"] == "ok"
    assert two["devices"] == ["cpu", "cpu:0"]
    # the split's final latent is one device's, exactly; each CPU entry ran one CFG branch
    assert two["max_abs_diff"] == 0.0
    assert two["device_passes"] == {"cpu": {"full": 1, "cached": 0}, "cpu:0": {"full": 1, "cached": 0}}
    assert one["device_passes"] == {"cpu": {"full": 2, "cached": 0}}
    assert two["speedup"] == one["s_per_step"] / two["s_per_step"]
    assert two["peak_gb_per_device"] == [None, None]  # no GPU: no peak reported
    lines = done.stdout.splitlines()
    assert any(line.strip().startswith("1 device") for line in lines)
    assert any(line.strip().startswith("2 devices") and "work on 2 of 2 devices" in line
               and line.endswith("max |latent - 1 device's| 0") for line in lines), done.stdout
    assert "no GPU figure" in done.stdout  # the CPU run says its timings are no speed-up claim
