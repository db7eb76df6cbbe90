"""tests/workflow_check.graph_to_prompt without ComfyUI: a UI workflow becomes the API prompt the
front end (1.27) queues, on a small /object_info written here (the real-ComfyUI test submits every
example workflow's prompt to /prompt)."""

from __future__ import annotations

import pytest

from workflow_check import ConversionError, check_ui_workflow, expected_widget_values, graph_to_prompt

ORDER = {"required": ["image", "channel"]}
INFO = {
    "LoadImageMask": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}],
                                             "channel": [["alpha", "red", "green", "blue"]]}},
                      "input_order": ORDER, "output": ["MASK"], "display_name": "Load Image (as Mask)"},
    "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"],
                  "display_name": "Load Image"},
    "LoadAudio": {"input": {"required": {"audio": [["x.wav"], {"audio_upload": True}]}},
                  "input_order": {"required": ["audio"]}, "output": ["AUDIO"], "display_name": "Load Audio"},
    "Sampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}],
                                       "cfg": ["FLOAT", {"default": 7.5}],
                                       "sampler_name": [["euler", "dpm"]],
                                       "latent": ["LATENT"]},
                          "optional": {"tags": ["STRING", {"default": "x"}],
                                       "strength": ["FLOAT", {"default": 1.0}]}},
                "input_order": {"required": ["model", "seed", "cfg", "sampler_name", "latent"],
                                "optional": ["tags", "strength"]},
                "output": ["LATENT"], "display_name": "Sampler"},
    "Loader": {"input": {"required": {"name": [["m.pt"]]}}, "input_order": {"required": ["name"]},
               "output": ["MODEL"], "display_name": "Loader"},
    "Patch": {"input": {"required": {"model": ["MODEL"], "amount": ["FLOAT", {"default": 1.0}]}},
              "input_order": {"required": ["model", "amount"]}, "output": ["MODEL"], "display_name": "Patch"},
    "Empty": {"input": {"required": {"frames": ["INT", {"default": 5}]}},
              "input_order": {"required": ["frames"]}, "output": ["LATENT"], "display_name": "Empty"},
}


def node(id_, type_, values=(), inputs=(), outputs=(), mode=0, **extra):
    return {"id": id_, "type": type_, "mode": mode, "widgets_values": list(values),
            "inputs": [{"name": n, "type": t, "link": link, **({"widget": {"name": n}} if w else {})}
                       for n, t, link, w in ((*i, False)[:4] for i in inputs)],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs], **extra}


