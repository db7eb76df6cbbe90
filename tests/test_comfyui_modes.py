"""The mode nodes inside a real ComfyUI (COMFYUI_PATH).

Virtual try-on: LoadImage x2 -> HunyuanCustom Compose Subjects -> Ref2V (Cloud 720p, against the
loopback API) -> SaveVideo; the image that reaches the provider is the composed one. The mode
example workflows load with no missing nodes or widgets.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_harness import comfyui_path, execution_error, requires_comfyui, running_comfyui, skip_reason
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from workflow_check import check_ui_workflow

pytestmark = requires_comfyui

SECRET = "sk-modes-e2e-5c1d"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
MODE_WORKFLOWS = ("hunyuancustom_virtual_tryon.json",)


@pytest.fixture(scope="module")
def api():
    with FakeWaveSpeed(Scenario(api_key=SECRET)) as server:
        yield server


@pytest.fixture(scope="module")
def comfy(api, tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    base = tmp_path_factory.mktemp("comfy-modes")
    with running_comfyui(base, {"WAVESPEED_API_BASE": api.base_url}) as server:
        (server.data_dir / "api_key").write_text(SECRET)
        # As the README tells users: the sample inputs go into ComfyUI/input.
        for asset in EXAMPLES.iterdir():
            if asset.suffix != ".json":
                shutil.copy(asset, server.input_dir / asset.name)
        yield server


@pytest.fixture(autouse=True)
def fresh_api(api):
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=1))
    api.reset()


def compose_node(**widgets):
    node = {"image_1": ["1", 0], "image_2": ["2", 0], "layout": "row", "width": 1280, "height": 720,
            "padding": 16, "invert_masks": False}
    node.update(widgets)
    return node


def tryon_graph(**compose_widgets):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_tryon_person.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "hunyuancustom_tryon_garment.png"}},
        "3": {"class_type": "HunyuanCustomComposeSubjects", "inputs": compose_node(**compose_widgets)},
        "4": {"class_type": "HunyuanCustomCloudRef2V720p", "inputs": {
            "image": ["3", 0], "prompt": "The person wears the red T-shirt.", "negative_prompt": "",
            "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0, "seed": 5,
            "enable_safety_checker": True}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "video/tryon",
                                                   "format": "auto", "codec": "auto"}},
    }


def test_compose_node_schema(comfy):
    node = comfy.object_info("HunyuanCustomComposeSubjects")["HunyuanCustomComposeSubjects"]
    assert node["category"] == "HunyuanCustom" and node["output"] == ["IMAGE"]
    req, opt = node["input"]["required"], node["input"]["optional"]
    assert list(req) == ["image_1", "layout", "width", "height", "padding", "invert_masks"]
    assert set(opt) == {"image_2", "image_3", "image_4", "mask_1", "mask_2", "mask_3", "mask_4"}
    assert req["width"][1]["step"] == 16 and req["height"][1]["step"] == 16


def test_mode_example_workflows_load_without_missing_nodes_or_widgets(comfy):
    info = comfy.object_info()
    for name in MODE_WORKFLOWS:
        problems = check_ui_workflow(json.loads((EXAMPLES / name).read_text()), info)
        assert not problems, f"{name}: {problems}"


def test_virtual_tryon_sends_the_composed_image_to_the_cloud_node(comfy, api):
    entry = comfy.wait(comfy.queue(tryon_graph()), timeout=120)
    saved = entry["outputs"]["5"]["images"][0]
    assert (comfy.output_dir / saved["subfolder"] / saved["filename"]).stat().st_size > 0
    body = next(r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)
    with urllib.request.urlopen(body["image"], timeout=10) as resp:  # the uploaded reference
        ref = np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB")).astype(int)
    assert ref.shape == (720, 1280, 3)
    # The person (grey top, blue trousers) on the left half, the red garment on the right half.
    red = (ref[..., 0] > 150) & (ref[..., 1] < 80) & (ref[..., 2] < 80)
    navy = (abs(ref[..., 0] - 50) < 20) & (abs(ref[..., 1] - 60) < 20) & (abs(ref[..., 2] - 110) < 20)
    assert red[:, 640:].sum() > 10_000 and red[:, :640].sum() < 200  # (the smile is red too)
    assert navy[:, :640].sum() > 10_000 and navy[:, 640:].sum() == 0
    assert (ref[:16] >= 250).all()  # white margin on top


def test_compose_error_reaches_the_user_before_any_request(comfy, api):
    entry = comfy.wait(comfy.queue(tryon_graph(mask_2=["2", 1])), raise_on_error=False)
    err = execution_error(entry)
    assert err and err["node_type"] == "HunyuanCustomComposeSubjects"
    assert err["exception_message"].startswith("mask_2:") and "64x64" in err["exception_message"]
    assert api.requests == []
