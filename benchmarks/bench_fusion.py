"""Wall time of fused ``generate`` relative to plain ``generate``, measured in one run.

A Qwen2-VL-architecture model with random weights; one image giving ~256 image tokens, a ~40-token
question, 64 new tokens (greedy, min_new_tokens=64 so every run decodes the same length). Prints the
median of ``--repeats`` interleaved runs and the ratios fused/plain for ``live`` and ``official`` mode
(official with alpha=0.9, so its extra unfused multimodal prefill is really run).

    python benchmarks/bench_fusion.py                      # small model, CPU
    python benchmarks/bench_fusion.py --size qwen2-vl-2b   # real Qwen2-VL-2B shapes, bf16 on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import transformers
from PIL import Image

from vift_plugin import disable_vift, enable_vift
from vift_plugin.testing.families import FAMILIES

SIZES: dict[str, dict[str, Any]] = {
    "small": dict(
        text=dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=32,
        ),
        vision=dict(depth=4, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=2),
        mrope=[4, 6, 6],
    ),
    "qwen2-vl-2b": dict(
        text=dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            head_dim=128,
        ),
        vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4),
        mrope=[16, 24, 24],
    ),
}


def build(size: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    config, processor = FAMILIES["qwen2_vl"].build()
    spec = SIZES[size]
    text = config.text_config.to_dict()
    text.pop("layer_types", None)
    text.update(
        spec["text"], rope_parameters={"rope_type": "default", "mrope_section": spec["mrope"], "rope_theta": 1e6}
    )
    vision = config.vision_config.to_dict()
    vision.update(spec["vision"])
    config = transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
    )
    processor.image_processor.max_pixels = processor.image_processor.min_pixels = 448 * 448
    processor.image_processor.size = {"shortest_edge": 448 * 448, "longest_edge": 448 * 448}
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype).to(device).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, processor = build(args.size, args.device, dtype)
    question = "How many shapes are there?"  # the byte-level tokenizer spends one token per byte
    messages = [
        {"role": "system", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (448, 448), "teal")},
                {"type": "text", "text": question},
            ],
        },
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(args.device)
    ids = inputs["input_ids"][0]
    n_image = int((ids == model.config.image_token_id).sum())
    print(
        f"model: {args.size} Qwen2-VL architecture, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"params, {dtype}, {args.device}; prompt: {ids.numel()} tokens ({n_image} image, "
        f"{ids.numel() - n_image} text), {args.new_tokens} new tokens"
    )
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    runs: dict[str, dict[str, Any]] = {
        "plain": dict(vift=False),
        "live": dict(vift_mode="live", vift_alpha=1.0, vift_beta=0.1),
        "official": dict(vift_mode="official", vift_alpha=0.9, vift_beta=0.1),
    }
    enable_vift(model, processor=processor)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for extra in runs.values():  # warm-up
            model.generate(**inputs, **gen, **extra)
        for _ in range(args.repeats):
            for name, extra in runs.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = model.generate(**inputs, **gen, **extra)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                assert out.shape[1] == ids.numel() + args.new_tokens
    disable_vift(model)
    plain = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:9s} median {median * 1000:8.1f} ms  ({plain and median / plain:.3f}x plain)")
    print(
        f"ratios: live {statistics.median(times['live']) / plain:.3f}x (target <= 1.10), "
        f"official {statistics.median(times['official']) / plain:.3f}x (target <= 1.60)"
    )


if __name__ == "__main__":
    main()
