"""Check a UI-format workflow against a running ComfyUI's /object_info, the way the front end loads it.

A workflow "loads with no missing nodes or widgets" when every node type is registered, every
widget value has a widget (and vice versa, counting the extra control_after_generate and upload
values the front end stores), combo values are among the options, and every link joins an output
and an input of the same type.
"""

from __future__ import annotations

PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Node types of the front end itself (not in /object_info, never sent to the server), with their
# widget values: a note's text.
FRONTEND_ONLY = {"Note": 1, "MarkdownNote": 1}


def _widgets(spec: dict) -> list[tuple[str, str, dict, list | None]]:
    """(name, type, options, combo choices) of each widget input, in the front end's order."""
    out = []
    order = spec.get("input_order") or {}
    for section in ("required", "optional"):
        inputs = spec.get("input", {}).get(section, {}) or {}
        for name in order.get(section, list(inputs)):
            entry = inputs[name]
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            if isinstance(kind, list):
                out.append((name, "COMBO", opts, kind))
            elif kind in PRIMITIVES and not opts.get("forceInput"):
                out.append((name, kind, opts, opts.get("options") if kind == "COMBO" else None))
    return out


def expected_widget_values(spec: dict) -> list[tuple[str, str, dict, list | None]]:
    slots = []
    for name, kind, opts, choices in _widgets(spec):
        slots.append((name, kind, opts, choices))
        if opts.get("control_after_generate"):
            slots.append((f"{name}:control_after_generate", "CONTROL", {}, None))
        if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
            slots.append((f"{name}:upload", "UPLOAD", {}, None))
    return slots


def check_ui_workflow(wf: dict, object_info: dict) -> list[str]:
    problems: list[str] = []
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY:
            values = node.get("widgets_values") or []
            if len(values) != FRONTEND_ONLY[node["type"]] or not all(isinstance(v, str) for v in values):
                problems.append(f"node {node['id']} ({node['type']}): expected its text, got {values!r}")
            if node.get("inputs") or node.get("outputs"):
                problems.append(f"node {node['id']} ({node['type']}): a note has no sockets")
            continue
        spec = object_info.get(node["type"])
        if spec is None:
            problems.append(f"node {node['id']}: missing node type {node['type']}")
            continue
        slots = expected_widget_values(spec)
        values = node.get("widgets_values") or []
        if len(values) != len(slots):
            problems.append(f"node {node['id']} ({node['type']}): {len(values)} widget values for "
                            f"{len(slots)} widgets {[s[0] for s in slots]}")
            continue
        for value, (name, kind, opts, choices) in zip(values, slots, strict=True):
            if kind == "COMBO" and choices is not None and value not in choices:
                problems.append(f"node {node['id']}: {name}={value!r} not in {choices[:8]}")
            if kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"node {node['id']}: {name}={value!r} is not a number")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    bounds = f"{opts.get('min')}..{opts.get('max')}"
                    problems.append(f"node {node['id']}: {name}={value!r} outside {bounds}")
            if kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"node {node['id']}: {name}={value!r} is not a boolean")
            if kind == "CONTROL" and value not in ("fixed", "increment", "decrement", "randomize"):
                problems.append(f"node {node['id']}: {name}={value!r} is not a control mode")
    for link_id, src, src_slot, dst, dst_slot, kind in wf.get("links", []):
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: joins a node that does not exist")
            continue
        src_spec, dst_node = object_info.get(nodes[src]["type"]), nodes[dst]
        if src_spec is not None and src_slot >= len(src_spec["output"]):
            problems.append(f"link {link_id}: {nodes[src]['type']} has no output {src_slot}")
        elif src_spec is not None and src_spec["output"][src_slot] != kind:
            problems.append(f"link {link_id}: output type {src_spec['output'][src_slot]} != {kind}")
        dst_inputs = dst_node.get("inputs", [])
        if dst_slot >= len(dst_inputs) or dst_inputs[dst_slot].get("type") != kind:
            problems.append(f"link {link_id}: input {dst_slot} of node {dst} is not {kind}")
    return problems
