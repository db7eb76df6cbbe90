"""Example workflows as the front end sees them, checked against a running ComfyUI's /object_info.

`check_ui_workflow`: a UI-format workflow "loads with no missing nodes or widgets" when every node
type is registered, every widget value has a widget (and vice versa, counting the extra values the
front end stores: control_after_generate, the upload button), combo values are among the options,
and every link joins an output and an input of the same type.

`graph_to_prompt`: the API prompt the front end (ComfyUI_frontend 1.27, and 1.49 where it differs:
`frontend=`) would queue for a UI-format workflow, written from reading its graphToPrompt /
ExecutableNodeDTO: what the Run button sends to `/prompt`, so a test can have the real server
validate exactly that. Both read a file's widgets_values by position onto the widgets of the
node's current definition: values the file lacks for optional inputs core added since (0.33.0's
Create Video `bit_depth`, Save Video's hidden `codec`) keep their defaults, and a DynamicCombo
(0.33.0's Save Video `format`) is followed by the widgets of its selected option.
"""

from __future__ import annotations

from typing import Any

# Input types the front end draws as a widget (the rest are sockets only).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MARKDOWN"}
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Node types of the front end itself (not in /object_info, never sent to the server), with their
# widget values: a note's text.
FRONTEND_ONLY = {"Note": 1, "MarkdownNote": 1}
# Every node type the front end registers itself; all are "virtual" (never queued).
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_NEVER, MODE_BYPASS = 2, 4  # LGraphEventMode: muted / bypassed
# Core nodes that get the front end's audio player (a widget that keeps no value in the file).
AUDIO_UI_NODES = {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
# The front end versions this converter was written against and checked with in the browser
# (tests/test_browser_prompts.py): 1.27.10 (ComfyUI 0.3.64) and 1.49.6 (0.33.0). They differ in
# the widgets they add themselves: 1.27 sends Load Audio's player as audioUI="", 1.49 does not.
# Both send Load Video's preview as video-preview="" (a widget added once the video has loaded,
# so in the prompt of any Run after the workflow has opened).
FRONTEND_1_27, FRONTEND_1_49 = (1, 27), (1, 49)


def installed_frontend() -> tuple[int, int]:
    """(major, minor) of the comfyui-frontend-package installed in this Python (the one ComfyUI
    serves when it runs on it); 1.27 when none is installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("comfyui-frontend-package").split(".")[:2]
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return FRONTEND_1_27


class ConversionError(ValueError):
    """The workflow cannot be turned into a prompt (the front end would refuse or throw too)."""


def _options(entry) -> dict:
    return (entry[1] if entry and len(entry) > 1 and isinstance(entry[1], dict) else None) or {}


def _ordered_inputs(spec: dict, node_type: str,
                    frontend: tuple[int, int] = FRONTEND_1_27) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of every input in the order the front end builds them: input_order's
    required, then its optional, then inputs the front end adds itself (the upload button, the
    audio player): the upload button of Load Image as Mask comes after `channel`. The options of an
    optional input carry `"_optional": True`."""
    inputs = spec.get("input", {}) or {}
    required = dict(inputs.get("required", {}) or {})
    optional = dict(inputs.get("optional", {}) or {})
    # The front end's additions to `required` (uploadImage / uploadAudio extensions).
    if node_type in AUDIO_UI_NODES and frontend < FRONTEND_1_49:
        required["audioUI"] = ["AUDIO_UI", {}]
    upload = next((name for name, entry in required.items()
                   if any(_options(entry).get(f) is True for f in UPLOAD_FLAGS)
                   and (isinstance(entry[0], list) or entry[0] == "COMBO")), None)
    if upload is not None:
        required["upload"] = ["IMAGEUPLOAD", {"imageInputName": upload}]
        if _options(required[upload]).get("video_upload") is True:
            required["video-preview"] = ["AUDIO_UI", {}]  # like the audio player: sends "", no value kept
    elif _options(required.get("audio")).get("audio_upload") is True:
        required["upload"] = ["AUDIOUPLOAD", {}]

    def entry(section: dict, name: str) -> tuple[str, Any, dict]:
        opts = _options(section[name])
        return name, section[name][0], ({**opts, "_optional": True} if section is optional else opts)

    order = spec.get("input_order")
    if not order:
        return [entry(required, n) for n in required] + [entry(optional, n) for n in optional]
    out = [entry(required, n) for n in order.get("required", []) if n in required]
    out += [entry(optional, n) for n in order.get("optional", []) if n in optional]
    seen = {name for name, _, _ in out}
    out += [entry(required, n) for n in required if n not in seen]
    out += [entry(optional, n) for n in optional if n not in seen and n not in required]
    return out


DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # core's V3 DynamicCombo (0.33.0's Save Video `format`)


def widget_slots(spec: dict, node_type: str = "", values: list | None = None,
                 frontend: tuple[int, int] = FRONTEND_1_27) -> list[dict]:
    """The node's widgets in the front end's order. Each: name, kind (a widget input type, CONTROL,
    FILTER, UPLOAD or AUDIO_UI), options, choices (combos), sent (whether graphToPrompt puts it
    into the prompt: control and upload widgets are stored in the file but never sent), stored
    (whether it has a place in widgets_values: all but the audio player), optional (an optional
    input: a file from before core added it lacks its value and the front end keeps the default).

    A DynamicCombo (front end 1.49) is a combo of its options' keys followed by the widgets of the
    selected option, named `<combo>.<input>`; which option is selected comes from `values` (the
    file's widgets_values, read by position as configure() does), else the first."""
    slots: list[dict] = []

    def stored_count() -> int:
        return sum(1 for s in slots if s.get("stored", True))

    def add(name: str, kind: Any, opts: dict) -> None:
        if kind in ("IMAGEUPLOAD", "AUDIOUPLOAD"):
            slots.append({"name": name, "kind": "UPLOAD", "opts": {}, "choices": None, "sent": False})
            return
        if kind == "AUDIO_UI":  # the audio player: keeps no slot in widgets_values, sends ""
            slots.append({"name": name, "kind": "AUDIO_UI", "opts": {"default": ""}, "choices": None,
                          "sent": True, "stored": False})
            return
        optional = bool(opts.get("_optional"))
        if kind == DYNAMIC_COMBO:
            options = opts.get("options") or []
            keys = [o["key"] for o in options]
            index = stored_count()
            chosen = values[index] if values is not None and index < len(values) else None
            if chosen not in keys:
                chosen = opts.get("default", keys[0] if keys else None)
            slots.append({"name": name, "kind": "COMBO", "opts": {**opts, "default": chosen},
                          "choices": keys, "sent": True, "optional": optional})
            picked = next((o for o in options if o["key"] == chosen), None)
            inputs = (picked or {}).get("inputs") or {}
            for section, is_optional in ((inputs.get("required") or {}, optional),
                                         (inputs.get("optional") or {}, True)):
                for child, entry in section.items():
                    child_opts = _options(entry)
                    add(f"{name}.{child}", entry[0], {**child_opts, "_optional": is_optional})
            return
        combo = isinstance(kind, list) or kind == "COMBO"
        if not combo and (kind not in WIDGET_TYPES or opts.get("forceInput")):
            return  # a socket only
        choices = kind if isinstance(kind, list) else (opts.get("options") if combo else None)
        slots.append({"name": name, "kind": "COMBO" if combo else kind, "opts": opts, "choices": choices,
                      "sent": True, "optional": optional})
        # The value-control combo (and, for a combo, its filter text) follow their widget; INT
        # inputs named seed / noise_seed get one even without the flag (legacy convention).
        control = opts.get("control_after_generate")
        if kind == "INT" and name in ("seed", "noise_seed") and control is None:
            control = True
        if control and (kind == "INT" or combo):
            slots.append({"name": f"{name}:control_after_generate", "kind": "CONTROL", "opts": {},
                          "choices": None, "sent": False, "optional": optional})
            if combo:
                slots.append({"name": f"{name}:control_filter_list", "kind": "FILTER", "opts": {},
                              "choices": None, "sent": False, "optional": optional})

    for name, kind, opts in _ordered_inputs(spec, node_type, frontend):
        add(name, kind, opts)
    return slots


def expected_widget_values(spec: dict, node_type: str = "", values: list | None = None,
                           frontend: tuple[int, int] = FRONTEND_1_27) -> list[tuple]:
    """(name, kind, options, choices) of each widgets_values slot, in the front end's order."""
    return [(s["name"], s["kind"], s["opts"], s["choices"])
            for s in widget_slots(spec, node_type, values, frontend) if s.get("stored", True)]


def check_ui_workflow(wf: dict, object_info: dict, frontend: tuple[int, int] = FRONTEND_1_27) -> list[str]:
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
        values = node.get("widgets_values") or []
        stored = [s for s in widget_slots(spec, node["type"], values, frontend) if s.get("stored", True)]
        slots = [(s["name"], s["kind"], s["opts"], s["choices"]) for s in stored]
        # A file saved before core added optional inputs at the end (0.33.0's Create Video
        # `bit_depth`) lacks their values: the front end keeps their defaults, nothing shifts.
        missing = stored[len(values):]
        if len(values) > len(slots) or not all(s.get("optional") and "default" in s["opts"]
                                                 or s["kind"] in ("CONTROL", "FILTER") and s.get("optional")
                                                 for s in missing):
            problems.append(f"node {node['id']} ({node['type']}): {len(values)} widget values for "
                            f"{len(slots)} widgets {[s[0] for s in slots]}")
            continue
        for value, (name, kind, opts, choices) in zip(values, slots[:len(values)], strict=True):
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
    for link_id, src, src_slot, dst, dst_slot, kind in _links(wf).values():
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


# --- UI workflow -> API prompt (the front end's graphToPrompt) -------------------------------------

def _links(wf: dict) -> dict[int, tuple]:
    """link id -> (id, origin node, origin slot, target node, target slot, type); both the 0.4
    list form and the 1.0 object form."""
    out = {}
    for link in wf.get("links", []) or []:
        if isinstance(link, dict):
            link = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                    link["target_slot"], link.get("type"))
        out[link[0]] = tuple(link[:6])
    return out


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph's isValidConnection: '*' / '' match anything; comma lists match any member."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_valid_connection(x, y) for x in a.split(",") for y in b.split(","))