def chain(patch_mode=0):
    """Loader -> Patch -> Sampler <- Empty, and a note."""
    return {"nodes": [
        node(1, "Loader", ["m.pt"], outputs=[("MODEL", "MODEL", [1])]),
        node(2, "Patch", [0.5], inputs=[("model", "MODEL", 1)], outputs=[("MODEL", "MODEL", [2])],
             mode=patch_mode),
        node(3, "Empty", [9], outputs=[("LATENT", "LATENT", [3])]),
        node(4, "Sampler", [42, "fixed", 6.0, "dpm", "tag", 0.3],
             inputs=[("model", "MODEL", 2), ("latent", "LATENT", 3)]),
        node(5, "MarkdownNote", ["## read me"]),
    ], "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "LATENT"]]}


def test_widget_slots_follow_the_front_end_order():
    names = [s[0] for s in expected_widget_values(INFO["LoadImageMask"], "LoadImageMask")]
    assert names == ["image", "channel", "upload"]  # the upload button after every real input
    assert [s[0] for s in expected_widget_values(INFO["LoadAudio"], "LoadAudio")] == ["audio", "upload"]
    assert [s[0] for s in expected_widget_values(INFO["Sampler"], "Sampler")] == [
        "seed", "seed:control_after_generate", "cfg", "sampler_name", "tags", "strength"]


def test_a_chain_becomes_links_and_widget_values_without_front_end_only_values():
    prompt = graph_to_prompt(chain(), INFO)
    assert prompt == {
        "1": {"class_type": "Loader", "inputs": {"name": "m.pt"}, "_meta": {"title": "Loader"}},
        "2": {"class_type": "Patch", "inputs": {"amount": 0.5, "model": ["1", 0]},
              "_meta": {"title": "Patch"}},
        "3": {"class_type": "Empty", "inputs": {"frames": 9}, "_meta": {"title": "Empty"}},
        "4": {"class_type": "Sampler", "_meta": {"title": "Sampler"},
              "inputs": {"seed": 42, "cfg": 6.0, "sampler_name": "dpm", "tags": "tag", "strength": 0.3,
                         "model": ["2", 0], "latent": ["3", 0]}},
    }


def test_a_bypassed_node_passes_its_matching_input_through():
    prompt = graph_to_prompt(chain(patch_mode=4), INFO)
    assert "2" not in prompt
    assert prompt["4"]["inputs"]["model"] == ["1", 0]


def test_a_muted_node_is_left_out_with_the_inputs_it_fed():
    prompt = graph_to_prompt(chain(patch_mode=2), INFO)
    assert "2" not in prompt and "model" not in prompt["4"]["inputs"]


def test_reroute_and_primitive_nodes_are_resolved_like_the_front_end():
    wf = chain()
    wf["nodes"] += [node(6, "Reroute", inputs=[("", "*", 4)], outputs=[("", "LATENT", [5])]),
                    node(7, "PrimitiveNode", [0.8, "fixed"], outputs=[("FLOAT", "FLOAT", [6])])]
    sampler = wf["nodes"][3]
    sampler["inputs"][1]["link"] = 5
    sampler["inputs"].append({"name": "strength", "type": "FLOAT", "link": 6, "widget": {"name": "strength"}})
    wf["nodes"][2]["outputs"][0]["links"] = [4]
    wf["links"] = [wf["links"][0], wf["links"][1], [4, 3, 0, 6, 0, "LATENT"], [5, 6, 0, 4, 1, "LATENT"],
                   [6, 7, 0, 4, 2, "FLOAT"]]
    prompt = graph_to_prompt(wf, INFO)
    assert set(prompt) == {"1", "2", "3", "4"}
    assert prompt["4"]["inputs"]["latent"] == ["3", 0]  # through the reroute
    assert prompt["4"]["inputs"]["strength"] == 0.8  # the primitive's value, not a link


def test_upload_values_are_not_sent_and_list_values_are_wrapped():
    wf = {"nodes": [node(1, "LoadImageMask", ["b.png", "red", "image"], outputs=[("MASK", "MASK", [])]),
                    node(2, "LoadAudio", ["x.wav", None]),
                    node(3, "Loader", [["m.pt"]])], "links": []}
    prompt = graph_to_prompt(wf, INFO)
    assert prompt["1"]["inputs"] == {"image": "b.png", "channel": "red"}
    assert prompt["2"]["inputs"] == {"audio": "x.wav", "audioUI": ""}  # the audio player sends ""
    assert prompt["3"]["inputs"] == {"name": {"__value__": ["m.pt"]}}


def test_the_old_load_image_as_mask_order_is_caught_before_any_server():
    wf = {"nodes": [node(1, "LoadImageMask", ["b.png", "image", "red"])], "links": []}
    assert graph_to_prompt(wf, INFO)["1"]["inputs"]["channel"] == "image"
    assert any("channel='image'" in p for p in check_ui_workflow(wf, INFO))


def test_missing_widget_values_keep_the_defaults():
    wf = {"nodes": [node(1, "Sampler", [3])], "links": []}
    assert graph_to_prompt(wf, INFO)["1"]["inputs"] == {"seed": 3, "cfg": 7.5, "sampler_name": "euler",
                                                        "tags": "x", "strength": 1.0}


@pytest.mark.parametrize("wf", [
    {"nodes": [node(1, "NoSuchNode")], "links": []},
    {"nodes": [node(1, "Loader", ["m.pt"])], "links": [], "definitions": {"subgraphs": [{"id": "x"}]}},
], ids=["unknown type", "subgraph"])
def test_what_it_cannot_convert_is_an_error(wf):
    with pytest.raises(ConversionError):
        graph_to_prompt(wf, INFO)


# 0.33.0's Save Video and Create Video, as its /object_info gives them (trimmed).
SAVE_VIDEO_033 = {"input": {
    "required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                 "format": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                     {"key": "auto", "inputs": {"required": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                         {"key": "auto", "inputs": {"required": {}}},
                         {"key": "h264", "inputs": {"required": {}}}]}]}}},
                     {"key": "webm", "inputs": {"required": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                         {"key": "auto", "inputs": {"required": {}}}]}]}}}]}]},
    "optional": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {}},
                                                                 {"key": "h264", "inputs": {}}]}]}},
    "output": ["VIDEO"]}
