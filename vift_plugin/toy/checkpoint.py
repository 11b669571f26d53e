"""The shapes world's model: the paper's layout (vision tower, 2-layer MLP connector, Qwen2 language model)
in the LLaVA architecture, built from config with an offline word tokenizer.

The tokenizer knows every word of the shapes world (one id per word or punctuation mark), so a caption is
~20 tokens and the whole demo trains on a laptop CPU. The vision tower is a CLIP-style ViT whose patches are
the scene's grid cells (``CELL`` pixels): an 84x84 picture becomes 9 image tokens, one per cell, each with
its learned position embedding, projected into the language model by LLaVA's 2-layer MLP. (A Qwen2-VL
build of the same size, whose image tokens carry no absolute position and a near-constant learned
component, did not learn to see here: its captions ignored the picture, loss equal with shuffled images.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vift_plugin.testing import chat_templates
from vift_plugin.testing.families import QWEN2_VL_SPECIAL_TOKENS
from vift_plugin.toy.data import ANSWER_MARKER, CAPTION_REQUEST
from vift_plugin.toy.world import CELL, COLOURS, GRID, IMAGE_SIZE, NUMBERS, POSITIONS, SHAPES

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (*QWEN2_VL_SPECIAL_TOKENS, IMAGE_TOKEN)
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
    "demo": {"hidden_size": 128, "num_hidden_layers": 6, "intermediate_size": 384, "vision_hidden_size": 128},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 192, "vision_hidden_size": 64},
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
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_world_model(size: str = "demo", seed: int = 0) -> tuple[transformers.PreTrainedModel, object]:
    """A randomly initialised LLaVA-architecture model (``MODEL_SIZES[size]``) and its processor, in memory."""
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}.")
    tokenizer = make_word_tokenizer()
    ids: dict[str, int] = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}  # type: ignore[arg-type]
    dims = dict(MODEL_SIZES[size])
    vision_hidden = dims.pop("vision_hidden_size")
    heads = dims["hidden_size"] // 32
    text = dict(
        dims,
        model_type="qwen2",
        vocab_size=len(tokenizer),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=vision_hidden // 32,
        image_size=IMAGE_SIZE,
        patch_size=CELL,
        projection_dim=vision_hidden,
    )
    config = transformers.LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids[IMAGE_TOKEN],
        image_seq_length=GRID * GRID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=CELL,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_templates.CHATML_NO_SYSTEM_IMAGE_TOKEN,
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
