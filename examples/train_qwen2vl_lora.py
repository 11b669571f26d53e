"""ViFT stage-2 fine-tuning of Qwen2-VL with LoRA (or QLoRA), then one fused answer from the saved run.

Trains on image captions plus text-only instructions through the library's Python API
(``load_model_and_processor`` -> ``mix_datasets`` -> ``ViFTTrainer``): every optimizer step holds a
single modality, the vision encoder, connector and language model have their own learning rates, LoRA
adapts the language model and the connector trains in full. The run is saved, reloaded with
``load_vift`` and asked one question with and without ability-fused inference.
``examples/train_llava_lora.py`` runs this same script with LLaVA-1.5 defaults.

    # one 24 GB GPU; data from `vift convert` or examples/convert_captions.py
    python examples/train_qwen2vl_lora.py --model Qwen/Qwen2-VL-2B-Instruct \\
        --captions data/captions.jsonl --texts data/text.jsonl --image-root data/images \\
        --output-dir runs/qwen2vl_vift --max-steps 1000
    # QLoRA (4-bit NF4 language model, needs bitsandbytes): add --load-in-4bit

    # offline smoke run on CPU: a tiny random checkpoint and generated toy records
    vift tiny qwen2_vl ckpt && python examples/train_qwen2vl_lora.py --model ckpt --output-dir /tmp/vift_run \\
        --max-steps 2 --batch-size 2 --grad-accum 1 --logging-steps 1 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from PIL import Image
from transformers import set_seed

from vift_plugin.data import ViFTDataCollator, load_image, mix_datasets
from vift_plugin.testing.records import write_toy_records
from vift_plugin.training import ModelArguments, ViFTTrainer, ViFTTrainingArguments, load_model_and_processor, load_vift
from vift_plugin.training.model import describe_trainable
from vift_plugin.training.run import LOSS_PLOT_NAME, plot_losses


@dataclass(frozen=True)
class Recipe:
    """The defaults that differ between model families (one 24 GB GPU)."""

    family: str
    checkpoint: str  # the real checkpoint the defaults are sized for
    batch_size: int
    grad_accum: int
    max_pixels: int | None  # cap on image pixels (image tokens dominate memory); None: the processor's own size
    output_dir: str


QWEN2VL = Recipe(
    family="Qwen2-VL",
    checkpoint="Qwen/Qwen2-VL-2B-Instruct",
    batch_size=4,
    grad_accum=16,  # global batch 64
    max_pixels=512 * 28 * 28,  # at most 512 image tokens per image
    output_dir="runs/qwen2vl_vift",
)


def parse_args(recipe: Recipe, argv: list[str] | None = None, description: str | None = __doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=f"checkpoint path or hub id (e.g. {recipe.checkpoint})")
    data = parser.add_argument_group("data (records from `vift convert`; none given: generated toy records)")
    data.add_argument("--captions", nargs="+", help="caption records (.jsonl/.json, chat format)")
    data.add_argument("--texts", nargs="+", help="text-instruction records (.jsonl/.json, chat format)")
    data.add_argument("--image-root", help="folder the records' image paths resolve under")
    data.add_argument("--text-ratio", type=float, default=1.0, help="resample the text records to R x their size")
    data.add_argument("--max-pixels", type=int, default=recipe.max_pixels, help="downscale larger images")
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", default=recipe.output_dir)
    train.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (-1: one epoch)")
    train.add_argument("--batch-size", type=int, default=recipe.batch_size, help="per-device batch")
    train.add_argument("--grad-accum", type=int, default=recipe.grad_accum, help="gradient accumulation steps")
    train.add_argument("--language-lr", type=float, default=2e-4, help="LoRA adapters (paper, full FT: 1e-5)")
    train.add_argument("--connector-lr", type=float, default=2e-6, help="connector, trained in full (paper: 2e-6)")
    train.add_argument("--vision-lr", type=float, default=1e-5, help="vision encoder with --train-vision (paper)")
    train.add_argument("--train-vision", action="store_true", help="also train the vision encoder (default frozen)")
    train.add_argument("--lora-r", type=int, default=64)
    train.add_argument("--lora-alpha", type=int, default=128)
    train.add_argument("--load-in-4bit", action="store_true", help="QLoRA: 4-bit NF4 language model (bitsandbytes)")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--logging-steps", type=int, default=10)
    train.add_argument("--save-steps", type=int, default=500)
    train.add_argument("--fusion-beta", type=float, default=0.1, help="saved with the run (paper: 0.1 / 0.15)")
    train.add_argument("--seed", type=int, default=0)
    ask = parser.add_argument_group("the fused answer after training")
    ask.add_argument("--image", help="image to ask about (default: the first caption record's image)")
    ask.add_argument("--question", default="Describe the image in one sentence.")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    return parser.parse_args(argv)


def training_arguments(args: argparse.Namespace, image_root: str | None) -> ViFTTrainingArguments:
    """Stage 2 of ViFT on one GPU: LoRA on the language model, the connector in full, vision frozen."""
    cuda = torch.cuda.is_available()
    return ViFTTrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=1,  # with --max-steps -1
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.language_lr,  # parameters outside the three roles, if any
        language_lr=args.language_lr,
        connector_lr=args.connector_lr,
        vision_lr=args.vision_lr,
        freeze_vision=not args.train_vision,
        use_lora=True,
        lora_target="language",
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.05,
        group_by_modality=True,  # ModalityGroupedSampler: every optimizer step is all captions or all text
        max_pixels=args.max_pixels,
        image_root=image_root,
        fusion_config=json.dumps({"beta": args.fusion_beta}),
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="paged_adamw_32bit" if args.load_in_4bit and cuda else "adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # below 1: a ratio of the total steps
        weight_decay=0.0,
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        dataloader_num_workers=4 if cuda else 0,
        ddp_find_unused_parameters=True,  # under torchrun: text-only steps leave the vision side without gradients
        report_to=[],
        seed=args.seed,
    )


def load_records(files: list[str] | None) -> Any:
    return load_dataset("json", data_files=files, split="train") if files else None


def train(args: argparse.Namespace, image_root: str | None) -> ViFTTrainer:
    training_args = training_arguments(args, image_root)
    model_args = ModelArguments(
        model_name_or_path=args.model,
        load_in_bits=4 if args.load_in_4bit else None,
        dtype="bfloat16" if training_args.bf16 else "float32",
    )
    set_seed(args.seed)  # the LoRA initialisation
    model, processor = load_model_and_processor(model_args, training_args)  # quantize, freeze, add LoRA
    print(f"trainable parameters: {describe_trainable(model)}")
    data = mix_datasets(  # + modality and token-length columns, for the modality-grouped sampler
        load_records(args.captions),
        load_records(args.texts),
        processor,
        ratios={"text": args.text_ratio},
        seed=args.seed,
        image_root=image_root,
        max_pixels=args.max_pixels,
    )
    print(f"training set: {data['modality'].count('image')} caption and {data['modality'].count('text')} text records")
    trainer = ViFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data,
        processing_class=processor,
        data_collator=ViFTDataCollator(processor, image_root=image_root, max_pixels=args.max_pixels),
    )
    trainer.train()
    trainer.save_model()  # adapter, connector weights, processor, vift_fusion_config.json
    trainer.save_state()
    plot_losses(trainer.state.log_history, Path(args.output_dir) / LOSS_PLOT_NAME)
    return trainer


def print_losses(log_history: list[dict[str, Any]]) -> None:
    for entry in log_history:
        if "loss" in entry:
            parts = [f"{key} {entry[key]:.4f}" for key in ("loss", "loss_image", "loss_text") if key in entry]
            print(f"step {entry['step']:>5}: " + ", ".join(parts))


def first_caption_image(args: argparse.Namespace, image_root: str | None) -> Image.Image:
    if args.image:
        return load_image(args.image, max_pixels=args.max_pixels)
    captions = load_records(args.captions)
    if captions is not None and len(captions) and captions[0]["images"]:
        return load_image(captions[0]["images"][0], image_root, args.max_pixels)
    image = Image.new("RGB", (112, 112), "white")
    image.paste((220, 30, 30), (28, 28, 84, 84))
    return image


def fused_answer(run_dir: str, image: Image.Image, question: str, max_new_tokens: int) -> tuple[str, str]:
    """Reload the saved run (LoRA merged, fusion enabled from its config); ``(plain, fused)`` answers."""
    cuda = torch.cuda.is_available()
    model, processor = load_vift(run_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    model.to("cuda" if cuda else "cpu")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    start = inputs["input_ids"].shape[1]
    plain = model.generate(**inputs, **settings, vift=False)
    fused = model.generate(**inputs, **settings)
    decode = processor.tokenizer.decode
    return decode(plain[0, start:], skip_special_tokens=True), decode(fused[0, start:], skip_special_tokens=True)


def main(argv: list[str] | None = None, recipe: Recipe = QWEN2VL, description: str | None = __doc__) -> None:
    args = parse_args(recipe, argv, description)
    image_root = args.image_root
    if not (args.captions or args.texts):
        toy = Path(args.output_dir, "toy_data")
        captions, texts = write_toy_records(toy)
        args.captions, args.texts, image_root = [str(captions)], [str(texts)], str(toy)
        print(f"no --captions/--texts given: training on generated toy records in {toy}")
    trainer = train(args, image_root)
    print_losses(trainer.state.log_history)
    print(f"saved to {args.output_dir}")

    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    plain, fused = fused_answer(
        args.output_dir, first_caption_image(args, image_root), args.question, args.max_new_tokens
    )
    print(f"question: {args.question}")
    print(f"plain: {plain!r}")
    print(f"fused: {fused!r}")


if __name__ == "__main__":
    main()
