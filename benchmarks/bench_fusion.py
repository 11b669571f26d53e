"""Wall time of fused ``generate`` relative to plain ``generate``, measured in one run.

A Qwen2-VL-architecture model with random weights; one image giving ~256 image tokens, a ~40-token
question, 64 new tokens (greedy, min_new_tokens=64 so every run decodes the same length). Prints the
median of ``--repeats`` interleaved runs and the ratios fused/plain for ``live`` and ``official`` mode
(official with alpha=0.9, so its extra unfused multimodal prefill is really run).

    python benchmarks/bench_fusion.py                      # small model, CPU
    python benchmarks/bench_fusion.py --size qwen2-vl-2b   # real Qwen2-VL-2B shapes, bf16 on a GPU

``--json FILE`` also writes the figures as JSON (what ``scripts/gpu_check.py`` records).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from PIL import Image
from qwen2vl_shapes import SIZES, build  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from vift_plugin import disable_vift, enable_vift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
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
    if args.json:
        medians = {name: statistics.median(values) for name, values in times.items()}
        figures = {
            "size": args.size,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
            "dtype": str(dtype).removeprefix("torch."),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "prompt_tokens": ids.numel(),
            "image_tokens": n_image,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "median_ms": {name: round(value * 1000, 2) for name, value in medians.items()},
            "ratio": {name: round(medians[name] / plain, 4) for name in ("live", "official")},
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
