"""A real ComfyUI starts with this pack loaded from the repository, and registers its nodes.

Needs a ComfyUI checkout: COMFYUI_PATH=/path/to/ComfyUI (and COMFYUI_PYTHON if ComfyUI runs in
another interpreter). Skipped otherwise. The last two tests check the harness itself with core
nodes only, so a failure in an e2e test of the pack can be trusted to be about the pack.
"""

from __future__ import annotations

import urllib.request

import pytest

from comfyui_harness import (
    NODE_NAMES,
    PACK_DIR_NAME,
    REPO_ROOT,
    ComfyError,
    comfyui_fixture,
    requires_comfyui,
)

pytestmark = requires_comfyui

comfy = comfyui_fixture()


def test_server_starts_and_imports_the_pack_from_the_repository(comfy):
    stats = comfy._request("GET", "/system_stats")
    assert stats["system"]["comfyui_version"]
    # Core lists every custom node folder it tried, with " (IMPORT FAILED)" for failures.
    assert f"custom_nodes/{PACK_DIR_NAME}" in comfy.log_text(), comfy.log_tail()
    assert not comfy.pack_import_failed(), comfy.log_tail()
    # Every group of nodes loaded (a failing one is skipped with a "not loaded" line).
    assert "[HunyuanCustom] nodes." not in comfy.log_text(), comfy.log_tail()


def test_cloud_nodes_are_registered(comfy):
    # Holds once the pack's cloud nodes exist (nodes/cloud.py, registered via comfy_entrypoint).
    info = comfy.object_info()
    missing = [name for name in NODE_NAMES if name not in info]
    assert not missing, f"nodes not in /object_info: {missing}\n{comfy.log_tail()}"
    for name in NODE_NAMES:
        node = info[name]
        assert node["python_module"] == f"custom_nodes.{PACK_DIR_NAME}"
        assert node["output"][0] == "VIDEO"
        # The sockets carry the names the README documents, not just their types.
        assert node["output_name"] == ["video", "frames", "fps", "url", "info"]
        assert {"image", "prompt"} <= set(node["input"]["required"])


def test_front_end_extension_is_served(comfy):
    # WEB_DIRECTORY: core lists the pack's script for the browser and serves it from the repository.
    listed = comfy._request("GET", "/extensions")
    script = f"/extensions/{PACK_DIR_NAME}/hunyuancustom.js"
    # Listed under two paths (WEB_DIRECTORY and [tool.comfy] web both set), it would register twice.
    assert [p for p in listed if p.endswith("/hunyuancustom.js")] == [script], listed
    with urllib.request.urlopen(comfy.url + script, timeout=10) as r:
        assert r.read() == (REPO_ROOT / "js" / "hunyuancustom.js").read_bytes()


def test_harness_runs_a_graph_and_reads_its_output(comfy):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "smoke"}},
    }
    entry = comfy.wait(comfy.queue(graph), timeout=60)
    image = entry["outputs"]["2"]["images"][0]
    png = comfy.view(image["filename"], image["subfolder"], image["type"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (comfy.output_dir / image["subfolder"] / image["filename"]).read_bytes() == png


def test_harness_reports_a_refused_graph_with_its_node_errors(comfy):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                          "color": 0}}}  # no output node
    with pytest.raises(ComfyError, match="refused the prompt") as err:
        comfy.queue(graph)
    assert err.value.details["error"]["type"] == "prompt_no_outputs"


def test_raylight_nodes_are_registered_without_raylight(comfy):
    # The (Ray) nodes import `ray` only when they run: this server has no Raylight in custom_nodes.
    info = comfy.object_info()
    assert "RayInitializer" not in info
    expected = {
        "HunyuanCustomReleasedRecipeRay": ["ray_actors"],
        "HunyuanCustomAudioDrivenRay": ["ray_actors", "latent", "audio", "fps"],
        "HunyuanCustomVideoDrivenRay": ["ray_actors", "latent", "audio", "fps", "masked_frames"],
    }
    for name, outputs in expected.items():
        assert name in info, f"{name} not in /object_info\n{comfy.log_tail()}"
        node = info[name]
        assert node["category"] == "HunyuanCustom/Raylight"
        assert node["output"][0] == "RAY_ACTORS" and node["output_name"] == outputs
        assert node["input"]["required"]["ray_actors"][0] == "RAY_ACTORS"
