"""What the node library and a hovered socket show of every pack node, read from a real ComfyUI.

The category already says HunyuanCustom, so display names do not repeat it; every input (required
and optional) and every output carries a tooltip.
"""

from __future__ import annotations

from comfyui_harness import PACK_DIR_NAME, comfyui_fixture, requires_comfyui

pytestmark = requires_comfyui

comfy = comfyui_fixture()


def pack_nodes(info: dict) -> dict:
    return {name: node for name, node in info.items()
            if node.get("python_module") == f"custom_nodes.{PACK_DIR_NAME}"}


def test_every_pack_node_is_listed(comfy):
    # Guards the other tests against passing over an empty set (a group that failed to load).
    nodes = pack_nodes(comfy.object_info())
    assert {"HunyuanCustomCloudRef2V720p", "HunyuanCustomCloudBatch480p", "HunyuanCustomComposeSubjects",
            "HunyuanCustomLocalModelLoader", "HunyuanCustomAudioDriven"} <= set(nodes), sorted(nodes)
    assert "[HunyuanCustom] nodes." not in comfy.log_text(), comfy.log_tail()


def test_display_names_do_not_repeat_the_category(comfy):
    nodes = pack_nodes(comfy.object_info())
    for name, node in nodes.items():
        # the (Ray) nodes sit in a sub-category of it (HunyuanCustom/Raylight)
        assert node["category"] == "HunyuanCustom" or node["category"].startswith("HunyuanCustom/"), name
        assert node["display_name"].strip(), name
        assert not node["display_name"].startswith("HunyuanCustom"), (name, node["display_name"])
    # Kept apart by what they are, not by the pack's name.
    shown = [node["display_name"] for node in nodes.values()]
    assert len(set(shown)) == len(shown), shown


def test_every_input_and_output_has_a_tooltip(comfy):
    missing = []
    for name, node in pack_nodes(comfy.object_info()).items():
        for group in ("required", "optional"):
            for socket, spec in (node["input"].get(group) or {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip") or "").strip():
                    missing.append(f"{name} input {socket}")
        tips = node.get("output_tooltips") or []
        for i, socket in enumerate(node["output_name"]):
            if i >= len(tips) or not str(tips[i] or "").strip():
                missing.append(f"{name} output {socket}")
    assert not missing, missing
