"""Command line for the same jobs the nodes run.

    python -m hunyuancustom ref2v --image ref.png --prompt "..." -o out.mp4

Flags are generated from the parameter table (params.py), so they always match the nodes.
Exit codes: 0 done, 1 the job failed, 2 bad input, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import how_to_set_key
from .errors import ApiError, ConfigError, HunyuanCustomError, ValidationError
from .params import CLOUD_MODELS, REF2V_720P, Param, model_for
from .progress import StderrReporter


def _flag(p: Param) -> str:
    return "--" + p.name.replace("_", "-")


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per table row (besides image), with the table's help, default and range."""
    for p in REF2V_720P.params:
        if p.name == "image":
            continue
        help_text = f"{p.description} Allowed: {p.allowed()}."
        if p.kind is bool:
            parser.add_argument(_flag(p), dest=p.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{help_text} Default: {str(p.default).lower()}.")
            continue
        if p.name == "size":  # each model has its own list; validation checks the pair
            help_text = f"{p.description} Allowed: " + "; ".join(
                f"{m.label}: {', '.join(m.sizes)}" for m in CLOUD_MODELS.values()) + "."
        default = "" if p.required or p.default in (None, "") else f" Default: {p.default}."
        parser.add_argument(_flag(p), dest=p.name, type=p.kind, default=None,
                            required=p.required, help=help_text + default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hunyuancustom",
                                     description="HunyuanCustom video generation (cloud API).")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("ref2v", help="reference image + prompt -> video through the hosted API")
    r.add_argument("--image", required=True, help="reference image: a local file or an http(s) URL")
    r.add_argument("--model", default="720p", choices=sorted(CLOUD_MODELS),
                   help="hosted model (720p: 1280*720/720*1280; 480p: 832*480/480*832)")
    add_param_flags(r)
    r.add_argument("-o", "--output", type=Path, required=True, help="where to write the MP4")
    r.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the task (default: setting timeout_s, 1800)")
    r.add_argument("--api-base", default=None, help="API root (default: WAVESPEED_API_BASE or "
                                                    "settings, else https://api.wavespeed.ai/api/v2)")
    r.add_argument("--json", action="store_true", help="print the result info as JSON on stdout")
    r.set_defaults(handler=cmd_ref2v)
    return parser


def _params_from_args(args: argparse.Namespace) -> dict:
    return {p.name: getattr(args, p.name) for p in REF2V_720P.params
            if p.name != "image" and getattr(args, p.name, None) is not None}


def cmd_ref2v(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from dataclasses import replace

    from .config import load_settings
    from .ref2v import ImageInput, run_ref2v
    from .video import read_image_file

    model = model_for(args.model)
    if args.image.startswith(("http://", "https://")):
        image = ImageInput(url=args.image)
    else:
        image = ImageInput(png=read_image_file(args.image), filename=Path(args.image).name)
    settings = load_settings()
    if args.api_base:
        settings = replace(settings, api_base=args.api_base.rstrip("/"))
    if args.timeout is not None:
        if not args.timeout > 0:
            raise ValidationError("timeout", f"must be a positive number of seconds, got {args.timeout}")
        settings = replace(settings, timeout_s=args.timeout)
    output = args.output
    if output.suffix.lower() != ".mp4":
        raise ValidationError("output", f"must end in .mp4, got {output}")
    result = run_ref2v(model, image, _params_from_args(args), output, reporter=reporter,
                       settings=settings, decode=False)
    reporter.finish()
    if args.json:
        print(json.dumps(result.info(), indent=2))
    else:
        print(result.video_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = StderrReporter()
    try:
        return args.handler(args, reporter)
    except ValidationError as e:
        reporter.finish()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        reporter.finish()
        print("cancelled", file=sys.stderr)
        return 130
    except ConfigError as e:
        reporter.finish()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ApiError, HunyuanCustomError) as e:
        reporter.finish()
        print(f"error: {e}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "how_to_set_key"]
