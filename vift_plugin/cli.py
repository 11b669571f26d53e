"""The ``vift`` command line. Subcommands import their heavy dependencies only when run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vift_plugin._version import __version__


def _cmd_tiny(args: argparse.Namespace) -> int:
    from vift_plugin.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(args.family, args.path, seed=args.seed)
    print(f"wrote a tiny random {args.family} checkpoint to {path}")
    return 0


def _cmd_families(args: argparse.Namespace) -> int:
    from vift_plugin.testing import FAMILIES

    for name, recipe in sorted(FAMILIES.items()):
        print(f"{name:12s} {recipe.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vift",
        description="ViFT: visual instruction-free fine-tuning and ability-fused inference for "
        "Hugging Face vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"vift_plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tiny = sub.add_parser("tiny", help="write a tiny random checkpoint of a model family (offline)")
    tiny.add_argument("family", help="model family, see `vift families`")
    tiny.add_argument("path", help="output directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.set_defaults(func=_cmd_tiny)

    families = sub.add_parser("families", help="list the model families with tiny offline checkpoints")
    families.set_defaults(func=_cmd_families)

    from vift_plugin.data.commands import add_convert_parser

    add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        result: int = args.func(args)
    except (ValueError, OSError) as error:
        print(f"vift {args.command}: error: {error}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
