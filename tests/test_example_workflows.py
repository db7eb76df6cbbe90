"""What a user sees on opening an example workflow, checked without ComfyUI (the real-ComfyUI
tests check the same files against /object_info and in the browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))  # the template browser's: the top folder only
# with those that need more than one GPU (example_workflows/multigpu/, example_workflows/raylight/)
ALL_WORKFLOWS = sorted(EXAMPLES.rglob("*.json"))
LOADERS = ("LoadImage", "LoadImageMask", "LoadAudio", "LoadVideo")


def test_there_is_an_example_for_each_mode():
    assert {p.name for p in WORKFLOWS} == {
        "HunyuanCustom Ref2V (Cloud).json", "HunyuanCustom Ref2V Batch (Cloud).json",
        "HunyuanCustom Virtual Try-On (Cloud).json", "HunyuanCustom Ref2V (Local).json",
        "HunyuanCustom Singing Avatar (Local).json", "HunyuanCustom Subject Replace (Local).json"}


def test_there_is_an_example_for_each_way_to_use_more_than_one_gpu():
    assert {p.relative_to(EXAMPLES).as_posix() for p in ALL_WORKFLOWS} - {p.name for p in WORKFLOWS} == {
        "multigpu/HunyuanCustom Ref2V (Local, 2 GPUs).json",  # core's MultiGPU CFG Split
        "raylight/HunyuanCustom Ref2V (Raylight).json"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_template_browser_shows_a_picture_and_a_readable_title(path):
    # ComfyUI's front end (1.27) lists `<name>.json` of a pack's example_workflows as a template
    # titled `<name>` and shows `<name>.jpg` beside it (tests/make_template_thumbnails.py draws them).
    with Image.open(path.with_suffix(".jpg")) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (512, 384)
        shades = thumb.convert("L").getcolors(256)  # None: more than 256
        assert shades is None or len(shades) > 16  # a picture, not a blank
    assert path.stem.startswith("HunyuanCustom ") and "_" not in path.stem, path.stem


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=lambda p: p.stem)
def test_a_note_on_the_canvas_names_every_sample_file_the_workflow_loads(path):
    wf = json.loads(path.read_text())
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, "one note with the instructions, visible on the canvas"
    text = notes[0]["widgets_values"][0]
    loaded = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in LOADERS]
    assert loaded
    for name in loaded:
        assert name in text, f"{path.name}: the note does not say to copy {name}"
        assert (EXAMPLES / name).is_file(), f"{name} is not shipped beside the workflow"
    if any(n["type"].startswith("HunyuanCustomCloud") for n in wf["nodes"]):
        assert "API key" in text
    # The ids stay consistent for the front end.
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert len({n["id"] for n in wf["nodes"]}) == len(wf["nodes"])


# The local examples: core's KSampler chain, in the released recipe, read left to right.
LOCAL_CHAINS = {
    "HunyuanCustom Ref2V (Local).json": (None, 30),
    "HunyuanCustom Singing Avatar (Local).json": ("HunyuanCustomAudioDriven", 30),
    "HunyuanCustom Subject Replace (Local).json": ("HunyuanCustomVideoDriven", 50),
}


def _feeds(wf, node_id, input_name):
    """(type, output slot) of the node feeding an input."""
    node = next(n for n in wf["nodes"] if n["id"] == node_id)
    link_id = next(i["link"] for i in node["inputs"] if i["name"] == input_name)
    link = next(lk for lk in wf["links"] if lk[0] == link_id)
    src = next(n for n in wf["nodes"] if n["id"] == link[1])
    return src["type"], link[2], src["id"]


@pytest.mark.parametrize("name", sorted(LOCAL_CHAINS))
def test_local_examples_sample_with_core_ksampler_left_to_right(name):
    wf = json.loads((EXAMPLES / name).read_text())
    mode, steps = LOCAL_CHAINS[name]
    by_type = {}
    for n in wf["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    (save,) = by_type["SaveVideo"]
    create_type, _, create = _feeds(wf, save["id"], "video")
    assert create_type == "CreateVideo"
    decode_type, _, decode = _feeds(wf, create, "images")
    assert decode_type == "VAEDecodeTiled"
    sampler_type, _, sampler = _feeds(wf, decode, "samples")
    assert sampler_type == "KSampler"
    ks = next(n for n in wf["nodes"] if n["id"] == sampler)
    assert ks["widgets_values"] == [1024, "fixed", steps, 7.5, "euler", "simple", 1]
    for socket, slot in (("positive", 0), ("negative", 1), ("latent_image", 2)):
        assert _feeds(wf, sampler, socket)[:2] == ("HunyuanCustomConditioning", slot)
    model_type = _feeds(wf, sampler, "model")[0]
    assert model_type == (mode or "HunyuanCustomLocalModelLoader")
    if mode:  # the mode node's latent goes through Conditioning (Local); its audio and fps to Create Video
        (cond,) = by_type["HunyuanCustomConditioning"]
        assert _feeds(wf, cond["id"], "latent")[:2] == (mode, 1)
        assert _feeds(wf, create, "audio")[:2] == (mode, 2)
        assert _feeds(wf, create, "fps")[:2] == (mode, 3)
        assert _feeds(wf, _feeds(wf, sampler, "model")[2], "model")[0] == "HunyuanCustomLocalModelLoader"
    # no wire only carries a number from one node to the next, except the mode's fps
    numbers = [lk for lk in wf["links"] if lk[5] in ("INT", "FLOAT")]
    assert all(lk[5] == "FLOAT" and lk[3] == create for lk in numbers), numbers
    # every wire runs left to right (or down a column), never back
    x = {n["id"]: n["pos"][0] for n in wf["nodes"]}
    assert [lk for lk in wf["links"] if x[lk[1]] > x[lk[3]]] == []
    assert wf["groups"], "the steps are grouped"


# The folder each core loader reads its combo from (what the front end's "missing models" check
# looks in), for the loaders of the local examples.
LOADER_FOLDERS = {"VAELoader": "vae", "DualCLIPLoader": "text_encoders", "CLIPVisionLoader": "clip_vision"}


@pytest.mark.parametrize("path", [p for p in ALL_WORKFLOWS if "(Local" in p.stem], ids=lambda p: p.stem)
def test_local_examples_carry_download_metadata_for_every_safetensors_file(path):
    """The front end offers a missing file for download when the node that loads it names it in
    `properties.models` (name, url, directory), as core's own HunyuanVideo template does; it only
    downloads `.safetensors` from huggingface.co. Every .safetensors file a local example loads is
    listed there, with the folder its loader reads and a URL ending in the file's name."""
    wf = json.loads(path.read_text())
    listed = 0
    for node in wf["nodes"]:
        values = node.get("widgets_values") or []
        files = [v for v in values if isinstance(v, str) and v.endswith(".safetensors")]
        models = node.get("properties", {}).get("models", [])
        assert sorted(m["name"] for m in models) == sorted(files), (node["type"], models)
        for m in models:
            assert set(m) == {"name", "url", "directory"}
            assert m["directory"] == LOADER_FOLDERS[node["type"]]
            assert m["url"].startswith("https://huggingface.co/")
            assert m["url"].split("?")[0].endswith("/" + m["name"])
        listed += len(models)
    # VAE, clip_l + llava_llama3_fp8_scaled, llava_llama3_vision; the transformer is a released .pt
    assert listed == 4


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "(Cloud)" in p.stem], ids=lambda p: p.stem)
def test_cloud_examples_save_each_video_once(path):
    # The cloud node saves its video in the output folder itself (the copy the journal serves
    # again): a Save Video after it would save each video a second time and show a second preview.
    wf = json.loads(path.read_text())
    types = [n["type"] for n in wf["nodes"]]
    assert sum(t.startswith("HunyuanCustomCloud") for t in types) == 1
    assert not {"SaveVideo", "PreviewVideo", "SaveWEBM", "SaveAnimatedWEBP"} & set(types), types
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    assert "no *Save Video* needed" in note
