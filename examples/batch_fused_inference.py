"""Plain and ability-fused answers, side by side, for many questions over many images, in batches.

Every image is asked every ``--question`` (or each line of a ``--pairs`` JSONL is one image/question
pair). Prompts are encoded as left-padded batches; each batch is generated twice, plain
(``generate(..., vift=False)``) and fused, and the answers are written to a JSONL file, one line per
image/question. ``--also-beta`` adds fused answers at other betas (per-call ``vift_beta``).
A saved ViFT run (a folder with ``vift_fusion_config.json``) is loaded with ``load_vift``: its LoRA
merged, its trained weights and its fusion settings applied.

    python examples/batch_fused_inference.py --model Qwen/Qwen2-VL-2B-Instruct --images photos/ \\
        --question "What is unusual about this image?" --question "Describe it in one sentence." \\
        --batch-size 8 --output answers.jsonl
    python examples/batch_fused_inference.py --model runs/qwen2vl_vift --pairs questions.jsonl \\
        --fusion-config fusion.json --also-beta 0.15 --output answers.jsonl
        # questions.jsonl lines: {"image": "photos/cat.jpg", "question": "What is the cat doing?"}

    # offline: a tiny checkpoint and generated pictures
    vift tiny qwen2_vl ckpt && python examples/batch_fused_inference.py --model ckpt --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText

from vift_plugin import FusionConfig, enable_vift, fusion_config, load_processor
from vift_plugin.config import FUSION_CONFIG_NAME
from vift_plugin.data import load_image
from vift_plugin.data.writers import atomic_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_QUESTIONS = ["What colour is the shape?", "What shape is in the picture?"]
SHAPES = [("red", "square"), ("green", "circle"), ("blue", "square"), ("yellow", "circle"), ("purple", "square")]


def generated_pictures() -> list[tuple[str, Image.Image]]:
    """Coloured squares and circles of a few sizes, named ``generated:<colour>-<shape>``."""
    pictures = []
    for i, (colour, shape) in enumerate(SHAPES):
        width, height = 96 + 32 * (i % 3), 96
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=colour)
        pictures.append((f"generated:{colour}-{shape}", image))
    return pictures


def items(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``{"id", "image" (its name), "picture" (PIL), "question"}`` for every pair to answer."""
    questions = args.question or DEFAULT_QUESTIONS
    for name in ("pairs", "images"):
        if getattr(args, name) and not Path(getattr(args, name)).exists():
            raise SystemExit(f"--{name} {getattr(args, name)}: no such file or folder")
    if args.pairs:
        root = args.image_root or str(Path(args.pairs).resolve().parent)
        rows = [json.loads(line) for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if line.strip()]
        return [
            {
                "id": row.get("id", i),
                "image": row["image"],
                "picture": load_image(row["image"], root, args.max_pixels),
                "question": row["question"],
            }
            for i, row in enumerate(rows)
        ]
    if args.images:
        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}")
        pictures = [(str(p), load_image(p, max_pixels=args.max_pixels)) for p in files]
    else:
        pictures = generated_pictures()
    pairs = [(name, picture, q) for name, picture in pictures for q in questions]
    return [{"id": i, "image": n, "picture": p, "question": q} for i, (n, p, q) in enumerate(pairs)]


def batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def load(args: argparse.Namespace, dtype: torch.dtype, questions: int) -> tuple[Any, Any]:
    """The model with ViFT enabled: a saved run through ``load_vift``, any other checkpoint as it is.

    The fusion settings: the run's saved config, else ``--fusion-config``, else the defaults, then the
    flags; the text-only states of each distinct question are cached (one text pass per question).
    """
    if Path(args.model, FUSION_CONFIG_NAME).is_file():
        from vift_plugin.training import load_vift

        model, processor = load_vift(args.model, dtype=dtype)
        config = fusion_config(model)
    else:
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval()
        processor = load_processor(args.model)
        config = None
    if args.fusion_config:
        config = FusionConfig.from_pretrained(args.fusion_config)
    config = config or FusionConfig()
    overrides = {"alpha": args.alpha, "beta": args.beta, "mode": args.mode}
    config = config.replace(**{key: value for key, value in overrides.items() if value is not None})
    if config.text_cache_size == 0:
        config = config.replace(text_cache_size=questions)
    enable_vift(model.to(args.device), config, processor=processor)
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    return model, processor


def answer_batch(
    model: Any, processor: Any, batch: list[dict[str, Any]], settings: dict[str, Any], also_beta: list[float]
) -> list[dict[str, Any]]:
    """One left-padded batch generated plain (``vift=False``), fused, and fused at each extra beta."""
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": r["picture"]}, {"type": "text", "text": r["question"]}],
            }
        ]
        for r in batch
    ]
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    ).to(model.device)
    start = inputs["input_ids"].shape[1]  # left padded: every answer starts here

    def answer(**switches: Any) -> list[str]:
        out = model.generate(**inputs, **settings, **switches)
        return [text.strip() for text in processor.batch_decode(out[:, start:], skip_special_tokens=True)]

    columns = {"plain": answer(vift=False), "fused": answer()}
    columns |= {f"fused_beta_{beta:g}": answer(vift_beta=beta) for beta in also_beta}
    return [
        {"image": r["image"], "question": r["question"], **{key: values[i] for key, values in columns.items()}}
        for i, r in enumerate(batch)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint path, hub id, or a saved ViFT run")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images, each asked every --question")
    source.add_argument("--pairs", help='JSONL of {"image": path, "question": text} lines')
    parser.add_argument("--image-root", help="folder the --pairs image paths resolve under (default: its folder)")
    parser.add_argument("--question", action="append", help="a question (repeatable; default: two about shapes)")
    parser.add_argument("--fusion-config", help="vift_fusion_config.json (or its folder): FusionConfig.from_pretrained")
    parser.add_argument("--alpha", type=float, help="override the fusion config's alpha")
    parser.add_argument("--beta", type=float, help="override the fusion config's beta")
    parser.add_argument("--mode", choices=["live", "official"], help="override the fusion config's mode")
    parser.add_argument("--also-beta", type=float, nargs="+", default=[], help="extra fused answers at these betas")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-pixels", type=int, help="downscale larger images to this many pixels")
    parser.add_argument("--output", default="answers.jsonl")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    rows = items(args)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, processor = load(args, dtype, questions=len({r["question"] for r in rows}))
    config = fusion_config(model)
    print(f"{len(rows)} image/question pair(s), batches of {args.batch_size}; fusion: {config}")
    settings: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": False}

    with atomic_output(args.output) as answers:
        for batch in batches(rows, args.batch_size):
            for row, line in zip(batch, answer_batch(model, processor, batch, settings, args.also_beta), strict=True):
                answers.write(json.dumps({"id": row["id"], **line}, ensure_ascii=False) + "\n")
                print(f"[{line['image']}] {line['question']}\n  plain: {line['plain']!r}\n  fused: {line['fused']!r}")
    print(f"wrote {len(rows)} answer(s) to {args.output}")


if __name__ == "__main__":
    main()
