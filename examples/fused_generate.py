"""Ask one question about one image, with and without ViFT's ability-fused inference.

    python examples/fused_generate.py --model Qwen/Qwen2-VL-2B-Instruct --image photo.jpg \\
        --question "What is unusual about this image?"
    vift tiny qwen2_vl ckpt && python examples/fused_generate.py --model ckpt   # offline smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from vift_plugin import enable_vift, load_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint path or hub id")
    parser.add_argument("--image", help="image file (default: a generated test picture)")
    parser.add_argument("--question", default="What colour is the square?")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--mode", choices=["live", "official"], default="live")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.image and not Path(args.image).is_file():
        parser.error(f"--image {args.image}: no such file")

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    processor = load_processor(args.model)
    if args.image:
        image = Image.open(args.image).convert("RGB")
    else:
        image = Image.new("RGB", (96, 96), "white")
        image.paste((220, 30, 30), (24, 24, 72, 72))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": args.question}]}
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(args.device)
    prompt_length = inputs["input_ids"].shape[1]

    enable_vift(model, processor=processor, alpha=args.alpha, beta=args.beta, mode=args.mode)
    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    plain = model.generate(**inputs, **settings, vift=False)
    fused = model.generate(**inputs, **settings)
    print(f"question: {args.question}")
    print(f"plain:  {processor.decode(plain[0, prompt_length:], skip_special_tokens=True)!r}")
    print(
        f"fused:  {processor.decode(fused[0, prompt_length:], skip_special_tokens=True)!r}"
        f"  (alpha={args.alpha}, beta={args.beta}, mode={args.mode})"
    )


if __name__ == "__main__":
    main()
