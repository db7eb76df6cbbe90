"""The released text-image fusion on core's own text encoders, in-process (COMFYUI_PATH).

Core's Llama2 and CLIP-L (SDClipModel) at a tiny size with the weights of `text_models.py`, core's
own tokenizers with the real Llama-3 vocabulary (`text_models.llama3_tokenizer_dir`) and core's CLIP
tokenizer. The golden (`data/released_text_golden.safetensors`, made by `make_text_golden.py`, see
its .md) is the released `TextEncoder` (transformers 4.41.2 LLaVA and CLIP-L) on the same weights,
tokenizers and prompts: the pack's CONDITIONING must match it (states, mask, pooled vector).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import text_models
import torch

from comfyui_harness import import_comfy, requires_comfyui
from hunyuancustom.local import prompt, text_encoder

pytestmark = requires_comfyui

GOLDEN = Path(__file__).parent / "data" / "released_text_golden.safetensors"
PAD, IMAGE = 128258, 128257
TOL = 1e-6  # max |pack - released| relative to max |released| (measured: 4.4e-7)


def _golden():
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(GOLDEN), "pt") as f:
        meta = json.loads(f.metadata()["json"])
    return load_file(str(GOLDEN)), meta


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _core_llama_class():
    """The tokenizer class core's LLAMA3Tokenizer uses on this tree (0.3.64: transformers'
    LlamaTokenizerFast; 0.33.0: core's own BPE reader)."""
    import comfy.text_encoders.hunyuan_video as hv

    return hv.LlamaTokenizerFast


def _core_class_is_broken() -> bool:
    """transformers 5.x rebuilds its LlamaTokenizerFast and drops the spaces."""
    return _core_llama_class().__module__.startswith("transformers") and _transformers_major() >= 5


def _llama_tokenizer(cls):
    """Core's LLAMA3Tokenizer (same SDTokenizer arguments) on the real vocabulary; core's own
    folder has an empty tokenizer.json in these trees."""
    from comfy import sd1_clip

    return sd1_clip.SDTokenizer(str(text_models.llama3_tokenizer_dir()), pad_with_end=False,
                                embedding_size=4096, embedding_key="llama", tokenizer_class=cls,
                                has_start_token=True, has_end_token=False, pad_to_max_length=False,
                                max_length=99999999, pad_token=PAD, min_length=1)


def _right_llama_class():
    """Core's class, unless transformers 5.x breaks it: then transformers' PreTrainedTokenizerFast,
    which reads tokenizer.json as it is (what 4.x's LlamaTokenizerFast does)."""
    if _core_class_is_broken():
        import transformers

        return transformers.PreTrainedTokenizerFast
    return _core_llama_class()


