"""Every example workflow, queued the way the front end queues it, passes a real ComfyUI's /prompt
validation (COMFYUI_PATH).

Each UI-format file in example_workflows/ is turned into the API prompt the front end's Run button
sends (tests/workflow_check.graph_to_prompt, written after ComfyUI_frontend 1.27's graphToPrompt,
with 1.49's differences for the front end this ComfyUI serves)
and POSTed to /prompt of a ComfyUI whose input folder holds the shipped sample files and whose model
folders hold empty stand-ins with the file names the README gives: the server checks every widget
value (combo choices, ranges, types) and every link, so a widget value in the wrong slot (Load Image
as Mask's `channel: 'image'`) fails here. Validation only: the stand-ins are empty files, so a run
stops at its first model load, and the cloud nodes have no key and a loopback provider.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from comfyui_harness import (
    ComfyError,
    ComfyServer,
    comfyui_path,
    requires_comfyui,
    skip_reason,
    stand_in_models,
)
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from workflow_check import (
    MODE_BYPASS,
    MODE_NEVER,
    VIRTUAL,
    check_ui_workflow,
    graph_to_prompt,
    installed_frontend,
)

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
# core's multi-GPU example: core nodes and the pack's only (the Raylight one has its own test)
MULTIGPU = sorted((EXAMPLES / "multigpu").glob("*.json"))
SUBJECT_REPLACE = EXAMPLES / "HunyuanCustom Subject Replace (Local).json"
# Nodes a run of an example reaches first: with empty model files and no key, a run must stop at
# one of these, never in sampling or decoding.
# The front end this ComfyUI serves (its package in this Python): 1.27 on 0.3.64, 1.49 on 0.33.0.
FRONTEND = installed_frontend()
FIRST_NODES = {"HunyuanCustomLocalModelLoader", "VAELoader", "DualCLIPLoader", "CLIPVisionLoader",
               "HunyuanCustomCloudRef2V720p", "HunyuanCustomCloudRef2V480p",
               "HunyuanCustomCloudBatch720p", "HunyuanCustomCloudBatch480p"}


@pytest.fixture(scope="module")
def api():
    with FakeWaveSpeed(Scenario(api_key="sk-never-given-to-comfyui")) as server:
        yield server


@pytest.fixture(scope="module")
def comfy(api, tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    base = tmp_path_factory.mktemp("comfy-prompts")
    server = ComfyServer(base, {"WAVESPEED_API_BASE": api.base_url}, models_config=stand_in_models(base))
    try:
        server.start()
        # As the README tells users: the sample inputs go into ComfyUI/input.
        for asset in (p for p in EXAMPLES.iterdir() if p.is_file()):
            if asset.suffix != ".json":
                shutil.copy(asset, server.input_dir / asset.name)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def info(comfy):
    return comfy.object_info()


def submit_as_frontend(comfy, wf: dict, info: dict) -> tuple[dict, dict]:
    """(prompt, /prompt's answer) for the UI workflow, sent with the workflow in extra_data as the
    front end sends it."""
    prompt = graph_to_prompt(wf, info, FRONTEND)
    return prompt, comfy.submit(prompt, {"extra_pnginfo": {"workflow": wf}})


def finish(comfy, prompt_id: str) -> dict:
    """Wait until the queued run has ended (it stops at its first stand-in model or the missing
    key), so no run outlives its test."""
    return comfy.wait(prompt_id, timeout=120, raise_on_error=False)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_passes_prompt_validation(comfy, api, info, path):
    wf = json.loads(path.read_text())
    assert check_ui_workflow(wf, info, FRONTEND) == []
    prompt, answer = submit_as_frontend(comfy, wf, info)
    assert answer["node_errors"] == {}
    # every node the user sees runs (nothing of the examples is muted, bypassed or dropped)
    assert set(prompt) == {str(n["id"]) for n in wf["nodes"] if n["type"] not in VIRTUAL
                           and n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS)}
    entry = finish(comfy, answer["prompt_id"])
    status = entry["status"]
    # the run ends where it must with empty model files and no key: before any real work
    assert status["status_str"] == "error"
    failed = next(data for event, data in status["messages"] if event == "execution_error")
    assert failed["node_type"] in FIRST_NODES, failed
    # no key was ever configured: nothing reached the (loopback) provider
    assert [r for r in api.requests if r.method == "POST"] == []


@pytest.mark.parametrize("path", MULTIGPU, ids=lambda p: p.stem)
def test_multigpu_example_passes_prompt_validation_where_core_has_multigpu(comfy, api, info, path):
    if "MultiGPU_WorkUnits" not in info:
        pytest.skip(f"core at {comfyui_path()} has no MultiGPU CFG Split node (MultiGPU_WorkUnits: "
                    "ComfyUI 0.33+), which this example is for")
    test_example_workflow_passes_prompt_validation(comfy, api, info, path)


def test_load_image_as_mask_with_its_old_widget_order_is_refused(comfy, info):
    """The shipped bug: widgets_values [file, 'image', 'red'] put the upload button's value into
    `channel`. The front end sends channel='image'; /prompt answers 400 naming `channel`."""
    wf = json.loads(SUBJECT_REPLACE.read_text())
    mask = next(n for n in wf["nodes"] if n["type"] == "LoadImageMask")
    file, channel, upload = mask["widgets_values"]
    assert (channel, upload) == ("red", "image"), "the fixed order: file, channel, upload button"
    broken = copy.deepcopy(wf)
    next(n for n in broken["nodes"] if n["id"] == mask["id"])["widgets_values"] = [file, upload, channel]
    assert any("channel='image'" in p for p in check_ui_workflow(broken, info, FRONTEND))
    prompt = graph_to_prompt(broken, info, FRONTEND)
    assert prompt[str(mask["id"])]["inputs"]["channel"] == "image"
    with pytest.raises(ComfyError) as refused:
        comfy.submit(prompt, {"extra_pnginfo": {"workflow": broken}})
    assert refused.value.status == 400
    errors = refused.value.details["node_errors"]
    assert list(errors) == [str(mask["id"])]
    assert any(e["extra_info"].get("input_name") == "channel" for e in errors[str(mask["id"])]["errors"])


def test_a_missing_checkpoint_is_refused_when_run_is_pressed(comfy, info):
    """Load Model (Local) with a file that is not in models/diffusion_models: /prompt answers 400
    naming ckpt_name and where the file goes, as it does for core's own loaders, on every core
    (0.3.64 does not check a V3 combo's value itself; the node's validate_inputs does)."""
    wf = json.loads((EXAMPLES / "HunyuanCustom Ref2V (Local).json").read_text())
    loader = next(n for n in wf["nodes"] if n["type"] == "HunyuanCustomLocalModelLoader")
    loader["widgets_values"][0] = "hunyuan_video_custom_720p_fp8_scaled.safetensors"  # not downloaded
    prompt = graph_to_prompt(wf, info, FRONTEND)
    with pytest.raises(ComfyError) as refused:
        comfy.submit(prompt, {"extra_pnginfo": {"workflow": wf}})
    assert refused.value.status == 400
    errors = refused.value.details["node_errors"]
    assert list(errors) == [str(loader["id"])]
    [error] = errors[str(loader["id"])]["errors"]
    assert error["extra_info"]["input_name"] == "ckpt_name"
    assert "hunyuan_video_custom_720p_fp8_scaled.safetensors' is not in ComfyUI/models/diffusion_models" \
        in error["details"]
