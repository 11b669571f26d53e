"""Cascade inference: the two passes equal a hand-written describe-then-answer loop, batched or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import image
from tests.evaluation.conftest import colour_rows, read_jsonl, write_jsonl
from vift_plugin import FusionConfig, enable_vift
from vift_plugin.cascade import cascade_generate, text_only_messages
from vift_plugin.cli import main

REQUEST = "Describe the image briefly."
NEW = 5


def forced(processor: Any) -> dict[str, Any]:
    """Generate keywords that make a random model write NEW visible tokens (no special, added or blank ones)."""
    tokenizer = processor.tokenizer
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    banned = sorted({*tokenizer.all_special_ids, *tokenizer.added_tokens_encoder.values(), *blank})
    return {"min_new_tokens": NEW, "suppress_tokens": banned}


def ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def greedy(model: Any, processor: Any, messages: list[dict[str, Any]], images: list[Image.Image] | None) -> str:
    """One unbatched greedy generate: the reference the cascade must reproduce."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if images:
        inputs = processor(text=[text], images=[images], return_tensors="pt")
    else:
        inputs = processor.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, **forced(processor))
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    decoded: str = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0]
    return decoded.strip()


def by_hand(model: Any, processor: Any, picture: Image.Image, question: str) -> tuple[str, str]:
    description = greedy(model, processor, ask(REQUEST), [picture])
    answer_turn = [
        {"role": "user", "content": [{"type": "text", "text": f"{description}\n"}, {"type": "text", "text": question}]}
    ]
    return description, greedy(model, processor, answer_turn, None)


def test_two_passes_equal_a_hand_written_loop(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    picture = image(40, 56, "blue")
    (got,) = cascade_generate(
        model,
        processor,
        [ask("What colour is it?")],
        [picture],
        describe_request=REQUEST,
        max_new_tokens=NEW,
        generate_kwargs=forced(processor),
    )
    assert (got.description, got.answer) == by_hand(model, processor, picture, "What colour is it?")
    assert got.descriptions == [got.description] and got.description


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_batches_equal_singles(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    pictures = [image(32, 48, "red"), image(64, 40, "green"), image(48, 48, "yellow")]
    questions = [ask("Colour?"), ask("What shape is shown in the middle of this picture?"), ask("Count them.")]
    options: dict[str, Any] = dict(describe_request=REQUEST, max_new_tokens=NEW, generate_kwargs=forced(processor))
    batched = cascade_generate(model, processor, questions, pictures, batch_size=3, **options)
    singles = [
        cascade_generate(model, processor, [q], [p], batch_size=1, **options)[0]
        for q, p in zip(questions, pictures, strict=True)
    ]
    assert batched == singles


def test_fusion_stays_off_and_enabled(checkpoint_dir: Any) -> None:
    from transformers import AutoModelForImageTextToText

    from vift_plugin import fusion_config, load_processor

    path = checkpoint_dir("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(path)
    options: dict[str, Any] = dict(describe_request=REQUEST, max_new_tokens=NEW, generate_kwargs=forced(processor))
    plain = cascade_generate(model, processor, [ask("Colour?")], [image(40, 40)], **options)
    enable_vift(model, FusionConfig(beta=0.4), processor=processor)
    assert cascade_generate(model, processor, [ask("Colour?")], [image(40, 40)], **options) == plain
    assert fusion_config(model) == FusionConfig(beta=0.4)


def test_every_image_part_gets_its_own_description() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "image"},
                {"type": "text", "text": "?"},
            ],
        },
    ]
    replaced = text_only_messages(messages, ["one", "two"], "[{description}]")
    assert replaced[1]["content"] == [
        {"type": "text", "text": "[one]"},
        {"type": "text", "text": "and"},
        {"type": "text", "text": "[two]"},
        {"type": "text", "text": "?"},
    ]
    assert messages[1]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError, match="2 image part"):
        text_only_messages(messages, ["one"], "{description}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"description_template": "no field"}, "must contain '{description}'"),
        ({"description_template": "{description} {other}"}, "no other fields"),
        ({"describe_request": "  "}, "describe_request is empty"),
    ],
)
def test_bad_settings_are_named(checkpoint_dir: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cascade_generate(None, None, [ask("q")], [image(8, 8)], **kwargs)


def test_counts_must_match() -> None:
    with pytest.raises(ValueError, match="2 conversations but 1 image"):
        cascade_generate(None, None, [ask("q"), ask("r")], [image(8, 8)])
    with pytest.raises(ValueError, match="conversation 0 has 1 image part"):
        cascade_generate(None, None, [ask("q")], [[image(8, 8), image(8, 8)]])


def test_eval_keeps_the_descriptions(checkpoint_dir: Any, tmp_path: Path) -> None:
    from vift_plugin.evaluation import read_benchmark
    from vift_plugin.loading import load_model

    path = str(checkpoint_dir("qwen2_vl"))
    data = write_jsonl(tmp_path / "bench.jsonl", colour_rows(tmp_path)[:4])
    out = tmp_path / "out"
    argv = ["eval", path, "--data", str(data), "--inference", "plain,cascade", "--describe-request", REQUEST]
    assert (
        main([*argv, "--max-new-tokens", str(NEW), "--batch-size", "3", "--no-progress", "--output-dir", str(out)]) == 0
    )
    rows = read_jsonl(out / "predictions.jsonl")
    assert [r["mode"] for r in rows] == ["plain", "cascade"] * 4
    model, processor = load_model(path)
    items = read_benchmark(data)
    expected = cascade_generate(
        model,
        processor,
        [ask(item.question) for item in items],
        [item.image for item in items],
        describe_request=REQUEST,
        max_new_tokens=NEW,
    )
    cascade_rows = [r for r in rows if r["mode"] == "cascade"]
    assert [(r["description"], r["prediction"]) for r in cascade_rows] == [(e.description, e.answer) for e in expected]
    assert all("description" not in r for r in rows if r["mode"] == "plain")


def test_unknown_inference_mode_is_refused(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "bench.jsonl", colour_rows(tmp_path)[:1])
    with pytest.raises(SystemExit):
        main(["eval", str(checkpoint_dir("qwen2_vl")), "--data", str(data), "--inference", "plain,cascad"])
    assert "choose from plain, fused, cascade" in capsys.readouterr().err
