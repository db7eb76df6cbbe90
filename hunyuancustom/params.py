"""The parameter table of the hosted ref2v models: the one source of truth.

Transcribed from the provider's product page (the seed). Nodes build their widgets from it, the
CLI builds its flags from it and `validate_request` checks values against it, so a range or a
default lives in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError

DEFAULT_PROMPT = "A man is writing a letter at his desk."

# The model's official negative prompt (released inference scripts); used by the local nodes.
OFFICIAL_NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
    "bad hands, bad teeth, bad eyes, bad limbs, distortion, blurring, text, subtitles, static, "
    "picture, black border."
)


@dataclass(frozen=True)
class Param:
    """One request parameter as the product page documents it."""

    name: str
    kind: type  # str, float, int or bool
    required: bool
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    description: str = ""
    step: float | None = None

    def allowed(self) -> str:
        """Human-readable statement of what the parameter accepts (used in errors and help)."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.kind.__name__} from {_num(self.minimum)} to {_num(self.maximum)}"
        if self.kind is str:
            return "a non-empty string" if self.required else "a string"
        if self.kind is bool:
            return "true or false"
        return self.kind.__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class CloudModel:
    """A hosted model: its id on the provider and the parameters it takes."""

    model_id: str
    label: str
    params: tuple[Param, ...] = field(repr=False)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def sizes(self) -> tuple[str, ...]:
        return self.param("size").choices or ()

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if p.default is not None}


def _ref2v_params(sizes: tuple[str, ...]) -> tuple[Param, ...]:
    return (
        Param("image", str, True, description="The image for generating the output (a URL)."),
        Param("prompt", str, True, default=DEFAULT_PROMPT, description="What the subject does."),
        Param("negative_prompt", str, False, default="",
              description="The negative prompt for generating the output."),
        Param("size", str, False, default=sizes[0], choices=sizes,
              description="The size of the output (width*height)."),
        Param("guidance_scale", float, False, default=7.5, minimum=1.0, maximum=10.0, step=0.1,
              description="The guidance scale for generation."),
        Param("flow_shift", float, False, default=13.0, minimum=1.0, maximum=20.0, step=0.1,
              description="The shift value for the timestep schedule for flow matching."),
        Param("seed", int, False, default=-1, minimum=-1, maximum=9999999999, step=1,
              description="The seed for random number generation; -1 picks a random seed."),
        Param("enable_safety_checker", bool, False, default=True,
              description="Whether to enable the safety checker."),
    )


REF2V_720P = CloudModel(
    "wavespeed-ai/hunyuan-custom-ref2v-720p", "720p", _ref2v_params(("1280*720", "720*1280"))
)
# Sibling model; differs only in the sizes it accepts.
REF2V_480P = CloudModel(
    "wavespeed-ai/hunyuan-custom-ref2v-480p", "480p", _ref2v_params(("832*480", "480*832"))
)
CLOUD_MODELS: dict[str, CloudModel] = {m.label: m for m in (REF2V_720P, REF2V_480P)}

# Every size any backend of this pack accepts (the local node offers all of them).
ALL_SIZES: tuple[str, ...] = REF2V_720P.sizes + REF2V_480P.sizes


def parse_size(size: str) -> tuple[int, int]:
    """'1280*720' -> (width, height)."""
    w, h = size.split("*")
    return int(w), int(h)


def model_for(label_or_id: str) -> CloudModel:
    for m in CLOUD_MODELS.values():
        if label_or_id in (m.label, m.model_id, m.model_id.split("/")[-1]):
            return m
    allowed = ", ".join(CLOUD_MODELS)
    raise ValidationError("model", f"unknown model {label_or_id!r}; allowed: {allowed}")


def check_value(param: Param, value: Any) -> Any:
    """Check one value against its row of the table; return it normalised (e.g. int -> float)."""
    name = param.name
    if value is None:
        if param.required:
            raise ValidationError(name, f"is required ({param.allowed()})")
        return None
    if param.kind is bool:
        if not isinstance(value, bool):
            raise ValidationError(name, f"must be true or false, got {value!r}")
        return value
    if param.kind is str:
        if not isinstance(value, str):
            raise ValidationError(name, f"must be a string, got {type(value).__name__}")
        try:  # a lone surrogate (from a terminal or a JSON escape) cannot be sent as UTF-8 JSON
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValidationError(name, f"contains an unpaired surrogate {value[e.start]!r} at "
                                        f"character {e.start}; allowed: valid Unicode text") from None
        if param.required and not value.strip():
            raise ValidationError(name, f"must not be empty ({param.allowed()})")
        if param.choices is not None and value not in param.choices:
            raise ValidationError(name, f"{value!r} is not allowed; allowed: {param.allowed()}")
        return value
    # Numbers. bool is an int subclass in Python: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(name, f"must be a number ({param.allowed()}), got {value!r}")
    if param.kind is int:
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise ValidationError(name, f"must be a whole number ({param.allowed()}), got {value!r}")
            value = int(value)
    else:
        if not math.isfinite(value):
            raise ValidationError(name, f"must be a finite number ({param.allowed()}), got {value!r}")
        value = float(value)
    if (param.minimum is not None and value < param.minimum) or (
        param.maximum is not None and value > param.maximum
    ):
        raise ValidationError(name, f"{value!r} is out of range; allowed: {param.allowed()}")
    return value


def validate_request(model: CloudModel, values: dict[str, Any]) -> dict[str, Any]:
    """Validate a full request body against `model`'s table.

    Missing optional values take the table's default. Unknown keys are refused so a typo in a
    CLI job file or a batch line cannot be silently dropped.
    """
    known = {p.name for p in model.params}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValidationError(unknown[0], f"is not a parameter of {model.model_id}; "
                                          f"known: {', '.join(sorted(known))}")
    body: dict[str, Any] = {}
    for p in model.params:
        v = values.get(p.name, None if p.required else p.default)
        body[p.name] = check_value(p, v)
    return body
