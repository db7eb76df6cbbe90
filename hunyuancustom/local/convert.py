"""`python -m hunyuancustom convert`: a released .pt checkpoint -> one safetensors file, once.

Later loads of the safetensors file are memory-mapped (no 30 GB unpickling). Every key is checked
on the way; the output is written atomically (a `.partial` file renamed at the end).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_convert_command(sub) -> None:
    c = sub.add_parser("convert", help="convert a HunyuanCustom .pt checkpoint to .safetensors (local use)")
    c.add_argument("source", type=Path, help="mp_rank_00_model_states.pt or its _fp8.pt (with the "
                                             "_fp8_map.pt next to it)")
    c.add_argument("output", type=Path, help="the .safetensors file to write (e.g. in "
                                             "ComfyUI/models/diffusion_models/)")
    c.add_argument("--fp8", choices=("keep", "dequantize"), default="keep",
                   help="fp8 input: keep fp8 weights with their scales (default) or write bf16")
    c.add_argument("--force", action="store_true", help="overwrite an existing output file")
    c.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace, reporter) -> int:
    from ..errors import ValidationError
    from .checkpoint import CheckpointError, convert_to_safetensors

    if args.output.exists() and not args.force:
        raise ValidationError("output", f"{args.output} exists; pass --force to overwrite it")
    if args.output.suffix != ".safetensors":
        raise ValidationError("output", f"must end in .safetensors, got {args.output.name}")
    try:
        ckpt = convert_to_safetensors(args.source, args.output, fp8=args.fp8)
    except CheckpointError as e:
        raise ValidationError("source", str(e)) from e
    extras = ", ".join(f"{k}: {len(v)} tensors" for k, v in ckpt.extras.items()) or "none"
    print(f"{args.output}: {len(ckpt.transformer)} transformer tensors ({ckpt.depths[0]} double / "
          f"{ckpt.depths[1]} single blocks, from {ckpt.layout}); extra modules: {extras}")
    return 0
