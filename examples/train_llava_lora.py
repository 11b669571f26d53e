"""ViFT stage-2 fine-tuning of LLaVA-1.5 with LoRA (or QLoRA), then one fused answer from the saved run.

The same program as ``examples/train_qwen2vl_lora.py`` (read that one for the API calls), with defaults
for LLaVA-1.5-7B on one 24 GB GPU: batch 2 x 32 accumulation steps, and no pixel cap (LLaVA-1.5
resizes every image to 336x336, 576 image tokens). The bf16 weights take ~14 GB; ``--load-in-4bit``
(QLoRA) brings the language model to ~4 GB.

    python examples/train_llava_lora.py --model llava-hf/llava-1.5-7b-hf \\
        --captions data/captions.jsonl --texts data/text.jsonl --image-root data/images \\
        --output-dir runs/llava15_vift --max-steps 1000 --load-in-4bit

    # offline smoke run on CPU: a tiny random checkpoint and generated toy records
    vift tiny llava ckpt-llava && python examples/train_llava_lora.py --model ckpt-llava \\
        --output-dir /tmp/vift_llava --max-steps 2 --batch-size 2 --grad-accum 1 --logging-steps 1
"""

from __future__ import annotations

from train_qwen2vl_lora import Recipe, main

LLAVA15 = Recipe(
    family="LLaVA-1.5",
    checkpoint="llava-hf/llava-1.5-7b-hf",
    batch_size=2,
    grad_accum=32,  # global batch 64
    max_pixels=None,
    output_dir="runs/llava15_vift",
)

if __name__ == "__main__":
    main(recipe=LLAVA15, description=__doc__)
