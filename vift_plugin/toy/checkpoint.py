"""A small Qwen2-VL-architecture checkpoint for the shapes world, built from config with an offline word tokenizer.

The tokenizer knows every word of the shapes world (one id per word or punctuation mark), so a caption is
~20 tokens and the whole demo trains on a laptop CPU. The image processor keeps pictures at
84x84 pixels: 36 patches of 14 pixels, merged 2x2 into 9 image tokens, one per grid cell.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vift_plugin.processors import image_only_processor_class
from vift_plugin.testing import chat_templates
from vift_plugin.testing.families import QWEN2_VL_SPECIAL_TOKENS
from vift_plugin.toy.data import ANSWER_MARKER, CAPTION_REQUEST
from vift_plugin.toy.world import COLOURS, IMAGE_SIZE, NUMBERS, POSITIONS, SHAPES

PHRASES = (
    *COLOURS,
    *SHAPES,
    *(f"{kind}s" for kind in SHAPES),
    *POSITIONS,
    *NUMBERS,
    "a at the in and one question what colour is shape shapes where how many are there",
    "user assistant system",
    CAPTION_REQUEST,
    ANSWER_MARKER,
    ". , ? : ! -",
)
MODEL_SIZES: dict[str, dict[str, int]] = {
    "demo": {"hidden_size": 128, "num_hidden_layers": 6, "intermediate_size": 384},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 192},
}


def word_vocabulary() -> list[str]:
    splitter = pre_tokenizers.Whitespace()
    words = {word for phrase in PHRASES for word, _ in splitter.pre_tokenize_str(phrase)}
    return ["<unk>", *sorted(words)]


def make_word_tokenizer() -> PreTrainedTokenizerFast:
    """One id per shapes-world word; decoding joins words with spaces (``top left .``)."""
    vocab = {word: i for i, word in enumerate(word_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_VL_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_world_model(size: str = "demo", seed: int = 0) -> tuple[transformers.PreTrainedModel, object]:
    """A randomly initialised Qwen2-VL model (``MODEL_SIZES[size]``) and its processor, in memory."""
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}.")
    tokenizer = make_word_tokenizer()
    ids: dict[str, int] = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in QWEN2_VL_SPECIAL_TOKENS}  # type: ignore[arg-type]
    dims = MODEL_SIZES[size]
    heads = dims["hidden_size"] // 32
    text = dict(
        dims,
        vocab_size=len(tokenizer),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
    )
    vision = dict(depth=2, embed_dim=64, hidden_size=dims["hidden_size"], num_heads=2, mlp_ratio=2)
    config = transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = transformers.Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)
    processor = image_only_processor_class(transformers.Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_templates.QWEN2_VL_NO_SYSTEM
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config)
    generation = model.generation_config
    generation.pad_token_id = ids["<|endoftext|>"]
    generation.eos_token_id = ids["<|im_end|>"]
    generation.bos_token_id = ids["<|endoftext|>"]
    return model, processor


def make_world_checkpoint(path: str | os.PathLike[str], size: str = "demo", seed: int = 0) -> Path:
    """Save ``build_world_model(size, seed)`` with ``save_pretrained`` (safetensors) and return the folder."""
    model, processor = build_world_model(size, seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)  # type: ignore[attr-defined]
    return out
