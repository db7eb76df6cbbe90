"""The Raylight example workflow passes a real ComfyUI's /prompt validation with Raylight's nodes
loaded (COMFYUI_PATH, and RAYLIGHT_PATH: a Raylight checkout, komikndr/raylight).

Raylight is linked into the test server's custom_nodes beside the pack; its nodes load on a CPU
machine (it asks for CUDA only when Ray Init Actor runs). The workflow is queued as the front end
queues it; with empty model files and no GPU, the run must stop at its first node (Ray Init Actor
refuses a machine without GPUs, the loaders refuse empty files), never later.

Raylight at c0495710 imports `comfy_kitchen` (ComfyUI's kernels package, in newer cores' requirements:
0.33.0 has it, 0.3.64 does not) and does not load without it; on such a tree the test
skips naming that.

The example lives in example_workflows/raylight/: the template browser lists only the top folder,
whose workflows must open without missing nodes in a ComfyUI without Raylight.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from comfyui_harness import README_MODEL_FILES, ComfyServer, requires_comfyui, stand_in_models
from workflow_check import VIRTUAL, check_ui_workflow, graph_to_prompt, installed_frontend

RAYLIGHT_SKIP = ("RAYLIGHT_PATH is not set: the Raylight example needs a Raylight checkout "
                 "(komikndr/raylight; CI uses ../shared/raylight/src)")
pytestmark = [
    requires_comfyui,
    pytest.mark.skipif(not os.environ.get("RAYLIGHT_PATH"), reason=RAYLIGHT_SKIP),
    # the server runs in this interpreter's environment (COMFYUI_PYTHON aside, as in every e2e test)
    pytest.mark.skipif(importlib.util.find_spec("comfy_kitchen") is None,
                       reason="this ComfyUI tree's environment has no comfy_kitchen (core's kernels package: "
                              "0.33.0 has it, 0.3.64 not), which Raylight c0495710 imports: Raylight does "
                              "not load here"),
]

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "example_workflows" / "raylight" / "HunyuanCustom Ref2V (Raylight).json"
# the convert CLI's output, as the note says
CONVERTED = "diffusion_models/hunyuancustom_720P_fp8.safetensors"
FIRST_NODES = {"RayInitializer", "VAELoader", "DualCLIPLoader", "CLIPVisionLoader"}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-raylight")
    server = ComfyServer(base, models_config=stand_in_models(base, README_MODEL_FILES + (CONVERTED,)))
    (server.custom_nodes_dir / "raylight").symlink_to(Path(os.environ["RAYLIGHT_PATH"]).resolve(),
                                                      target_is_directory=True)
    try:
        server.start()
        (server.input_dir / "hunyuancustom_reference.png").write_bytes(
            (REPO / "example_workflows" / "hunyuancustom_reference.png").read_bytes())
        yield server
    finally:
        server.stop()


def test_raylight_example_passes_prompt_validation_and_stops_at_its_first_node(comfy):
    info = comfy.object_info()
    assert "RayInitializer" in info and "XFuserKSamplerAdvanced" in info, comfy.log_tail()
    assert not comfy.pack_import_failed(), comfy.log_tail()
    wf = json.loads(WORKFLOW.read_text())
    frontend = installed_frontend()
    assert check_ui_workflow(wf, info, frontend) == []
    prompt = graph_to_prompt(wf, info, frontend)
    assert set(prompt) == {str(n["id"]) for n in wf["nodes"] if n["type"] not in VIRTUAL}
    answer = comfy.submit(prompt, {"extra_pnginfo": {"workflow": wf}})
    assert answer["node_errors"] == {}
    status = comfy.wait(answer["prompt_id"], timeout=120, raise_on_error=False)["status"]
    assert status["status_str"] == "error"
    failed = next(data for event, data in status["messages"] if event == "execution_error")
    assert failed["node_type"] in FIRST_NODES, failed
    # the chain the note describes: Raylight's loader -> Released Recipe (Ray) -> Raylight's sampler,
    # fed by Conditioning (Local)
    by_id = {n["id"]: n for n in wf["nodes"]}
    feeds = {(by_id[lk[1]]["type"], by_id[lk[3]]["type"]) for lk in wf["links"]}
    assert {("RayInitializer", "RayUNETLoader"), ("RayUNETLoader", "HunyuanCustomReleasedRecipeRay"),
            ("HunyuanCustomReleasedRecipeRay", "XFuserKSamplerAdvanced"),
            ("HunyuanCustomConditioning", "XFuserKSamplerAdvanced"),
            ("XFuserKSamplerAdvanced", "VAEDecodeTiled")} <= feeds
    assert CONVERTED.split("/")[-1] in by_id[13]["widgets_values"]
    assert "hunyuancustom_reference.png" in next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")[
        "widgets_values"][0]
