"""graph_to_prompt against the real front end (needs COMFYUI_PATH, Chromium and playwright-core,
installed on first use as for tests/test_browser.py).

tests/browser/render_workflow.py opens every example workflow in the front end, asks its own
graphToPrompt for the prompt the Run button would send and compares it with
tests/workflow_check.graph_to_prompt, which the /prompt test (test_comfyui_workflow_prompts.py)
relies on; it exits 1 on any difference, and on any warning the front end shows on opening a
workflow (a dialog, a toast such as "Missing Models" or "N errors found", a console error), with
the model files present as stand-ins. Run on each ComfyUI tree, so with each one's front end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_browser import _ensure_chromium, _ensure_playwright

from comfyui_harness import comfyui_path, requires_comfyui

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "browser" / "render_workflow.py"


def test_graph_to_prompt_equals_the_front_ends_prompt_for_every_example(tmp_path):
    _ensure_chromium()
    modules = _ensure_playwright()
    picture = tmp_path / "workflow.png"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(picture)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "COMFYUI_PATH": str(comfyui_path()),
                                         "HUNYUANCUSTOM_BROWSER_CACHE": str(modules.parent)})
    lines = r.stdout.splitlines()
    names = sorted(p.name for p in (REPO / "example_workflows").glob("*.json"))
    compared = [line.split(":")[0] for line in lines if ": graph_to_prompt " in line]
    assert compared == names, r.stdout + r.stderr
    assert all(f"{n}: graph_to_prompt equals the front end's prompt" in lines for n in names), r.stdout
    assert all(f"{n}: opens without warnings" in lines for n in names), r.stdout
    assert r.returncode == 0, r.stderr[-3000:]
    assert picture.stat().st_size > 10_000  # the front end drew the workflow
