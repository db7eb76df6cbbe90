"""The parameter table and validation: every bad value is refused naming the field and the range."""

import math

import pytest

from hunyuancustom.errors import ValidationError
from hunyuancustom.params import (
    ALL_SIZES,
    REF2V_480P,
    REF2V_720P,
    model_for,
    parse_size,
    validate_request,
)

IMG = "https://example.test/ref.png"


def test_table_matches_the_seed():
    m = REF2V_720P
    assert m.model_id == "wavespeed-ai/hunyuan-custom-ref2v-720p"
    assert [p.name for p in m.params] == ["image", "prompt", "negative_prompt", "size",
                                          "guidance_scale", "flow_shift", "seed",
                                          "enable_safety_checker"]
    assert m.sizes == ("1280*720", "720*1280")
    assert REF2V_480P.sizes == ("832*480", "480*832")
    g, f, s = m.param("guidance_scale"), m.param("flow_shift"), m.param("seed")
    assert (g.minimum, g.maximum, g.default) == (1.0, 10.0, 7.5)
    assert (f.minimum, f.maximum, f.default) == (1.0, 20.0, 13.0)
    assert (s.minimum, s.maximum, s.default) == (-1, 9999999999, -1)
    assert m.param("enable_safety_checker").default is True
    assert m.param("image").required and m.param("prompt").required
    assert set(ALL_SIZES) == {"1280*720", "720*1280", "832*480", "480*832"}


def test_defaults_fill_optional_values():
    body = validate_request(REF2V_720P, {"image": IMG, "prompt": "a cat"})
    assert body == {"image": IMG, "prompt": "a cat", "negative_prompt": "", "size": "1280*720",
                    "guidance_scale": 7.5, "flow_shift": 13.0, "seed": -1,
                    "enable_safety_checker": True}


def test_integers_are_accepted_for_floats_and_whole_floats_for_seed():
    body = validate_request(REF2V_720P, {"image": IMG, "prompt": "x", "guidance_scale": 5,
                                         "seed": 42.0})
    assert body["guidance_scale"] == 5.0 and isinstance(body["guidance_scale"], float)
    assert body["seed"] == 42 and isinstance(body["seed"], int)


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("prompt", "", "must not be empty"),
        ("prompt", "   ", "must not be empty"),
        ("prompt", None, "is required"),
        ("prompt", 3, "must be a string"),
        ("image", None, "is required"),
        ("size", "1920*1080", "allowed: one of 1280*720, 720*1280"),
        ("size", "832*480", "allowed: one of 1280*720, 720*1280"),
        ("guidance_scale", 0.5, "allowed: float from 1 to 10"),
        ("guidance_scale", 10.01, "allowed: float from 1 to 10"),
        ("guidance_scale", math.nan, "must be a finite number"),
        ("guidance_scale", math.inf, "must be a finite number"),
        ("guidance_scale", "7", "must be a number"),
        ("flow_shift", 20.5, "allowed: float from 1 to 20"),
        ("flow_shift", 0, "allowed: float from 1 to 20"),
        ("seed", -2, "allowed: int from -1 to 9999999999"),
        ("seed", 10_000_000_000, "allowed: int from -1 to 9999999999"),
        ("seed", 1.5, "must be a whole number"),
        ("seed", True, "must be a number"),
        ("enable_safety_checker", "yes", "must be true or false"),
        ("enable_safety_checker", 1, "must be true or false"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(field, value, expect):
    values = {"image": IMG, "prompt": "a cat", field: value}
    with pytest.raises(ValidationError) as err:
        validate_request(REF2V_720P, values)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert expect in str(err.value)


def test_unknown_parameters_are_refused():
    with pytest.raises(ValidationError, match=r"^guidance: is not a parameter"):
        validate_request(REF2V_720P, {"image": IMG, "prompt": "x", "guidance": 3})


def test_480p_sizes_belong_to_the_480p_model():
    assert validate_request(REF2V_480P, {"image": IMG, "prompt": "x", "size": "480*832"})["size"] == "480*832"
    with pytest.raises(ValidationError, match="size"):
        validate_request(REF2V_480P, {"image": IMG, "prompt": "x", "size": "1280*720"})


def test_model_lookup_and_size_parsing():
    assert model_for("480p") is REF2V_480P
    assert model_for("hunyuan-custom-ref2v-720p") is REF2V_720P
    assert model_for("wavespeed-ai/hunyuan-custom-ref2v-480p") is REF2V_480P
    with pytest.raises(ValidationError, match="model: unknown model '1080p'"):
        model_for("1080p")
    assert parse_size("720*1280") == (720, 1280)
