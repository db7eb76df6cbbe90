"""Core's forward arguments are bound by name from the wrapped function's signature (no ComfyUI needed).

ComfyUI 0.3.64's HunyuanVideo forward takes 12 positionals, later releases insert `clip_fea` after
`txt_byt5` (13): a fixed list would shift every argument after it.
"""

from __future__ import annotations

import pytest

from hunyuancustom.local.core_call import Signature, UnsupportedCoreError


class Core0364:
    def _forward(self, x, timestep, context, y=None, txt_byt5=None, guidance=None, attention_mask=None,
                 guiding_frame_index=None, ref_latent=None, disable_time_r=False, control=None,
                 transformer_options={}, **kwargs):  # noqa: B006 (core's signature)
        return {"guidance": guidance, "attention_mask": attention_mask, "ref_latent": ref_latent,
                "transformer_options": transformer_options, "kwargs": kwargs}


class Core033(Core0364):
    def _forward(self, x, timestep, context, y=None, txt_byt5=None, clip_fea=None, guidance=None,
                 attention_mask=None, guiding_frame_index=None, ref_latent=None, disable_time_r=False,
                 control=None, transformer_options={}, **kwargs):  # noqa: B006 (core's signature)
        out = super()._forward(x, timestep, context, y, txt_byt5, guidance, attention_mask,
                               guiding_frame_index, ref_latent, disable_time_r, control, transformer_options,
                               **kwargs)
        return {**out, "clip_fea": clip_fea}


def _core_args(names, **given):
    """The positionals core's forward hands its wrappers, in its own order."""
    return tuple(given.get(n) for n in names)


@pytest.mark.parametrize("core", [Core0364, Core033])
def test_arguments_are_bound_by_name_and_handed_back_the_same_way(core):
    fn = core()._forward
    sig = Signature.of(fn)
    assert len(sig.names) == (13 if core is Core033 else 12)
    opts = {"cond_or_uncond": [0]}
    args = _core_args(sig.names, x="x", timestep="t", context="c", guidance="g", attention_mask="m",
                      ref_latent="r", transformer_options=opts)
    call = sig.bind(args, {"future_keyword": 5})
    assert (call["guidance"], call["attention_mask"], call["ref_latent"]) == ("g", "m", "r")
    assert call["transformer_options"] is opts
    out = call.replace(attention_mask=None).run(fn)
    assert out["guidance"] == "g" and out["ref_latent"] == "r" and out["attention_mask"] is None
    assert out["transformer_options"] is opts
    assert out["kwargs"] == {"future_keyword": 5}  # a keyword the pack does not know passes through


def test_trailing_arguments_given_as_keywords_are_read_and_passed_on():
    fn = Core033()._forward
    call = Signature.of(fn).bind(("x", "t", "c"), {"ref_latent": "r", "transformer_options": {"a": 1},
                                                   "attention_mask": "m"})
    assert call["ref_latent"] == "r" and call["attention_mask"] == "m"
    out = call.run(fn)
    assert out["ref_latent"] == "r" and out["transformer_options"] == {"a": 1} and out["kwargs"] == {}


def test_the_old_fixed_list_would_shift_arguments_on_the_newer_core():
    """What binding by name prevents: 0.3.64's 12 names laid over the 13 positionals of a newer core."""
    new = Signature.of(Core033()._forward)
    old = Signature.of(Core0364()._forward)
    args = _core_args(new.names, guidance="g", transformer_options={})
    shifted = dict(zip(old.names, args, strict=False))
    assert shifted["guidance"] is None and shifted["transformer_options"] is None
    assert new.bind(args, {})["guidance"] == "g"


def test_a_forward_without_an_argument_the_pack_reads_is_a_clear_error():
    class Unknown:
        def _forward(self, x, timestep, context, y=None, transformer_options={}):  # noqa: B006
            return x

    with pytest.raises(UnsupportedCoreError) as e:
        Signature.of(Unknown()._forward)
    msg = str(e.value)
    assert "HunyuanCustom cannot run on this ComfyUI" in msg
    assert "attention_mask" in msg and "ref_latent" in msg


def test_more_positionals_than_the_forward_takes_is_a_clear_error():
    sig = Signature.of(Core0364()._forward)
    with pytest.raises(UnsupportedCoreError, match="13 positional arguments to a forward that takes 12"):
        sig.bind(tuple(range(13)), {})