class _Graph:
    def __init__(self, wf: dict, object_info: dict, frontend: tuple[int, int] = FRONTEND_1_27):
        self.frontend = frontend
        if (wf.get("definitions") or {}).get("subgraphs") or any(
                isinstance(n.get("type"), str) and len(n["type"]) == 36 and n["type"].count("-") == 4
                for n in wf.get("nodes", [])):
            raise ConversionError("subgraphs are not handled by this converter")
        self.nodes = {n["id"]: n for n in wf.get("nodes", [])}
        self.links = _links(wf)
        self.info = object_info
        for node in self.nodes.values():
            if node["type"] not in VIRTUAL and node["type"] not in object_info:
                raise ConversionError(f"node {node['id']}: unknown node type {node['type']!r}")

    def input_link(self, node: dict, slot: int):
        inputs = node.get("inputs") or []
        if slot >= len(inputs):
            raise ConversionError(f"node {node['id']} has no input {slot}")
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        if link_id not in self.links:
            raise ConversionError(f"node {node['id']} input {inputs[slot].get('name')}: "
                                  f"no link {link_id}")
        return self.links[link_id]

    def resolve_input(self, node: dict, slot: int, visited: set, kind=None):
        """(origin node id, origin slot) an input is fed from, through bypassed nodes and
        reroutes; None when nothing real is connected (then the widget value counts)."""
        key = (node["id"], "I", slot)
        if key in visited:
            raise ConversionError(f"circular links at node {node['id']} input {slot}")
        visited.add(key)
        link = self.input_link(node, slot)
        if link is None:
            return None
        origin = self.nodes.get(link[1])
        if origin is None:
            raise ConversionError(f"link {link[0]}: no origin node {link[1]}")
        return self.resolve_output(origin, link[2], kind if kind is not None else
                                   node["inputs"][slot].get("type"), visited)

    def resolve_output(self, node: dict, slot: int, kind, visited: set):
        key = (node["id"], "O", slot)
        if key in visited:
            raise ConversionError(f"circular links at node {node['id']} output {slot}")
        visited.add(key)
        if node.get("mode") == MODE_BYPASS:
            index = self._bypass_slot(node, slot, kind)
            return None if index == -1 else self.resolve_input(node, index, visited)
        if node["type"] in VIRTUAL:
            # A reroute passes its input through; a primitive has no input (its value was written
            # into the target's widget), so the link itself gives nothing.
            if slot < len(node.get("inputs") or []):
                return self.resolve_input(node, slot, visited, kind)
            return None
        return node["id"], slot

    def _bypass_slot(self, node: dict, slot: int, kind) -> int:
        """Which input a bypassed node passes to its output `slot` (the front end's rule)."""
        inputs = node.get("inputs") or []
        if kind in ("*", ""):
            return slot if len(inputs) > slot else 0
        outputs = node.get("outputs") or []
        out_kind = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs) and _valid_connection(inputs[slot].get("type"), out_kind) \
                and _valid_connection(inputs[slot].get("type"), kind):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == kind:
                return i
        for i, inp in enumerate(inputs):
            if _valid_connection(inp.get("type"), out_kind) and _valid_connection(inp.get("type"), kind):
                return i
        return -1

    def widget_values(self, node: dict) -> dict[str, Any]:
        """name -> value of the widgets graphToPrompt sends, after configure() put the file's
        widgets_values onto the widgets by position (a missing value keeps the default)."""
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some custom nodes store a dict; the front end then keeps defaults
            values = []
        out = {}
        slots = widget_slots(self.info[node["type"]], node["type"], values, self.frontend)
        stored = [s for s in slots if s.get("stored", True)]  # configure(): values by position
        for i, slot in enumerate(stored + [s for s in slots if not s.get("stored", True)]):
            if not slot["sent"]:
                continue
            if i < len(stored) and i < len(values):
                value = values[i]
            elif "default" in slot["opts"]:
                value = slot["opts"]["default"]
            elif slot["choices"]:
                value = slot["choices"][0]
            else:
                continue
            out[slot["name"]] = {"__value__": value} if isinstance(value, list) else value
        return out

    def primitive_values(self) -> dict[tuple[int, str], Any]:
        """(target node, widget name) -> value a PrimitiveNode writes before queueing (applyToGraph)."""
        out = {}
        for node in self.nodes.values():
            if node["type"] != "PrimitiveNode" or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
                continue
            values = node.get("widgets_values") or []
            if not values:
                continue
            for output in node.get("outputs") or []:
                for link_id in output.get("links") or []:
                    link = self.links.get(link_id)
                    target = self.nodes.get(link[3]) if link else None
                    if target is None:
                        continue
                    inp = (target.get("inputs") or [])[link[4]] if link[4] < len(target.get("inputs") or []) \
                        else None
                    widget = (inp or {}).get("widget") or {}
                    if widget.get("name"):
                        out[(target["id"], widget["name"])] = values[0]
        return out