def _clip(llama_tokenizer_class):
    import_comfy()
    import comfy.model_patcher
    import comfy.ops
    from comfy import sd1_clip
    from comfy.text_encoders.llama import Llama2

    net = Llama2(dict(text_models.LLAMA), dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    missing, unexpected = net.load_state_dict(text_models.llama_state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k and "freqs" not in k], missing
    clip_l = sd1_clip.SDClipModel(device="cpu", dtype=torch.float32, return_projected_pooled=False,
                                  textmodel_json_config=dict(text_models.CLIP_L))
    missing, unexpected = clip_l.load_sd(text_models.clip_l_state_dict())
    assert not unexpected and all("text_projection" in k or "position_ids" in k for k in missing), missing
    llama = SimpleNamespace(transformer=net, special_tokens={"start": 128000, "pad": PAD}, layer_idx=-3)
    holder = torch.nn.Module()
    holder.llama, holder.clip_l = net, clip_l
    return SimpleNamespace(
        cond_stage_model=SimpleNamespace(llama=llama, clip_l=clip_l),
        tokenizer=SimpleNamespace(llama=_llama_tokenizer(llama_tokenizer_class),
                                  clip_l=sd1_clip.SDTokenizer()),
        patcher=comfy.model_patcher.ModelPatcher(holder, load_device=torch.device("cpu"),
                                                 offload_device=torch.device("cpu")))


@pytest.fixture(scope="module")
def clip():
    import_comfy()
    return _clip(_right_llama_class())


@pytest.mark.parametrize("branch", ["pos", "neg"])
def test_the_fusion_matches_the_released_text_encoder(clip, branch):
    golden, meta = _golden()
    text, name = ((meta["prompt"], meta["name"]) if branch == "pos"
                  else (meta["negative_prompt"], meta["negative_name"]))
    assert "(" in text  # the case where ComfyUI's weight syntax would change CLIP-L's reading
    [[states, extra]] = text_encoder.encode(clip, golden[f"{branch}.image_features"], text, name)

    hf = clip.tokenizer.llama.tokenizer
    ids, _, _ = text_encoder.token_ids(lambda t: hf(t)["input_ids"], prompt.llava_text(text, name),
                                       PAD, IMAGE)
    assert ids == golden[f"{branch}.input_ids"][0].tolist()
    assert torch.equal(extra["attention_mask"], golden[f"{branch}.mask"])
    ref = golden[f"{branch}.states"]
    assert states.shape == ref.shape == (1, 831, 128)
    assert _rel(states, ref) <= TOL
    # the padding states too (the released token refiner reads them): <pad> embeddings are zero
    pad = ~golden[f"{branch}.mask"][0, :256].bool()
    assert pad.sum() > 100
    assert _rel(states[0, :256][pad], ref[0, :256][pad]) <= TOL
    assert _rel(extra["pooled_output"], golden[f"{branch}.pooled"]) <= TOL


@pytest.mark.parametrize("branch", ["pos", "neg"])
def test_clip_l_reads_the_prompt_literally_as_the_release_tokenizes(clip, branch):
    golden, meta = _golden()
    text = meta["prompt"] if branch == "pos" else meta["negative_prompt"]
    tokens = text_encoder.clip_l_tokens(clip.tokenizer.clip_l, text)
    assert [t for t, _ in tokens[0]] == golden[f"{branch}.clip_ids"][0].tolist()
    assert {w for _, w in tokens[0]} == {1.0}
    # core's own reading of the same text (weights, no parentheses) is another vector
    _, weighted = clip.cond_stage_model.clip_l.encode_token_weights(
        clip.tokenizer.clip_l.tokenize_with_weights(text))
    assert _rel(weighted, golden[f"{branch}.pooled"]) > 0.1


def test_a_long_prompt_is_cut_as_the_release_cuts_it(clip):
    text = "a red cup, " * 40
    tokens = text_encoder.clip_l_tokens(clip.tokenizer.clip_l, text)[0]
    hf = clip.tokenizer.clip_l.tokenizer
    assert len(tokens) == 77
    released = hf(text, truncation=True, max_length=77, padding="max_length")["input_ids"]
    assert [t for t, _ in tokens] == released
    assert tokens[-1][0] == 49407  # the end token is kept


def test_core_tokenizer_on_this_tree_is_checked():
    """0.33.0: core's own BPE reader passes. 0.3.64: transformers' LlamaTokenizerFast passes under
    transformers 4.x and is refused under 5.x, naming the cause and the fix."""
    import_comfy()
    hf = _llama_tokenizer(_core_llama_class()).tokenizer
    prefix = hf(text_encoder.TEMPLATE_PREFIX)["input_ids"]
    if _core_class_is_broken():
        assert len(prefix) == 96  # the measured fault: spaces dropped
        with pytest.raises(text_encoder.TokenizerError,
                           match=r"clip: .*96 tokens instead of 95.*transformers 5.*0\.3\.64.*"
                                 r"transformers<5.*update ComfyUI"):
            text_encoder.check_tokenizer(lambda t: hf(t)["input_ids"], hf)
    else:
        assert len(prefix) == 95
        text_encoder.check_tokenizer(lambda t: hf(t)["input_ids"], hf)


@pytest.mark.skipif("_transformers_major() < 5", reason="transformers 4.x: its LlamaTokenizerFast is right")
def test_encode_stops_before_loading_when_the_tokenizer_drops_spaces(monkeypatch):
    import_comfy()
    import comfy.model_management as mm
    import transformers

    broken = _clip(transformers.LlamaTokenizerFast)
    loads = []
    monkeypatch.setattr(mm, "load_model_gpu", lambda patcher: loads.append(patcher))
    with pytest.raises(text_encoder.TokenizerError, match="transformers<5"):
        text_encoder.encode(broken, torch.zeros(576, 128), "A dog.", "dog")
    assert loads == []


def test_the_text_encoder_runs_on_core_load_device(clip, monkeypatch):
    """Under dynamic VRAM core keeps the weights on the CPU and streams them: the ids and embeddings
    go to `patcher.load_device`, not to a weight's device."""
    import comfy.model_management as mm

    class Stop(Exception):
        pass

    seen = []

    def record(module, args):
        seen.append(args[0].device)
        raise Stop

    loads = []
    monkeypatch.setattr(mm, "load_model_gpu", lambda patcher: loads.append(patcher))
    monkeypatch.setattr(clip.patcher, "load_device", torch.device("meta"))
    hook = clip.cond_stage_model.llama.transformer.get_input_embeddings().register_forward_pre_hook(record)
    try:
        with pytest.raises(Stop):
            text_encoder.encode(clip, torch.zeros(576, 128), "A dog.", "dog")
    finally:
        hook.remove()
    assert loads == [clip.patcher]
    assert seen == [torch.device("meta")]
    assert clip.cond_stage_model.llama.transformer.get_input_embeddings().weight.device.type == "cpu"


def test_the_golden_was_made_with_the_released_versions_and_the_check_passed_there():
    _, meta = _golden()
    assert meta["transformers"] == "4.41.2"
    assert meta["pack_tokenizer_check"].startswith("passed")
