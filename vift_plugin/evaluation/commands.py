"""``vift eval`` and ``vift sweep``. Heavy imports happen only when a command runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vift_plugin.evaluation.settings import GenerationSettings


def fusion_from_args(args: argparse.Namespace, model: Any) -> Any:
    """``--fusion-config`` with ``--alpha``/``--beta`` applied; None leaves the model's own (or default) config."""
    from vift_plugin.config import FusionConfig
    from vift_plugin.fusion import fusion_config

    config = FusionConfig.parse(args.fusion_config) if args.fusion_config else None
    changes = {k: v for k, v in (("alpha", args.alpha), ("beta", args.beta)) if v is not None}
    if changes:
        config = (config or fusion_config(model) or FusionConfig()).replace(**changes)
    return config


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The :class:`~vift_plugin.evaluation.settings.GenerationSettings` of the shared options. Images were
    already read (and any URL fetched) with the benchmark, so ``allow_remote_images`` stays off here."""
    from vift_plugin.evaluation.settings import GenerationSettings

    changes: dict[str, Any] = {}
    if args.no_answer_marker:
        changes["answer_markers"] = ()
    elif args.answer_marker:
        changes["answer_markers"] = tuple(args.answer_marker)
    return GenerationSettings(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        prompt_suffix=args.prompt_suffix,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
        **changes,
    )


def _inference_modes(value: str) -> list[str]:
    from vift_plugin.evaluation.evaluator import MODES, check_modes

    try:
        return check_modes(m.strip() for m in value.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(MODES)} (comma-separated), got {value!r}") from None


def _default_output(kind: str, model: str, data: str) -> str:
    return os.path.join(f"vift-{kind}", f"{Path(model).name or 'model'}-{Path(data).stem}")


def check_output_dir(path: str | os.PathLike[str]) -> None:
    """Refuse, before anything is computed, an output folder that cannot be made or written."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--output-dir {target} is a file, not a folder; choose another path.")
    ancestor = next(folder for folder in [target, *target.absolute().parents] if folder.exists())
    if not ancestor.is_dir():
        raise ValueError(f"--output-dir {target} cannot be made: {ancestor} is a file.")
    if not os.access(ancestor, os.W_OK):
        raise ValueError(f"--output-dir {target} cannot be written: {ancestor} is not writable.")


def _read_items(args: argparse.Namespace) -> Any:
    from vift_plugin.evaluation.benchmark import read_benchmark

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    return read_benchmark(args.data, args.image_root, limit=args.limit, allow_remote_images=args.allow_remote_images)


