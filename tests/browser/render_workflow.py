"""Render an example workflow in the real ComfyUI front end for the README, and check the prompt
converter against the front end on every example workflow. Not a test (run by hand):

    COMFYUI_PATH=/path/to/ComfyUI python tests/browser/render_workflow.py \
        [--workflow "HunyuanCustom Ref2V (Local).json"] [--out docs/local_ref2v_workflow.png]

Starts ComfyUI with the pack, empty stand-in model files named as in the README and the sample
inputs, opens each example workflow in headless Chromium (Debian's /usr/bin/chromium, playwright-core
from the cache tests/test_browser.py installs), compares the front end's own graphToPrompt output
with tests/workflow_check.graph_to_prompt (exit 1 on any difference), and saves the picture of the
chosen workflow as a 256-colour PNG. It also reports any warning the front end shows on opening a
workflow (dialogs, toasts, console errors): with the model files present there must be none.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from comfyui_harness import ComfyServer, stand_in_models  # noqa: E402
from workflow_check import graph_to_prompt, installed_frontend  # noqa: E402

EXAMPLES = REPO / "example_workflows"
NODE_MODULES = Path(os.environ.get("HUNYUANCUSTOM_BROWSER_CACHE")
                    or Path.home() / ".cache" / "hunyuancustom-browser") / "node_modules"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default="HunyuanCustom Ref2V (Local).json")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "local_ref2v_workflow.png")
    ap.add_argument("--size", default="2000x1400", help="viewport WIDTHxHEIGHT (default 2000x1400)")
    args = ap.parse_args()
    if not (NODE_MODULES / "playwright-core").is_dir():
        sys.exit(f"playwright-core is not in {NODE_MODULES}: run tests/test_browser.py once (it installs it)")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = ComfyServer(base / "comfy", models_config=stand_in_models(base))
        workflows = {}
        for path in sorted(p for p in EXAMPLES.iterdir() if p.is_file()):
            if path.suffix == ".json":
                workflows[path.name] = json.loads(path.read_text())
            else:
                shutil.copy(path, server.input_dir / path.name)
        shot = base / "shot.png"
        cfg = {"url": None, "chromium": "/usr/bin/chromium", "userDataDir": str(base / "profile"),
               "workflows": workflows, "shot": {"name": args.workflow, "path": str(shot),
                                                "width": width, "height": height}}
        try:
            server.start()
            cfg["url"] = server.url + "/"
            (base / "config.json").write_text(json.dumps(cfg))
            r = subprocess.run(["node", str(Path(__file__).with_suffix(".cjs")), str(base / "config.json")],
                               capture_output=True, text=True, timeout=600,
                               env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
            info = server.object_info()
        finally:
            server.stop()
        try:
            report = json.loads(r.stdout)
        except ValueError:
            sys.exit(f"the browser script printed no report (rc {r.returncode}):\n{r.stderr[-3000:]}")
        if report.get("error"):
            sys.exit(f"browser: {report['error']}")
        differ = 0
        for name, wf in workflows.items():
            ours, theirs = graph_to_prompt(wf, info, installed_frontend()), report["prompts"][name]
            same = ours == theirs
            differ += not same
            print(f"{name}: graph_to_prompt {'equals' if same else 'DIFFERS FROM'} the front end's prompt")
            if not same:
                print(json.dumps({"ours": ours, "front end": theirs}, indent=1))
                if not report["videoPreviews"][name]:
                    print(f"{name}: a Load Video preview did not load within 30 s")
            warnings = report["warnings"][name]
            differ += bool(warnings)
            print(f"{name}: opens without warnings" if not warnings else f"{name}: WARNINGS {warnings}")
        from PIL import Image

        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256).save(args.out, optimize=True)
        print(f"{args.out} ({args.out.stat().st_size // 1024} KB, canvas scale {report['scale']:.2f})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
