"""``vift demo``: the shapes-world demo from the command line."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_demo(args: argparse.Namespace) -> int:
    from vift_plugin.toy.demo import DemoConfig, run_demo, run_seeds

    changes: dict[str, Any] = {
        "output_dir": args.output_dir or ("vift_demo_quick" if args.quick else "vift_demo"),
        "seed": args.seed,
        "baseline": not args.no_baseline,
        "fresh": args.fresh,
        "sweep": not args.no_sweep,
    }
    steps = ("language_steps", "align_steps", "caption_steps", "vift_steps")
    for name in ("recipe", "beta", "alpha", *steps, "batch_size"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = DemoConfig.quick(**changes) if args.quick else DemoConfig(**changes)
    if args.seeds:
        run_seeds(config, list(dict.fromkeys(args.seeds)))
    else:
        run_demo(config)
    return 0


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="train a small LVLM on the shapes world with ViFT; answer held-out visual questions plain, fused and "
        "by describe-then-answer (offline)",
        description="Builds a small vision-language model from config (LLaVA architecture: a ViT whose patches "
        "are the grid cells, a 2-layer MLP, a Qwen2 language model), trains it on captions and text-only "
        "instructions (ViFT stages 1 and 2) and a visual-instruction baseline, measures how much each stage "
        "relies on the picture, then answers held-out visual questions plain, fused (the paper's weights and "
        "weights vift sweep chose on dev questions) and by the cascade (describe the picture, then answer from "
        "the description). Writes OUTPUT_DIR/report.md. About 15 minutes on 2 CPU cores (12 with "
        "--no-baseline); --quick: about 1.",
    )
    demo.add_argument(
        "--output-dir",
        help="where the world, checkpoints and report go (default vift_demo, or vift_demo_quick with --quick)",
    )
    demo.add_argument("--quick", action="store_true", help="a smaller world and model, fewer steps (under a minute)")
    demo.add_argument(
        "--no-baseline", dest="no_baseline", action="store_true", help="skip the visual-instruction baseline"
    )
    demo.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    demo.add_argument("--seed", type=int, default=0, help="seed of the world, the weights and the data order")
    demo.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="run once per seed (OUTPUT_DIR/seed-N) and report each row's mean and range over them",
    )
    demo.add_argument("--fresh", action="store_true", help="delete OUTPUT_DIR first and retrain every stage")
    demo.add_argument(
        "--recipe", choices=["direct", "restate"], help="text-instruction answers: 'answer: X' (default) or scene first"
    )
    demo.add_argument("--alpha", type=float, help="fusion alpha of the fixed-weight row (default 1.0, the paper's)")
    demo.add_argument("--beta", type=float, help="fusion beta of the fixed-weight row (default 0.1, the paper's)")
    demo.add_argument(
        "--no-sweep", dest="no_sweep", action="store_true", help="skip choosing fusion weights on the dev questions"
    )
    demo.add_argument("--language-steps", dest="language_steps", type=int, help="stage 0 steps")
    demo.add_argument(
        "--align-steps", dest="align_steps", type=int, help="stage 1a steps (vision tower and connector frozen)"
    )
    demo.add_argument("--caption-steps", dest="caption_steps", type=int, help="stage 1b steps (every module)")
    demo.add_argument("--vift-steps", dest="vift_steps", type=int, help="stage 2 (and baseline) steps")
    demo.add_argument("--batch-size", dest="batch_size", type=int, help="training batch size")
    demo.set_defaults(func=_cmd_demo)