def _cmd_eval(args: argparse.Namespace) -> int:
    from vift_plugin.evaluation.evaluator import evaluate, write_results

    output = args.output_dir or _default_output("eval", args.model, args.data)
    check_output_dir(output)
    settings = generation_settings(args)
    from vift_plugin.loading import load_model

    items = _read_items(args)
    model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    result = evaluate(
        model,
        processor,
        items,
        modes=list(dict.fromkeys(mode for group in args.inference for mode in group)),
        fusion=fusion_from_args(args, model),
        settings=settings,
        describe_request=args.describe_request,
    )
    paths = write_results(result, output)
    if result.fusion is not None:
        fusion = result.fusion
        print(f"fusion: alpha={fusion.alpha:g} beta={fusion.beta:g} layers={fusion.layers or 'top half'}")
    print(result.to_markdown(), end="")
    print(f"wrote {paths['predictions']}, {paths['summary_json'].name} and {paths['summary_md'].name}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vift_plugin.config import FusionConfig
    from vift_plugin.evaluation.fusion_sweep import DEFAULT_BETAS, sweep

    output = args.output_dir or _default_output("sweep", args.model, args.data)
    check_output_dir(output)
    settings = generation_settings(args)
    from vift_plugin.loading import load_model

    items = _read_items(args)
    model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    base = FusionConfig.parse(args.fusion_config) if args.fusion_config else None
    result = sweep(
        model,
        processor,
        items,
        alphas=args.alphas,
        betas=args.betas or DEFAULT_BETAS,
        first_layers=args.first_layers,
        base_config=base,
        settings=settings,
        output_dir=output,
    )
    print(result.to_markdown(), end="")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    best = result.best
    print(
        f"best: alpha={best.alpha:g} beta={best.beta:g} first layer={best.first_layer} "
        f"accuracy={100 * best.accuracy:.1f}% -> {result.files['best_config']}"
    )
    print(f"wrote {output}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    from vift_plugin.evaluation.settings import GenerationSettings

    defaults = GenerationSettings()
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or saved ViFT run (adapter / fusion config)")
    parser.add_argument("--data", required=True, help="benchmark JSONL: image, question, [choices], answer, [id, type]")
    parser.add_argument("--image-root", help="folder of relative image paths (default: the data file's folder)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"prompts per generate call (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        help=f"greedy decoding length (default {defaults.max_new_tokens})",
    )
    parser.add_argument("--prompt-suffix", help="text appended to every prompt, e.g. an answer-format instruction")
    parser.add_argument(
        "--answer-marker",
        nargs="+",
        action="extend",
        metavar="MARKER",
        help="final-answer marker(s); the text after the last one is scored "
        f"(default: {', '.join(repr(m) for m in defaults.markers)})",
    )
    parser.add_argument("--no-answer-marker", action="store_true", help="score the whole output (no markers)")
    parser.add_argument("--max-pixels", type=int, help="downscale larger images to this many pixels")
    parser.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="accept http(s) image URLs, fetched once before the model loads (public hosts only, with a "
        "deadline and a size cap per image); default: a URL row is refused",
    )
    parser.add_argument("--device", help="device to run on (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_eval_parsers(sub: Any) -> None:
    """Add ``vift eval`` and ``vift sweep`` to the ``vift`` subcommands."""
    evaluate = sub.add_parser(
        "eval",
        help="score plain vs fused answers on a benchmark JSONL",
        description="Greedy answers to every benchmark row, plain and/or fused, scored by exact match or "
        "multiple choice; writes predictions.jsonl, summary.json and summary.md and prints the summary.",
    )
    _common(evaluate)
    evaluate.add_argument(
        "--inference",
        "--modes",
        type=_inference_modes,
        nargs="+",
        default=[["plain", "fused"]],
        metavar="MODES",
        help="inference modes, comma- or space-separated: plain, fused (ability fusion), cascade (describe the "
        "image, then "
        "answer from the description as text); default plain,fused",
    )
    evaluate.add_argument(
        "--describe-request",
        help="caption request of the cascade's describe pass (default: 'Describe the image in detail.'); use "
        "the request your caption data was trained with",
    )
    evaluate.add_argument(
        "--fusion-config",
        metavar="JSON_OR_DIR",
        help="fusion settings for the fused mode: a JSON file (e.g. best_fusion_config.json), a folder with "
        "vift_fusion_config.json, or inline JSON (default: the run's saved config, else the defaults)",
    )
    evaluate.add_argument("--alpha", type=float, help="override alpha of the fused mode")
    evaluate.add_argument("--beta", type=float, help="override beta of the fused mode")
    evaluate.add_argument("--output-dir", help="where to write results (default: vift-eval/MODEL-DATA)")
    evaluate.set_defaults(func=_cmd_eval)

    grid = sub.add_parser(
        "sweep",
        help="grid-search alpha x beta x first fused layer on a dev benchmark",
        description="Fused accuracy at every grid point (layers = first..last), plain accuracy as the reference; "
        "writes sweep.jsonl, sweep.md, a heatmap PNG per alpha and best_fusion_config.json.",
    )
    _common(grid)
    grid.add_argument("--alphas", nargs="+", type=float, default=[1.0], help="alpha values (default 1.0)")
    grid.add_argument("--betas", nargs="+", type=float, help="beta values (default: 0 0.05 0.1 0.15 0.2 0.3)")
    grid.add_argument(
        "--first-layers",
        nargs="+",
        type=int,
        help="first fused decoder layer(s), negative from the end (default: a quarter, half, three quarters)",
    )
    grid.add_argument(
        "--fusion-config", metavar="JSON_OR_DIR", help="base settings (mode, tokens, layers_path) for every point"
    )
    grid.add_argument("--output-dir", help="where to write results (default: vift-sweep/MODEL-DATA)")
    grid.set_defaults(func=_cmd_sweep)