CREATE_VIDEO_033 = {"input": {"required": {"images": ["IMAGE", {}],
                                           "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
                              "optional": {"audio": ["AUDIO", {}],
                                           "bit_depth": ["INT", {"default": 8, "min": 8, "max": 10}]}},
                    "output": ["VIDEO"]}


def _video_workflow(save_values, create_values):
    return {"nodes": [
        {"id": 1, "type": "CreateVideo", "inputs": [{"name": "images", "type": "IMAGE", "link": None}],
         "outputs": [{"name": "VIDEO", "type": "VIDEO", "links": [1]}], "widgets_values": create_values},
        {"id": 2, "type": "SaveVideo", "inputs": [{"name": "video", "type": "VIDEO", "link": 1}],
         "outputs": [], "widgets_values": save_values}],
        "links": [[1, 1, 0, 2, 0, "VIDEO"]]}


def test_a_file_from_before_core_0_33_reads_with_its_values_where_they_were():
    """[prefix, 'auto', 'auto'] (0.3.64's format, codec) and Create Video's [25]: the 1.49 front end
    puts format=auto, its child format.codec=auto, the hidden codec and bit_depth at their defaults."""
    info = {"SaveVideo": SAVE_VIDEO_033, "CreateVideo": CREATE_VIDEO_033}
    wf = _video_workflow(["video/x", "auto", "auto"], [25])
    assert check_ui_workflow(wf, info) == []
    prompt = graph_to_prompt(wf, info, (1, 49))
    assert prompt["2"]["inputs"] == {"filename_prefix": "video/x", "format": "auto", "format.codec": "auto",
                                     "codec": "auto", "video": ["1", 0]}
    assert prompt["1"]["inputs"] == {"fps": 25, "bit_depth": 8}
    # the selected option decides the child widgets; a value that is not an option is flagged
    assert check_ui_workflow(_video_workflow(["video/x", "webm", "h264"], [25]), info) == [
        "node 2: format.codec='h264' not in ['auto']"]
    # a missing required value is still a shifted workflow
    assert "1 widget values" in check_ui_workflow(_video_workflow(["video/x"], [25]), info)[0]


def test_front_ends_differ_in_the_widgets_they_add():
    spec = {"input": {"required": {"file": [["a.mp4"], {"video_upload": True}]}}, "output": ["VIDEO"]}
    wf = {"nodes": [{"id": 1, "type": "LoadVideo", "inputs": [], "outputs": [],
                     "widgets_values": ["a.mp4", "image"]}], "links": []}
    # Load Video's preview (added once the video has loaded) goes out as "" from both.
    for frontend in ((1, 27), (1, 49)):
        assert graph_to_prompt(wf, {"LoadVideo": spec}, frontend)["1"]["inputs"] == {
            "file": "a.mp4", "video-preview": ""}
    # Load Audio's player: only 1.27 sends it.
    audio = {"input": {"required": {"audio": [["x.wav"], {"audio_upload": True}]}}}
    wf = {"nodes": [{"id": 1, "type": "LoadAudio", "inputs": [], "outputs": [],
                     "widgets_values": ["x.wav", None]}], "links": []}
    inputs = {v: graph_to_prompt(wf, {"LoadAudio": audio}, v)["1"]["inputs"] for v in ((1, 27), (1, 49))}
    assert inputs == {(1, 27): {"audio": "x.wav", "audioUI": ""}, (1, 49): {"audio": "x.wav"}}
