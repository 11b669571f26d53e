"""Peak memory and seconds per step of LoRA and QLoRA training with ``ViFTTrainer``, measured in one run.

Qwen2-VL-architecture models with the real shapes of Qwen2-VL-2B/7B and random weights (saved to a
temporary folder, then loaded exactly as a user's checkpoint: ``load_model_and_processor``, so QLoRA
quantizes through bitsandbytes on load). Batch 1 of one caption sample of ``--tokens`` tokens (a
448x448 image = 256 image tokens, the rest caption text), gradient checkpointing, bf16 on a GPU.
Prints seconds per optimizer step (median after a warm-up step) and peak memory.

    python benchmarks/bench_train.py --size qwen2-vl-2b --mode lora      # target <= 9 GB
    python benchmarks/bench_train.py --size qwen2-vl-7b --mode qlora     # target <= 12 GB
    python benchmarks/bench_train.py --size small --mode lora,qlora      # CPU smoke run

``--json FILE`` also writes the rows as JSON (what ``scripts/gpu_check.py`` records).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from qwen2vl_shapes import SIZES, build_config  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from vift_plugin.data import ViFTDataCollator
from vift_plugin.data.schema import caption_messages
from vift_plugin.training import ModelArguments, ViFTTrainer, ViFTTrainingArguments, load_model_and_processor


class StepTimer(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


IMAGE = Image.new("RGB", (448, 448), "teal")


def sample(caption_chars: int) -> dict[str, Any]:
    """One caption record with a caption of ``caption_chars`` bytes (the byte tokenizer: one token each)."""
    caption = ("a small grey shape " * (caption_chars // 19 + 1))[:caption_chars]
    return {"id": "0", "messages": caption_messages("Describe the image.", caption), "modality": "image"}


def run(size: str, mode: str, tokens: int, steps: int, folder: Path) -> dict[str, Any]:
    import datasets

    cuda = torch.cuda.is_available()
    model_args = ModelArguments(
        model_name_or_path=str(folder),
        load_in_bits=4 if mode == "qlora" else None,
        dtype="bfloat16" if cuda else "float32",
    )
    args = ViFTTrainingArguments(
        output_dir=str(folder / f"out-{mode}"),
        per_device_train_batch_size=1,
        max_steps=steps + 1,
        learning_rate=1e-4,
        use_lora=True,
        lora_r=64,
        lora_alpha=128,
        freeze_vision=True,
        gradient_checkpointing=True,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
    )
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, processor = load_model_and_processor(model_args, args)
    collator = ViFTDataCollator(processor)

    def collate(rows: list[dict[str, Any]]) -> Any:
        return collator([{**row, "images": [IMAGE]} for row in rows])

    overhead = int(collate([sample(1)])["attention_mask"].sum()) - 1
    data = datasets.Dataset.from_list([sample(max(1, tokens - overhead))] * (steps + 1))

    timer = StepTimer()
    trainer = ViFTTrainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[timer])
    length = int(collate([data[0]])["attention_mask"].sum())
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del trainer, model
    return {
        "size": size,
        "mode": mode,
        "tokens": length,
        "s/step": statistics.median(timer.times[1:]) if len(timer.times) > 1 else timer.times[0],
        "peak GiB": peak,
        "peak kind": "GPU max_memory_allocated" if cuda else "process max RSS (CPU)",
        "trainable M": trainable / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--mode", default="lora,qlora", help="comma list of lora, qlora")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    config, processor = build_config(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        for mode in args.mode.split(","):
            rows.append(run(args.size, mode.strip(), args.tokens, args.steps, folder))
            print(json.dumps(rows[-1]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{device}, batch 1, gradient checkpointing, LoRA r=64 on the language model, connector trained")
    print(f"{'model':12s} {'mode':6s} {'tokens':>6s} {'s/step':>8s} {'peak GiB':>9s} {'trainable':>10s}")
    for row in rows:
        print(
            f"{row['size']:12s} {row['mode']:6s} {row['tokens']:6d} {row['s/step']:8.3f} {row['peak GiB']:9.2f} "
            f"{row['trainable M']:9.1f}M"
        )
    print("targets: qwen2-vl-7b qlora <= 12 GB, qwen2-vl-2b lora <= 9 GB (peak GPU memory)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": device, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
