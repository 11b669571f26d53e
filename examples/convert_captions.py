"""Caption data and text instructions into ViFT training records, with conversion reports and the mix.

Converts a caption file (LLaVA-Pretrain / ShareGPT4V JSON, COCO caption annotations, or a
JSON/JSONL/CSV/TSV/Parquet table with image and caption columns) and a text-instruction file
(ShareGPT, Alpaca or messages) into chat records, prints what each conversion read, wrote and
skipped, then mixes the two into one dataset with ``modality`` and token ``length`` columns,
counted with ``--model``'s processor, ready for ``ViFTTrainer`` (or ``vift train`` with
``dataset_dir``). The same as ``vift convert captions``, ``vift convert text`` and ``vift convert mix``.

    python examples/convert_captions.py --model Qwen/Qwen2-VL-2B-Instruct \\
        --captions LLaVA-Pretrain/blip_laion_cc_sbu_558k.json --image-root LLaVA-Pretrain/images \\
        --texts alpaca_gpt4_data.json --output-dir data --skip-bad

    # offline: a generated LLaVA-Pretrain-style sample (two bad rows included) and a tiny checkpoint
    vift tiny qwen2_vl ckpt && python examples/convert_captions.py --model ckpt --output-dir /tmp/vift_data
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from PIL import Image

from vift_plugin import load_processor
from vift_plugin.data import convert_caption_file, convert_instruction_file, mix_datasets

SAMPLE_CAPTIONS = [
    ("red", "A red square on a plain background."),
    ("green", "A green square, centred, with sharp edges."),
    ("blue", "A blue square filling most of the picture."),
    ("yellow", "A small yellow square."),
    ("black", "A black square on white."),
    ("white", ""),  # empty caption: a bad row
]
SAMPLE_INSTRUCTIONS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "What is 7 plus 5?", "input": "", "output": "12"},
    {"instruction": "Name a prime number above 10.", "input": "", "output": ""},  # empty answer: a bad row
]
SAMPLE_SHAREGPT = {
    "id": "chat-1",
    "conversations": [
        {"from": "human", "value": "Write a haiku about autumn."},
        {"from": "gpt", "value": "Red leaves drift and fall / the pond holds a colder sky / geese call, then silence"},
        {"from": "human", "value": "Now one about spring."},
        {"from": "gpt", "value": "Thaw in the gutters / a thrush rehearses at dawn / green pushes through mud"},
    ],
}


def write_sample(folder: Path) -> tuple[Path, Path]:
    """A LLaVA-Pretrain-style caption JSON (images under ``images/``) and an Alpaca + ShareGPT text JSON."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (colour, caption) in enumerate(SAMPLE_CAPTIONS):
        name = f"{i:05d}.jpg"
        Image.new("RGB", (64 + 16 * i, 48), colour).save(folder / "images" / name)
        conversations = [
            {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": caption},
        ]
        rows.append({"id": f"{i:05d}", "image": name, "conversations": conversations})
    missing = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A photo."}]
    rows.append({"id": "missing", "image": "no_such_file.jpg", "conversations": missing})  # a bad row
    captions, texts = folder / "llava_pretrain.json", folder / "instructions.json"
    captions.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    texts.write_text(json.dumps([*SAMPLE_INSTRUCTIONS, SAMPLE_SHAREGPT], indent=1), encoding="utf-8")
    return captions, texts


def length_summary(mixed: Any, modality: str) -> str:
    lengths = [n for n, m in zip(mixed["length"], mixed["modality"], strict=True) if m == modality]
    if not lengths:
        return f"{modality:5s}: none"
    return (
        f"{modality:5s}: {len(lengths):6d} records, tokens min {min(lengths)}, "
        f"median {statistics.median(lengths):g}, max {max(lengths)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model or processor path/hub id (for token lengths)")
    parser.add_argument("--captions", help="caption file (default: a generated sample)")
    parser.add_argument("--texts", help="text-instruction file (ShareGPT / Alpaca / messages)")
    parser.add_argument("--format", default="auto", help="caption input format: auto, llava, coco, table")
    parser.add_argument("--image-root", help="folder image paths resolve under (default: the caption file's folder)")
    parser.add_argument("--image-column", help="image column of a table (default: guessed)")
    parser.add_argument("--caption-column", help="caption column of a table (default: guessed)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted, listed) instead of stopping")
    parser.add_argument("--no-verify-images", dest="verify_images", action="store_false", help="skip image checks")
    parser.add_argument("--text-ratio", type=float, default=1.0, help="resample the text records to R x their size")
    parser.add_argument("--max-pixels", type=int, help="count image tokens as if images were capped to this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption-request choice and resampling")
    parser.add_argument("--output-dir", default="data", help="captions.jsonl, text.jsonl and the mix/ folder")
    args = parser.parse_args()
    for name in ("captions", "texts", "image_root"):
        if getattr(args, name) and not Path(getattr(args, name)).exists():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file or folder")

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.captions is None and args.texts is None:
        args.captions, args.texts = map(str, write_sample(out / "sample"))
        args.image_root, args.skip_bad = str(out / "sample" / "images"), True
        print(f"no input given: converting a generated sample in {out / 'sample'} (with --skip-bad)")
    image_root = args.image_root or (str(Path(args.captions).resolve().parent) if args.captions else None)

    sources: dict[str, Any] = {"image": None, "text": None}
    if args.captions:
        report = convert_caption_file(
            args.captions,
            out / "captions.jsonl",
            input_format=args.format,
            image_column=args.image_column,
            caption_column=args.caption_column,
            image_root=image_root,
            seed=args.seed,
            verify_images=args.verify_images,
            skip_bad=args.skip_bad,
            rejects_path=out / "captions.rejects.jsonl" if args.skip_bad else None,
        )
        print(f"[captions] {report.summary()}")
        sources["image"] = report.output if report.written else None
    if args.texts:
        report = convert_instruction_file(
            args.texts,
            out / "text.jsonl",
            skip_bad=args.skip_bad,
            rejects_path=out / "text.rejects.jsonl" if args.skip_bad else None,
        )
        print(f"[text] {report.summary()}")
        sources["text"] = report.output if report.written else None

    from datasets import load_dataset

    loaded = {m: load_dataset("json", data_files=f, split="train") if f else None for m, f in sources.items()}
    mixed = mix_datasets(
        loaded["image"],
        loaded["text"],
        load_processor(args.model),
        ratios={"text": args.text_ratio},
        seed=args.seed,
        image_root=image_root,
        max_pixels=args.max_pixels,
    )
    mixed.save_to_disk(out / "mix")
    print(f"[mix] {len(mixed)} records with modality and length columns ({args.model}) -> {out / 'mix'}")
    for modality in ("image", "text"):
        print(f"  {length_summary(mixed, modality)}")
    first = {key: value for key, value in mixed[0].items() if key in ("id", "messages", "images")}
    print(f"first record: {json.dumps(first, ensure_ascii=False)}")
    flags = [f"--{flag} {file}" for flag, file in (("captions", sources["image"]), ("texts", sources["text"])) if file]
    print(f"train on it: python examples/train_qwen2vl_lora.py --model {args.model} {' '.join(flags)}", end="")
    print(f" --image-root {image_root}" if sources["image"] else "")


if __name__ == "__main__":
    main()
