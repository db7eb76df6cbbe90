"""Core's HunyuanVideo forward arguments, bound by name from the signature of the function wrapped.

Core hands DIFFUSION_MODEL wrappers its forward's arguments positionally, and the list grows between
releases: ComfyUI 0.3.64 passes 12 (`x, timestep, context, y, txt_byt5, guidance, attention_mask,
guiding_frame_index, ref_latent, disable_time_r, control, transformer_options`); from 0.8 on
`clip_fea` stands after `txt_byt5` (13). A wrapper that assumed one list would shift every argument
after the insertion on the other. So the names come from the wrapped function's own signature, any
argument the pack does not know is passed through untouched, and core is called back the same way
(positionally, as many as it gave, so that wrappers inside this one see what core gave them).
A core whose forward lacks an argument the pack reads stops with an error naming its version.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

# what the pack reads or replaces; every HunyuanVideo forward since 0.3.6x has them
NEEDED = ("x", "timestep", "context", "attention_mask", "ref_latent", "transformer_options")


class UnsupportedCoreError(RuntimeError):
    """Core's HunyuanVideo forward is not one the pack knows how to call."""


def comfyui_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:  # a checkout without the generated file
        return "of unknown version"
    return str(__version__)


@dataclass(frozen=True)
class Signature:
    names: tuple[str, ...]  # the positional parameters, in order

    @classmethod
    def of(cls, fn) -> Signature:
        """The parameters of core's forward (`executor.original`, a bound `_forward`)."""
        key = getattr(fn, "__func__", fn)
        found = _SIGNATURES.get(key)
        if found is None:
            found = _SIGNATURES[key] = cls._read(fn)
        return found

    @classmethod
    def _read(cls, fn) -> Signature:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError) as e:
            raise UnsupportedCoreError(_unknown(f"its forward has no readable signature ({e})")) from e
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = tuple(p.name for p in params if p.kind in kinds)
        missing = [n for n in NEEDED if n not in names]
        if missing:
            raise UnsupportedCoreError(_unknown(f"its forward takes ({', '.join(names)}), without "
                                                f"{', '.join(missing)}"))
        return cls(names)

    def bind(self, args: tuple, kwargs: dict) -> Call:
        if len(args) > len(self.names):
            raise UnsupportedCoreError(_unknown(f"core passed {len(args)} positional arguments to a forward "
                                                f"that takes {len(self.names)}"))
        values = dict(zip(self.names, args, strict=False))
        rest = dict(kwargs)
        for name in self.names:
            if name in rest:
                values[name] = rest.pop(name)
        values.setdefault("transformer_options", {})
        return Call(self, len(args), values, rest)


_SIGNATURES: dict = {}


@dataclass
class Call:
    """One call's arguments by name (`values`), and what else came as keywords (`rest`)."""

    signature: Signature
    positional: int
    values: dict
    rest: dict

    def replace(self, **changes) -> Call:
        return Call(self.signature, self.positional, {**self.values, **changes}, self.rest)

    def __getitem__(self, name: str):
        return self.values.get(name)

    def run(self, fn):
        """`fn` (the executor) called as core called the wrapper: the same number of positionals."""
        names = self.signature.names
        args = [self.values.get(n) for n in names[:self.positional]]
        kwargs = {n: self.values[n] for n in names[self.positional:] if n in self.values}
        return fn(*args, **kwargs, **self.rest)


def _unknown(detail: str) -> str:
    return (f"HunyuanCustom cannot run on this ComfyUI ({comfyui_version()}): {detail}. The pack knows "
            "ComfyUI 0.3.64 to 0.38; update the pack, or report this with your ComfyUI version.")
