"""The pack under Raylight's sequence parallel (USP) and CFG parallel, proven on the CPU over gloo.

Raylight's own HunyuanVideo USP code (its package from RAYLIGHT_PATH, with contrib/raylight/*.patch
applied in a temp copy) runs every case in 2 processes (tests/raylight_harness.py), with the pack's
patches as the (Ray) nodes ship them (made here by the pack imported under ComfyUI's module name,
cloudpickled, loaded in workers that cannot import the pack by any name: C10) and applied twice
(C9); core runs the same cases in this process with the one-GPU patches applied once; float32
results must agree to 1e-5. Each case's docstring in the harness names the Raylight fixes
(contrib/raylight/README.md) it needs; two more runs leave fixes out and show the cases fail.
"""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import pytest
import torch

from comfyui_harness import import_comfy, import_pack, requires_comfyui
from hunyuancustom.local.layout import split_refusal

TOL = 1e-5

pytestmark = [
    requires_comfyui,
    pytest.mark.skipif(not os.environ.get("RAYLIGHT_PATH"),
                       reason="RAYLIGHT_PATH is not set (Raylight's source tree, "
                              "e.g. ../shared/raylight/src)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _core_version_reason():
    """Raylight c049571's USP blocks read attributes of a newer core's Flux blocks."""
    import comfy.ldm.flux.layers as layers

    missing = [f"{cls}.{attr}" for cls, attr in (("DoubleStreamBlock", "modulation"),
                                                 ("SingleStreamBlock", "yak_mlp"))
               if attr not in getattr(layers, cls).__init__.__code__.co_names]
    if missing:
        return (f"Raylight c049571's USP blocks read {', '.join(missing)}, which this core's Flux "
                "blocks do not have (added in later ComfyUI)")
    return None


def _run(setup, name: str, patches: list, engines: list[str], only: list[str] | None = None) -> list[dict]:
    """The 2 worker processes on Raylight with `patches` applied; each rank's results."""
    import raylight_harness as harness

    out = setup["work"] / name
    out.mkdir()
    raylight_dir = harness.prepare_raylight(out, patches)
    return harness.run_workers(raylight_dir, engines, out, _free_port(), setup["shipped"], setup["models"],
                               only)


def _patches_without(*numbers: str) -> list:
    import raylight_harness as harness

    return [p for p in harness.patch_files() if p.name[:2] not in numbers]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The model and mode files, and the (Ray) nodes' functions made by the pack imported under
    ComfyUI's module name and cloudpickled, as Ray ships them."""
    import_comfy()
    import raylight_harness as harness

    reason = _core_version_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("raylight")
    models = harness.write_models(work)
    pack = import_pack(harness.comfyui_module_name())
    transport = importlib.import_module(f"{pack.__name__}.hunyuancustom.raylight.transport")
    worker = importlib.import_module(f"{pack.__name__}.hunyuancustom.raylight.worker")
    shipped = harness.ship(harness.shipped_functions(transport, models), worker.apply_released_recipe,
                           work / "shipped.pkl")
    return {"work": work, "models": models, "shipped": shipped}


@pytest.fixture(scope="module")
def reference(setup):
    """Core alone in this process, the one-GPU patches applied once."""
    import raylight_harness as harness

    base = harness.base_model(setup["models"]["model"])
    cases = {**harness.USP_CASES, **harness.CFG_CASES}
    return harness.run_cases(cases, base, harness.OneDevice(setup["models"]))


@pytest.fixture(scope="module")
def results(setup, reference):
    """{"ref": core alone, "usp" / "cfg" / "transport": [rank 0, rank 1]}, every fix applied."""
    import raylight_harness as harness

    workers = _run(setup, "all-fixes", harness.patch_files(), ["usp", "cfg"])
    return {"ref": reference, **{k: [w[k] for w in workers] for k in ("usp", "cfg", "transport")}}


def _result(value, case):
    if isinstance(value, dict) and "error" in value:
        pytest.fail(f"{case}: {value['error']}\n{value.get('trace', '')}")
    return value


def _assert_close(got, want, case):
    got, want = _result(got, case), _result(want, case)
    if isinstance(want, dict):
        assert set(got) == set(want), case
        for k in want:
            _assert_close(got[k], want[k], f"{case}.{k}")
        return
    if isinstance(want, torch.Tensor):
        assert got.shape == want.shape, case
        if not torch.is_floating_point(want):
            assert torch.equal(got, want), f"{case}: {got} != {want}"
            return
        diff = (got - want).abs().max().item()
        assert diff <= TOL, f"{case}: max |diff| {diff:.3g} > {TOL} (max |ref| {want.abs().max().item():.3g})"
        return
    assert got == want, case


@pytest.mark.parametrize("case", ["plain", "cfg_batch", "released_masks", "deepcache", "editing", "audio",
                                  "odd_text"])
def test_usp_equals_core(results, case):
    for rank, res in enumerate(results["usp"]):
        _assert_close(res[case], results["ref"][case], f"{case} (rank {rank})")


def test_deepcache_ran_a_cached_step_under_usp(results):
    for res in results["usp"]:
        assert _result(res["deepcache"], "deepcache")["calls"].tolist() == [1, 1]  # full, cached


def test_an_image_length_the_degree_does_not_divide_is_refused_before_any_work(results):
    for res in results["usp"]:
        err = res["odd_image"]
        assert isinstance(err, dict), err
        # 1 x 1 x 3 video tokens, no reference: the node-time check's wording (one message builder)
        assert err["error"] == f"ValidationError: latent: {split_refusal([3], 2)}", err
    assert isinstance(results["ref"]["odd_image"], torch.Tensor)  # one device: it runs


def test_cfg_parallel_equals_core_and_each_rank_sees_its_own_branch(results):
    ref = _result(results["ref"]["cfg_parallel"], "cfg_parallel")
    assert ref["seen"] == [(1, [0]), (1, [1])]  # one device: the pack runs one sample at a time
    for rank, res in enumerate(results["cfg"]):
        got = _result(res["cfg_parallel"], "cfg_parallel")
        _assert_close(got["out"], ref["out"], f"cfg_parallel (rank {rank})")
        # Raylight's CFG wrapper is outside the pack's: this rank's half only, with its own branch
        # (rank 0 the positive, rank 1 the negative, which the audio mode feeds zero audio)
        assert got["seen"] == [(1, [rank])], got["seen"]
        # Raylight's loader adds its wrapper (key None) before any pack patch: outermost; the
        # released recipe and the audio mode, each shipped twice, have one wrapper each
        assert got["wrapper_keys"] == [("None", 1), ("hunyuancustom_release", 1), ("hunyuancustom_modes", 1),
                                       ("contract_spy", 1)]


def test_shipped_functions_load_and_run_where_the_pack_cannot_be_imported_by_any_name(results):
    import raylight_harness as harness

    name = harness.comfyui_module_name()
    for t in results["transport"]:
        # before: neither the plain name nor ComfyUI's; a pack function pickled by reference fails
        assert not t["plain_name_importable"] and t["pack_modules_before"] == [], t
        assert t["by_reference"].startswith("ModuleNotFoundError") and repr(name) in t["by_reference"], t
        # after: the shipped functions imported the pack by file location, by its plain name
        assert Path(t["pack_file"]).resolve() == harness.REPO / "hunyuancustom" / "__init__.py"
        assert t["comfyui_names"] == []


# --- the fixes are needed: the same workers on Raylight with some of contrib/raylight left out ----


@pytest.fixture(scope="module")
def without_r1_r5(setup):
    """Every fix but 03 (R1, block_wrap) and 04 (R5, per-rank branch options)."""
    workers = _run(setup, "without-03-04", _patches_without("03", "04"), ["usp", "cfg"],
                   only=["editing", "audio", "cfg_parallel"])
    return {k: [w[k] for w in workers] for k in ("usp", "cfg")}


@pytest.mark.parametrize("case", ["editing", "audio"])
def test_without_r1_the_modes_fail_with_raylights_block_wrap_keyerror(without_r1_r5, case):
    for res in without_r1_r5["usp"]:
        err = res[case]
        assert isinstance(err, dict) and err["error"] == "KeyError: 'img'", err


def test_without_r5_cfg_parallel_audio_is_refused_not_given_to_the_negative_branch(without_r1_r5):
    for res in without_r1_r5["cfg"]:
        err = res["cfg_parallel"]
        assert isinstance(err, dict), "ran: a branch got audio it should not have, or none it should"
        assert err["error"].startswith("EngineError: the audio mode got a batch of 1 with cond_or_uncond "
                                       "[0, 1]"), err
        assert "04-cfg-per-rank-branch-options.patch (R5)" in err["error"], err


@pytest.fixture(scope="module")
def without_r2(setup):
    """Fixes 01-04 only: the text is zero-padded to a multiple of 2 and split (no 05, nor 06/07, which
    build on it)."""
    workers = _run(setup, "without-05-07", _patches_without("05", "06", "07"), ["usp"],
                   only=["plain", "released_masks", "odd_text"])
    return [w["usp"] for w in workers]


def test_without_r2_odd_text_lengths_differ_from_core(without_r2, reference):
    for rank, res in enumerate(without_r2):
        _assert_close(res["plain"], reference["plain"], f"plain (rank {rank})")  # the run itself is sound
        for case in ("released_masks", "odd_text"):  # 5 of 9 masked, 7 text tokens: one zero pad
            got, want = _result(res[case], case), _result(reference[case], case)
            diff = (got - want).abs().max().item()
            assert diff > 100 * TOL, f"{case} (rank {rank}): max |diff| {diff:.3g}: R2 made no difference"
