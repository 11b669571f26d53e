"""Prompt building and batch encoding: options, suffix, custom builders, left padding, tokenizer state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.evaluation.conftest import colour_rows, write_jsonl
from vift_plugin import load_processor
from vift_plugin.evaluation import read_benchmark
from vift_plugin.evaluation.runner import encode_batch, item_messages


def test_custom_prompt_builders_and_suffix(tmp_path: Path) -> None:
    rows = colour_rows(tmp_path)[:1]
    (item,) = read_benchmark(write_jsonl(tmp_path / "b.jsonl", [{**rows[0], "choices": ["red", "blue"], "answer": 0}]))
    (text,) = [p["text"] for p in item_messages(item, "Answer with a letter.")[0]["content"] if p["type"] == "text"]
    assert text == "What colour is the square?\nA. red\nB. blue\nAnswer with a letter."
    custom = item_messages(item, "ignored", lambda it: f"Q: {it.question}")
    assert custom[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Q: What colour is the square?"}]
    whole = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert item_messages(item, None, lambda it: whole) is whole


def test_batches_are_left_padded_and_the_tokenizer_is_left_as_it_was(checkpoint_dir: Any, tmp_path: Path) -> None:
    processor = load_processor(checkpoint_dir("qwen2_vl"))
    processor.tokenizer.padding_side = "right"
    rows = colour_rows(tmp_path)[:2]
    rows[1]["question"] = "A much longer question about the colour of the shape in this picture?"
    items = read_benchmark(write_jsonl(tmp_path / "b.jsonl", rows))
    batch = encode_batch(processor, items, prompt_suffix="Reply briefly.")
    assert processor.tokenizer.padding_side == "right"
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and bool(mask[1].all())
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert all("Reply briefly." in t for t in texts) and "much longer" in texts[1]
    assert all(t.endswith("<|im_start|>assistant\n") for t in texts)  # the generation prompt
