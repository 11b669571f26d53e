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


def _cmd_train(args: argparse.Namespace) -> int:
    from vift_plugin.training.run import argument_parser, load_config, parse_stage, plan_stages, train_stage

    if args.help_options:
        argument_parser().print_help()
        return 0
    if not args.config:
        print("vift train: give a CONFIG.yaml (see examples/configs/)", file=sys.stderr)
        return 2
    from vift_plugin.training.distributed import cpu_launch_warning

    warning = cpu_launch_warning()
    if warning:
        print(f"vift train: warning: {warning}", file=sys.stderr)
    stages = plan_stages(load_config(args.config), args.flags, args.stage)
    parsed = [(name, parse_stage(argv)) for name, argv in stages]
    for name, (model_args, data_args, training_args) in parsed:
        print(f"== stage {name}: {model_args.model_name_or_path} -> {training_args.output_dir}")
        if args.dry_run:
            continue
        train_stage(model_args, data_args, training_args)
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

    from vift_plugin.evaluation.commands import add_eval_parsers

    add_eval_parsers(sub)

    from vift_plugin.toy.commands import add_demo_parser

    add_demo_parser(sub)

    train = sub.add_parser(
        "train",
        help="fine-tune with ViFT (one run or the two stages of a YAML config)",
        description="Train from CONFIG.yaml; any option of `vift train --help-options` may follow as a flag "
        "(e.g. --max_steps 10) and overrides every stage.",
    )
    train.add_argument("config", nargs="?", help="YAML file of training arguments (see examples/configs/)")
    train.add_argument("--stage", help="run only this stage (its name or 1-based number)")
    train.add_argument("--dry-run", action="store_true", help="parse and print the stages without training")
    train.add_argument("--help-options", action="store_true", help="list every training option")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.flags = extra
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
