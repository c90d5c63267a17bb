"""Command-line interface: ``dreamgs <command> ...``.

Each command has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>``
function that runs it. Errors caused by input (:class:`~dreamgs.errors.DreamGSError`) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import DreamGSError

OVERRIDES_HELP = "config overrides as section.key=value, e.g. stage1.iters=300 prior.guidance_scale=50"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with config values (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


# --- fit ------------------------------------------------------------------------------------------


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="fit Gaussians to posed RGBA images (or to a built-in synthetic scene)",
        description="Fit 3D Gaussians to posed RGBA images. Without --data, renders a built-in synthetic "
                    "scene from known cameras, fits it from scratch and reports held-out PSNR.")
    p.add_argument("--data", metavar="DIR", help="folder with cameras.json and RGBA images (see README)")
    p.add_argument("--out", metavar="DIR", default="outputs/fit", help="output folder (default: outputs/fit)")
    _add_config_args(p)


def _cmd_fit(args) -> int:
    from .fit import run_fit_command

    return run_fit_command(args.data, args.out, args.config, args.overrides)


# --- prep -----------------------------------------------------------------------------------------


def _add_prep(sub) -> None:
    p = sub.add_parser(
        "prep", help="cut out, centre and scale the object of an input image (RGBA for image-to-3D)",
        description="Prepare an input image for image-to-3D: take the object's alpha (from --mask, the image's "
                    "own transparency, or rembg if it and its model file are installed), centre the object's "
                    "bounding box and scale its longer side to (1 - border ratio) * size, and write a square "
                    "RGBA PNG.")
    p.add_argument("image", metavar="IMAGE", help="input image (PNG, JPEG, WebP, ...)")
    p.add_argument("--mask", metavar="MASK", help="mask image of the same size: white = object (or a cut-out "
                                                   "whose alpha is the mask)")
    p.add_argument("--size", type=int, default=256, help="output width and height in pixels (default: 256)")
    p.add_argument("--border-ratio", type=float, default=0.2,
                   help="fraction of the size left as empty border around the object (default: 0.2)")
    p.add_argument("--out", metavar="OUT.png", help="output file (default: <stem>_rgba.png next to IMAGE)")


def _cmd_prep(args) -> int:
    from .images import prep_output_path, preprocess
    from .media import save_image

    out = prep_output_path(args.image, args.out)
    rgba = preprocess(args.image, size=args.size, border_ratio=args.border_ratio, mask=args.mask)
    save_image(out, rgba)
    print(out)
    return 0


# --- main -----------------------------------------------------------------------------------------

COMMANDS = {
    "fit": (_add_fit, _cmd_fit),
    "prep": (_add_prep, _cmd_prep),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamgs",
        description="Turn a text prompt or a single image into 3D Gaussians and a textured mesh.",
    )
    parser.add_argument("--version", action="version", version=f"dreamgs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][1](args) or 0
    except DreamGSError as e:
        if args.debug:
            raise
        print(f"dreamgs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dreamgs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
