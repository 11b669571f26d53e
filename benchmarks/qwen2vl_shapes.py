"""Qwen2-VL-architecture models with real shapes and random weights, for the benchmarks (no download).

``small`` runs anywhere; ``qwen2-vl-2b`` and ``qwen2-vl-7b`` have the real layer sizes and vocabulary
of Qwen2-VL-2B/7B-Instruct, with the offline byte-level tokenizer (its ids fit the real vocabulary).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from vift_plugin.testing.families import FAMILIES

VISION_675M = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4)

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
        vision=dict(VISION_675M, hidden_size=1536),
        mrope=[16, 24, 24],
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2-vl-7b": dict(
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            head_dim=128,
        ),
        vision=dict(VISION_675M, hidden_size=3584),
        mrope=[16, 24, 24],
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


def build_config(size: str, image_side: int = 448) -> tuple[Any, Any]:
    """``(Qwen2VLConfig, processor)`` of ``size``; the processor resizes every image to ``image_side``^2."""
    config, processor = FAMILIES["qwen2_vl"].build()
    spec = SIZES[size]
    text = config.text_config.to_dict()
    text.pop("layer_types", None)
    text.update(
        spec["text"], rope_parameters={"rope_type": "default", "mrope_section": spec["mrope"], "rope_theta": 1e6}
    )
    if "vocab_size" in spec:
        text.update(vocab_size=spec["vocab_size"], tie_word_embeddings=spec["tie_word_embeddings"])
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
    if "vocab_size" in spec:
        config.tie_word_embeddings = spec["tie_word_embeddings"]
    pixels = image_side * image_side
    processor.image_processor.max_pixels = processor.image_processor.min_pixels = pixels
    processor.image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
    return config, processor


def build(size: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A random-weight model of ``size`` on ``device`` in eval mode, and its processor."""
    config, processor = build_config(size)
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype).to(device).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor
