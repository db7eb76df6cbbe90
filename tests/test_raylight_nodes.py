"""The (Ray) nodes: the functions they ship rebuild the pack's patches in a process that cannot import
the pack by ComfyUI's module name, equal to the one-GPU patches; applying one twice equals applying it
once; the nodes' execute against real Ray actors on the CPU; the refusal of token counts the
sequence-parallel degree does not divide (COMFYUI_PATH, in-process plus subprocesses).

Raylight's own RayWorker needs CUDA and NCCL; the actors here are `raylight_double.WorkerDouble`,
with RayWorker's runner methods around a real ModelPatcher of a tiny HunyuanVideo.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from modes_models import audio_state_dict, editing_state_dict, whisper_folder
from raylight_double import LATENT, WIDTH, WorkerDouble, sample, tiny_model

from comfyui_harness import comfyui_path, import_comfy, import_pack, requires_comfyui
from hunyuancustom.errors import ValidationError
from hunyuancustom.local.layout import check_clip_split, clip_image_tokens, split_refusal
from hunyuancustom.local.released import apply_released
from hunyuancustom.modes.checkpoint import load_mode_modules
from hunyuancustom.modes.patching import patch_audio, patch_editing

pytestmark = requires_comfyui

TESTS = Path(__file__).resolve().parent
AUDIO_CKPT, EDITING_CKPT = "hc_ray_audio.safetensors", "hc_ray_editing.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("raylight")
    models = root / "diffusion_models"
    models.mkdir()
    save_file(audio_state_dict(width=WIDTH), str(models / AUDIO_CKPT))
    save_file(editing_state_dict(width=WIDTH), str(models / EDITING_CKPT))
    whisper_folder(root)
    return root


@pytest.fixture(scope="module")
def pack(files):
    """The pack as ComfyUI imports it (a package named after its folder), with the test models
    registered in ComfyUI's folder paths."""
    import_comfy()
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", str(files / "diffusion_models"))
    folder_paths.add_model_folder_path("audio_encoders", str(files / "models" / "audio_encoders"))
    p = import_pack()
    return {name: importlib.import_module(f"{p.__name__}.{name}")
            for name in ("nodes.raylight", "nodes.local", "nodes.modes", "hunyuancustom.raylight.transport",
                         "hunyuancustom.errors")}


def windows():
    return torch.randn(1, 4 * LATENT[0] - 3, 10, 3, 16, generator=torch.Generator().manual_seed(3))


def background():
    return torch.randn(1, 32, *LATENT, generator=torch.Generator().manual_seed(4))


def shipped(pack, files) -> dict:
    """The functions the (Ray) nodes ship, made by the pack under ComfyUI's module name."""
    make = pack["hunyuancustom.raylight.transport"].worker_function
    models = files / "diffusion_models"
    return {
        "released": make("apply_released_recipe", deepcache=True, flow_shift=13.0, released_schedule=True),
        "audio": make("apply_audio_mode", checkpoint=str(models / AUDIO_CKPT), latent_shape=LATENT,
                      windows=windows(), strength=0.8),
        "editing": make("apply_editing_mode", checkpoint=str(models / EDITING_CKPT), background=background(),
                        flow_shift=5.0),
    }


def one_gpu(files) -> dict:
    """The same patches by the one-GPU path (what Released Recipe / the mode nodes call)."""
    models = files / "diffusion_models"
    return {
        "released": lambda m: apply_released(m, deepcache=True, shift=13.0, released_schedule=True),
        "audio": lambda m: patch_audio(m, load_mode_modules(models / AUDIO_CKPT).require_audio(), LATENT,
                                       windows(), 0.8),
        "editing": lambda m: patch_editing(m, load_mode_modules(models / EDITING_CKPT).require_editing(),
                                           background(), 5.0),
    }


FRESH = r"""
import importlib.util, sys
import cloudpickle, torch
# this process knows neither ComfyUI's name for the pack nor its plain name
assert importlib.util.find_spec("hunyuancustom") is None
assert not [n for n in sys.modules if n.startswith("hc_pack")]
from raylight_double import sample, tiny_model
fns = cloudpickle.loads(open(sys.argv[1], "rb").read())
out = {}
try:
    cloudpickle.loads(open(sys.argv[1] + ".byref", "rb").read())
    out["by_reference"] = "loaded"
except ModuleNotFoundError as e:
    out["by_reference"] = str(e)
recipe = fns["released"]
for name, fn in fns.items():
    # the modes on a MODEL with the released recipe, as the workflows run them
    base = tiny_model if name == "released" else (lambda: recipe(tiny_model()))
    out[name] = sample(fn(base()))
    out[name + " twice"] = sample(fn(fn(base())))
out["pack"] = sys.modules["hunyuancustom"].__file__
out["comfyui_names"] = [n for n in sys.modules if n.startswith("hc_pack")]
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def fresh(pack, files, tmp_path_factory):
    import cloudpickle

    tmp = tmp_path_factory.mktemp("fresh")
    fns = shipped(pack, files)
    (tmp / "fns.pkl").write_bytes(cloudpickle.dumps(fns))
    # what would go wrong without the transport: a pack function pickled by its ComfyUI module name
    worker = importlib.import_module(f"{import_pack().__name__}.hunyuancustom.raylight.worker")
    (tmp / "fns.pkl.byref").write_bytes(cloudpickle.dumps(worker.apply_released_recipe))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(TESTS), COMFYUI_PATH=str(comfyui_path()), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", FRESH, str(tmp / "fns.pkl"), str(tmp / "out.pt")], cwd=tmp,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("case", ["released", "audio", "editing"])
def test_shipped_function_in_a_fresh_process_equals_the_one_gpu_patch(fresh, files, case):
    patches = one_gpu(files)
    base = tiny_model() if case == "released" else patches["released"](tiny_model())
    expected = sample(patches[case](base))
    assert torch.equal(fresh[case], expected)
    if case != "released":  # (core alone cannot sample a batch with a reference latent at all)
        assert not torch.equal(fresh[case], sample(base))  # the mode did something
    assert Path(fresh["pack"]).resolve().parent == TESTS.parent / "hunyuancustom"
    assert fresh["comfyui_names"] == []
    assert "hc_pack_under_test" in fresh["by_reference"]  # a pickled pack object would not load


@pytest.mark.parametrize("case", ["released", "audio", "editing"])
def test_a_shipped_patch_applied_twice_on_a_worker_equals_it_applied_once(fresh, case):
    assert torch.equal(fresh[case + " twice"], fresh[case])


# --- the nodes against real Ray actors --------------------------------------------------------


@pytest.fixture(scope="module")
def ray(pack):
    ray = importlib.import_module("ray")
    env = {"PYTHONPATH": str(TESTS), "COMFYUI_PATH": str(comfyui_path()), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env},
             log_to_driver=False)
    yield ray
    ray.shutdown()


def actors(ray, n=2, **kw):
    worker = ray.remote(WorkerDouble)
    return {"workers": [worker.options(num_cpus=0).remote(str(comfyui_path()), **kw) for _ in range(n)]}


def tone(seconds=0.5, rate=16000):
    t = torch.arange(int(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * torch.pi * 220 * t)).reshape(1, 1, -1), "sample_rate": rate}


def test_ray_nodes_patch_every_worker_as_the_local_nodes_patch_one_model(ray, pack):
    nodes, local, modes = pack["nodes.raylight"], pack["nodes.local"], pack["nodes.modes"]
    ra = actors(ray)
    out = nodes.ReleasedRecipeRay.execute(ra, deepcache=True, flow_shift=13.0, released_schedule=True)
    assert out.args[0] is ra
    audio_out = nodes.AudioDrivenRay.execute(ra, AUDIO_CKPT, tone(), "whisper-tiny", 0.8, 9, 48, 32)
    # again, as on a worker that keeps its patched MODEL: no change
    nodes.AudioDrivenRay.execute(ra, AUDIO_CKPT, tone(), "whisper-tiny", 0.8, 9, 48, 32)
    results = ray.get([w.sample.remote() for w in ra["workers"]])

    m = local.ReleasedRecipe.execute(tiny_model(), deepcache=True, flow_shift=13.0, released_schedule=True)
    mods = load_mode_modules(Path(pack["nodes.raylight"].folder_paths.get_full_path("diffusion_models",
                                                                                      AUDIO_CKPT)))
    one = modes.AudioDriven.execute(m.args[0], tone(), "whisper-tiny", 0.8, 9, 48, 32, mode_modules=mods)
    expected = sample(one.args[0])
    for r in results:
        assert torch.equal(r, expected)
    # the other outputs are the local node's
    assert torch.equal(audio_out.args[1]["samples"], one.args[1]["samples"])
    assert audio_out.args[1]["samples"].shape == (1, 16, *LATENT)
    assert torch.equal(audio_out.args[2]["waveform"], one.args[2]["waveform"]) and audio_out.args[3] == 25.0
    # the workers imported the pack by its plain name, from this checkout
    where = ray.get(ra["workers"][0].imported.remote())
    assert Path(where["hunyuancustom"]).resolve().parent == TESTS.parent / "hunyuancustom"
    assert where["comfyui_names"] == []


def test_token_counts_the_sequence_degree_does_not_divide_are_refused_before_shipping(ray, pack):
    nodes, ValidationError = pack["nodes.raylight"], pack["hunyuancustom.errors"].ValidationError  # noqa: N806
    ra = actors(ray, n=1, sp_degree=2)
    # 5 frames of 48x48: (2 + 1) latent frames x 3 x 3 tokens = 27 image tokens, odd
    with pytest.raises(ValidationError, match="27 image tokens.*degree 2") as e:
        nodes.AudioDrivenRay.execute(ra, AUDIO_CKPT, tone(), "whisper-tiny", 0.8, 5, 48, 48)
    assert e.value.field == "frames"
    # the one wording, shared with the forward-time refusal (the contract test checks that side)
    assert e.value.problem == split_refusal([18, 9], 2) and "allowed:" in e.value.problem
    assert ray.get(ra["workers"][0].runner_calls.remote()) == 0  # nothing was shipped
    # 9 frames of 48x32 (24 tokens) divide 2: shipped
    nodes.AudioDrivenRay.execute(ra, AUDIO_CKPT, tone(), "whisper-tiny", 0.8, 9, 48, 32)
    assert ray.get(ra["workers"][0].runner_calls.remote()) == 1


def test_bad_inputs_are_refused_by_name_before_any_worker_is_asked(pack):
    nodes, ValidationError = pack["nodes.raylight"], pack["hunyuancustom.errors"].ValidationError  # noqa: N806
    with pytest.raises(ValidationError) as e:
        nodes.ReleasedRecipeRay.execute({"workers": []})
    assert e.value.field == "ray_actors"
    with pytest.raises(ValidationError, match="no audio") as e:
        nodes.AudioDrivenRay.execute({"workers": [object()]}, EDITING_CKPT, tone(), "whisper-tiny", 0.8, 9,
                                     48, 32)
    assert e.value.field == "ckpt_name"


def test_image_token_counts_of_the_released_sizes():
    # 720p x 129 frames and 480p (832x480) x 129: what the README promises divides 2, 4 and 8
    for (w, h), n in (((1280, 720), 122_400), ((832, 480), 53_040)):
        shape = (33, h // 8, w // 8)
        assert sum(clip_image_tokens(shape)) == n
        for degree in (2, 4, 8):
            check_clip_split("latent", shape, degree)
    wording = r"^video: 123930 image tokens \(120285 video \+ 3645 reference\) do not divide by the " \
              r"sequence-parallel degree 8"
    with pytest.raises(ValidationError, match=wording) as e:
        check_clip_split("video", (33, 90, 162), 8)  # 1296x720: 34 x 45 x 81 tokens
    assert e.value.field == "video"
