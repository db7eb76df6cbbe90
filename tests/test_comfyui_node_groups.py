"""One broken group of nodes never takes the pack's others down (COMFYUI_PATH, in-process).

Run with ComfyUI's interpreter:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_comfyui_node_groups.py
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap

from comfyui_harness import import_pack, requires_comfyui

pytestmark = requires_comfyui


def test_a_group_that_fails_to_import_is_skipped_with_its_traceback(tmp_path, monkeypatch, caplog):
    groups = tmp_path / "hc_groups_under_test"
    groups.mkdir()
    (groups / "__init__.py").write_text("")
    (groups / "fine.py").write_text("NODES = ['FineA', 'FineB']\n")
    (groups / "moved.py").write_text(textwrap.dedent("""
        raise AttributeError("module 'comfy_api.latest' has no attribute 'Moved'")
    """))
    (groups / "missing.py").write_text("import hc_no_such_dependency\nNODES = ['Never']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    nodes = importlib.import_module(import_pack().__name__ + ".nodes")

    caplog.set_level(logging.WARNING)
    found = nodes.node_list(("moved", "fine", "missing"), "hc_groups_under_test")
    assert found == ["FineA", "FineB"]
    failed = {r.getMessage(): r for r in caplog.records if "not loaded" in r.getMessage()}
    assert set(failed) == {"[HunyuanCustom] nodes.moved not loaded; the pack's other nodes are",
                           "[HunyuanCustom] nodes.missing not loaded; the pack's other nodes are"}
    reasons = " ".join(str(r.exc_info[1]) for r in failed.values())
    assert "has no attribute 'Moved'" in reasons and "hc_no_such_dependency" in reasons
    sys.modules.pop("hc_groups_under_test", None)

