"""What a user sees on opening an example workflow, checked without ComfyUI (the real-ComfyUI
tests check the same files against /object_info and in the browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
LOADERS = ("LoadImage", "LoadImageMask", "LoadAudio", "LoadVideo")


def test_there_is_an_example_for_each_mode():
    assert {p.name for p in WORKFLOWS} == {
        "hunyuancustom_cloud_ref2v.json", "hunyuancustom_cloud_batch.json",
        "hunyuancustom_virtual_tryon.json", "hunyuancustom_local_ref2v.json",
        "hunyuancustom_singing_avatar.json", "hunyuancustom_subject_replace.json"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
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
