"""ComfyUI widgets built from the parameter table, so nodes never restate a range or default."""

from __future__ import annotations

from comfy_api.latest import io

from ..hunyuancustom.params import Param


def widget(p: Param, *, choices: tuple[str, ...] | None = None, default=None, **extra) -> io.Input:
    default = p.default if default is None else default
    tip = p.description + (f" Allowed: {p.allowed()}." if p.kind in (int, float) else "")
    tip = extra.pop("tooltip", tip)  # a node may say more about the same parameter
    if p.kind is bool:
        return io.Boolean.Input(p.name, default=default, tooltip=tip, **extra)
    if p.kind is float:
        return io.Float.Input(p.name, default=default, min=p.minimum, max=p.maximum,
                              step=p.step or 0.1, round=0.01, tooltip=tip, **extra)
    if p.kind is int:
        return io.Int.Input(p.name, default=default, min=int(p.minimum), max=int(p.maximum),
                            step=int(p.step or 1), tooltip=tip,
                            control_after_generate=p.name == "seed", **extra)
    options = choices or p.choices
    if options is not None:
        return io.Combo.Input(p.name, options=list(options), default=default, tooltip=tip, **extra)
    return io.String.Input(p.name, default=default or "", multiline=True, tooltip=tip, **extra)