def graph_to_prompt(wf: dict, object_info: dict,
                    frontend: tuple[int, int] = FRONTEND_1_27) -> dict[str, dict]:
    """The API prompt ({id: {class_type, inputs, _meta}}) the front end queues for `wf`.

    Mirrors ComfyUI_frontend 1.27's graphToPrompt: virtual nodes (Note, MarkdownNote, Reroute,
    PrimitiveNode), muted (mode 2) and bypassed (mode 4) nodes are left out; a link through a
    bypassed node goes to the bypassed node's input of the matching type, through a reroute to
    what feeds the reroute; a primitive's value lands in the widget it feeds; widget values are
    mapped onto the node's widgets in the front end's order (control_after_generate and upload
    values are skipped, the audio player of Load Audio sends "" (1.27), Load Video's preview sends
    "" (once loaded), a value the file lacks keeps its default; list values wrapped as
    {"__value__": [...]}); a linked input becomes
    [origin id, origin slot] and wins over its widget; an input whose origin is not in the prompt
    is dropped. Not handled: subgraphs and legacy group nodes (ConversionError), the dynamic-prompt
    expansion of {a|b} in multiline text (the examples have none).
    """
    graph = _Graph(wf, object_info, frontend)
    primitives = graph.primitive_values()
    prompt: dict[str, dict] = {}
    for node in graph.nodes.values():
        if node["type"] in VIRTUAL or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        inputs = graph.widget_values(node)
        for (target, name), value in primitives.items():
            if target == node["id"] and name in inputs:
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        for slot, inp in enumerate(node.get("inputs") or []):
            origin = graph.resolve_input(node, slot, set())
            if origin is not None:
                inputs[inp["name"]] = [str(origin[0]), int(origin[1])]
        title = node.get("title") or object_info[node["type"]].get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    for entry in prompt.values():  # inputs fed by a node that is not sent (muted) are dropped
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt
