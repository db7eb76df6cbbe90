"""Missing model files offered for download, in the real front end (needs COMFYUI_PATH, Chromium and
playwright-core, installed on first use as for tests/test_browser.py).

A ComfyUI without any model file opens each local example workflow: the front end must list every
`.safetensors` file the workflow names in its loaders' `properties.models` (name and folder), as it
does for core's own HunyuanVideo template: front end 1.27 (ComfyUI 0.3.64) in its "Missing Models"
dialog with Download / Copy URL, front end 1.49 (0.33.0) in the errors panel's "Missing Models"
list with Download. tests/browser/missing_models.cjs reads what the page shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_browser import CHROMIUM, _ensure_chromium, _ensure_playwright

from comfyui_harness import ComfyServer, comfyui_path, requires_comfyui, skip_reason

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "browser" / "missing_models.cjs"
LOCAL = sorted((REPO / "example_workflows").glob("*(Local).json"))


def _listed(text: str, name: str, directory: str) -> bool:
    # 1.27 labels a row "<folder> / <file>"; 1.49 shows the file with its folder on the next line.
    next_line = re.escape(name) + r"\s*\n\s*" + re.escape(directory)
    return f"{directory} / {name}" in text or re.search(next_line, text) is not None


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    _ensure_chromium()
    modules = _ensure_playwright()
    tmp = tmp_path_factory.mktemp("browser-models")
    server = ComfyServer(tmp / "comfy")  # no model files at all
    for path in (p for p in (REPO / "example_workflows").iterdir() if p.is_file()):
        if path.suffix != ".json":
            shutil.copy(path, server.input_dir / path.name)
    try:
        server.start()
        cfg = {"url": server.url + "/", "chromium": str(CHROMIUM), "userDataDir": str(tmp / "profile"),
               "workflows": {p.name: json.loads(p.read_text()) for p in LOCAL}}
        (tmp / "config.json").write_text(json.dumps(cfg))
        r = subprocess.run(["node", str(SCRIPT), str(tmp / "config.json")], capture_output=True, text=True,
                           timeout=540, env={**os.environ, "NODE_PATH": str(modules)})
    finally:
        server.stop()
    try:
        report = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"browser script printed no report (rc {r.returncode}):\n{r.stderr[-3000:]}")
    if report.get("error"):
        pytest.fail(f"browser: {report['error']}")
    return report["shown"]


@pytest.mark.parametrize("path", LOCAL, ids=lambda p: p.stem)
def test_a_comfyui_without_the_files_offers_each_one_for_download(shown, path):
    wf = json.loads(path.read_text())
    models = [m for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert len(models) == 4, models  # VAE, clip_l, llava_llama3_fp8_scaled, llava_llama3_vision
    text = shown[path.name]
    assert text is not None, f"{path.name}: no missing-models list shown"
    assert "Download" in text
    for m in models:
        assert _listed(text, m["name"], m["directory"]), (m, text[:3000])
