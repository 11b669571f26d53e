"""``vift convert``: captions, text instructions and their mix, from the command line."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any


def _is_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


OVERWRITE_HELP = (
    "replace an output folder that holds something other than a dataset (default: refuse; a dataset folder "
    "is replaced, a .jsonl/.json output file too)"
)

REPLACE_HELP = (
    "an existing output is replaced only once the new one is complete (like cp or sort -o): "
    "a failed or interrupted run leaves it as it was"
)


REMOTE_HELP = (
    "accept http(s) image URLs and fetch them (public hosts only, with a deadline and a size cap per image); "
    "default: a URL is refused"
)


def _threads(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def _is_record_file(output: str) -> bool:
    return output.endswith((".jsonl", ".json"))


def check_output_folder(output: str, overwrite: bool = False) -> None:
    """Refuse to replace anything at a dataset-folder ``output`` that is not a dataset folder (a file, or a
    non-empty folder of other things, such as the inputs and their images) unless ``overwrite``."""
    if _is_record_file(output) or not os.path.lexists(output) or overwrite:
        return
    if not os.path.isdir(output):
        raise ValueError(f"output {output} exists and is not a folder; choose another -o or pass --overwrite")
    entries = sorted(os.listdir(output))
    if entries and not _is_dataset_dir(output):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(
            f"output {output} is a non-empty folder that is not a dataset folder ({len(entries)} entries: "
            f"{shown}); it would be replaced. Choose a new or empty folder, or pass --overwrite"
        )


def check_distinct_paths(**paths: str | None) -> None:
    """Refuse when two of ``paths`` (input, output, rejects ...) are the same file or folder, symlinks resolved."""
    seen: dict[str, str] = {}
    for name, path in paths.items():
        if not path:
            continue
        resolved = os.path.realpath(path)
        if resolved in seen:
            raise ValueError(f"{name} and {seen[resolved]} are the same path ({path}); writing would destroy data")
        seen[resolved] = name


def save_dataset(dataset: Any, output: str, overwrite: bool = False) -> None:
    """``.jsonl``/``.json``: records written atomically; anything else: a ``save_to_disk`` folder, atomically.
    A folder ``output`` that exists is replaced only when it is a dataset folder or ``overwrite`` is set."""
    from vift_plugin.data.writers import RecordWriter, dump_columns, partial_folder

    check_output_folder(output, overwrite)
    if _is_record_file(output):
        with RecordWriter(output) as writer:
            for start in range(0, len(dataset), 4096):
                writer.write(dump_columns(dataset[start : start + 4096]))
        return
    target = Path(output)
    with partial_folder(target) as temporary:
        dataset.save_to_disk(temporary)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(temporary, target)


def _rejects(args: argparse.Namespace) -> str | None:
    if not args.skip_bad:
        return None
    return args.rejects or f"{args.output}.rejects.jsonl"


def _cmd_captions(args: argparse.Namespace) -> int:
    from vift_plugin.data.captions import convert_caption_file, convert_captions
    from vift_plugin.data.queries import QueryPool

    check_distinct_paths(input=args.input, output=args.output, rejects=_rejects(args))
    check_output_folder(args.output, args.overwrite)

    options: dict[str, Any] = {
        "image_column": args.image_column,
        "caption_column": args.caption_column,
        "output_format": args.to,
        "queries": QueryPool.from_file(args.queries) if args.queries else QueryPool(),
        "seed": args.seed,
        "image_root": args.image_root,
        "verify_images": args.verify_images,
        "allow_remote_images": args.allow_remote_images,
        "verify_threads": args.verify_threads,
        "skip_bad": args.skip_bad,
        "rejects_path": _rejects(args),
    }
    if args.format == "hf" or (args.format == "auto" and _is_dataset_dir(args.input)):
        from datasets import load_from_disk

        converted = convert_captions(load_from_disk(args.input), **options)
        save_dataset(converted, args.output, args.overwrite)
        print(f"wrote {len(converted)} record(s) to {args.output}")
        if args.skip_bad:
            print(f"rejected rows are listed in {options['rejects_path']}")
        return 0
    report = convert_caption_file(args.input, args.output, input_format=args.format, **options)
    print(report.summary())
    return 0


def _cmd_text(args: argparse.Namespace) -> int:
    from vift_plugin.data.instructions import convert_instruction_file

    check_distinct_paths(input=args.input, output=args.output, rejects=_rejects(args))

    report = convert_instruction_file(
        args.input, args.output, output_format=args.to, skip_bad=args.skip_bad, rejects_path=_rejects(args)
    )
    print(report.summary())
    return 0


def _parse_ratios(items: list[str]) -> dict[str, float]:
    """``--ratio MODALITY=R`` values, checked (known modality, finite, >= 0) before anything is loaded."""
    from vift_plugin.data.mixing import check_ratios

    ratios = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ValueError(f"--ratio expects MODALITY=NUMBER (e.g. text=2.0), got {item!r}") from None
    try:
        return check_ratios(ratios)
    except ValueError as error:
        raise ValueError(f"--ratio: {error}") from None


def _cmd_mix(args: argparse.Namespace) -> int:
    check_distinct_paths(captions=args.captions, text=args.text, output=args.output)
    check_output_folder(args.output, args.overwrite)
    ratios = _parse_ratios(args.ratio)
    from vift_plugin.data.files import load_record_files
    from vift_plugin.data.mixing import mix_datasets
    from vift_plugin.processors import load_processor

    def load(path: str | None) -> Any:
        if path is None:
            return None
        if _is_dataset_dir(path):
            from datasets import load_from_disk

            return load_from_disk(path)
        return load_record_files(path)

    mixed = mix_datasets(
        load(args.captions),
        load(args.text),
        load_processor(args.processor),
        ratios=ratios,
        seed=args.seed,
        image_root=args.image_root,
        max_pixels=args.max_pixels,
        allow_remote_images=args.allow_remote_images,
    )
    save_dataset(mixed, args.output, args.overwrite)
    counts = {m: mixed["modality"].count(m) for m in ("image", "text")} if len(mixed) else {}
    print(f"wrote {len(mixed)} record(s) ({counts}) with modality and length columns to {args.output}")
    return 0


def _cmd_formats(args: argparse.Namespace) -> int:
    from vift_plugin.data.caption_formats import CAPTION_READERS

    print("caption inputs (vift convert captions --format NAME):")
    for name, (_, description) in sorted(CAPTION_READERS.items()):
        print(f"  {name:8s} {description}")
    print("  hf       a datasets save_to_disk folder (image column may be an Image feature)")
    print("text inputs (vift convert text): ShareGPT conversations, Alpaca instruction/input/output, messages")
    print("outputs (--to): messages (Hugging Face chat format + images), llava (conversations JSON)")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="input file (.json, .jsonl, .csv, .tsv, .parquet) or dataset folder")
    parser.add_argument(
        "-o", "--output", required=True, help=f"output .jsonl/.json file (or folder for datasets); {REPLACE_HELP}"
    )
    parser.add_argument("--to", choices=("messages", "llava"), default="messages", help="output record format")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted) instead of stopping")
    parser.add_argument("--rejects", help="where skipped rows are listed (default: OUTPUT.rejects.jsonl)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_convert_parser(sub: Any) -> None:
    convert = sub.add_parser("convert", help="convert caption and text-instruction data to training records")
    kinds = convert.add_subparsers(dest="kind", metavar="KIND", required=True)

    captions = kinds.add_parser("captions", help="caption data -> instruction records (a caption request + caption)")
    _common(captions)
    captions.add_argument("--format", default="auto", help="input format: auto, llava, coco, table, hf")
    captions.add_argument("--image-root", help="folder image paths resolve under (default: the input's folder)")
    captions.add_argument("--image-column", help="image path/URL column of a table (default: guessed)")
    captions.add_argument("--caption-column", help="caption column of a table (default: guessed)")
    captions.add_argument("--queries", help="JSON file with 'brief'/'detailed' request lists")
    captions.add_argument("--seed", type=int, default=0, help="seed of the request choice")
    captions.add_argument(
        "--no-verify-images",
        dest="verify_images",
        action="store_false",
        help="do not decode the images (faster; missing or truncated files surface at training time)",
    )
    captions.add_argument(
        "--verify-threads",
        type=_threads,
        help="threads decoding images to verify them (default: the CPUs, at most 8)",
    )
    captions.add_argument("--allow-remote-images", action="store_true", help=REMOTE_HELP)
    captions.set_defaults(func=_cmd_captions)

    text = kinds.add_parser("text", help="ShareGPT / Alpaca / messages text instructions -> records")
    _common(text)
    text.set_defaults(func=_cmd_text)

    mix = kinds.add_parser("mix", help="caption + text records -> one dataset with modality and length columns")
    mix.add_argument("--captions", help="caption records (.jsonl/.json or dataset folder)")
    mix.add_argument("--text", help="text records (.jsonl/.json or dataset folder)")
    mix.add_argument("--processor", required=True, help="model or processor path (for token lengths)")
    mix.add_argument("-o", "--output", required=True, help=f"output dataset folder (or .jsonl); {REPLACE_HELP}")
    mix.add_argument("--ratio", action="append", default=[], help="MODALITY=R resampling, e.g. text=2.0")
    mix.add_argument("--image-root", help="folder image paths resolve under")
    mix.add_argument("--max-pixels", type=int, help="count image tokens as if images were capped to this")
    mix.add_argument("--allow-remote-images", action="store_true", help=REMOTE_HELP)
    mix.add_argument("--seed", type=int, default=0)
    mix.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    mix.set_defaults(func=_cmd_mix)

    formats = kinds.add_parser("formats", help="list the input and output formats")
    formats.set_defaults(func=_cmd_formats)
