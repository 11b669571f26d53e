"""Collator: processor-exact tokens, labels only on assistant turns, text batches without image tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import ALL_FAMILIES
from vift_plugin.alignment import image_token_ids_from_processor
from vift_plugin.data import ViFTDataCollator
from vift_plugin.data.collator import IGNORE_INDEX
from vift_plugin.data.schema import caption_messages, text_part

CHAT_FAMILIES = [f for f in ALL_FAMILIES if f != "paligemma"]
IMAGE_KEYS = {"pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask"}


def caption_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": "a",
            "messages": caption_messages("Describe.", "A red box."),
            "images": [Image.new("RGB", (40, 30), "red")],
        },
        {
            "id": "b",
            "messages": caption_messages("What is in the picture, in detail?", "Two blue circles on a grey floor."),
            "images": [Image.new("RGBA", (64, 50), (0, 0, 255, 128))],
        },
    ]


def turn(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [text_part(text)]}


def text_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": "t",
            "messages": [
                turn("user", "hi"),
                turn("assistant", "hello"),
                turn("user", "2+2?"),
                turn("assistant", "four"),
            ],
            "images": [],
        },
        {
            "id": "u",
            "messages": [turn("system", "be brief"), turn("user", "q"), turn("assistant", "an answer")],
            "images": [],
        },
    ]


def answers(row: dict[str, Any]) -> list[str]:
    return [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]


def labelled_runs(labels: torch.Tensor) -> list[list[int]]:
    """Maximal runs of consecutive labelled tokens in one row."""
    runs: list[list[int]] = []
    previous = False
    for token in labels.tolist():
        if token != IGNORE_INDEX:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = token != IGNORE_INDEX
    return runs


def check_labels(model: Any, processor: Any, batch: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    tokenizer = processor.tokenizer
    stop = model.generation_config.eos_token_id
    stop = set(stop) if isinstance(stop, list) else {stop}
    for index, row in enumerate(rows):
        runs = labelled_runs(batch["labels"][index])
        expected = answers(row)
        assert len(runs) == len(expected)
        for run, answer in zip(runs, expected, strict=True):
            assert tokenizer.decode(run, skip_special_tokens=True).rstrip() == answer
            assert run[-1] in stop, "the end-of-turn token is learnt, so generation stops"
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    image_ids = torch.tensor(sorted(image_token_ids_from_processor(processor)))
    assert (batch["labels"][torch.isin(batch["input_ids"], image_ids)] == IGNORE_INDEX).all()
    kept = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["labels"][kept], batch["input_ids"][kept])


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_caption_batch_matches_apply_chat_template(tiny: tuple[Any, Any], family: str) -> None:
    model, processor = tiny
    rows = caption_rows()
    batch = ViFTDataCollator(processor)(rows)
    conversations = [
        [
            {
                **m,
                "content": [
                    {"type": "image", "image": row["images"][0]} if p["type"] == "image" else p for p in m["content"]
                ],
            }
            for m in row["messages"]
        ]
        for row in rows
    ]
    reference = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right"},
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert (batch["attention_mask"] == 0).any(), "rows of different lengths exercise padding"
    check_labels(model, processor, batch, rows)
    loss = model(**batch).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_text_batch_has_no_image_tensors(tiny: tuple[Any, Any], family: str) -> None:
    model, processor = tiny
    rows = text_rows()
    batch = ViFTDataCollator(processor)(rows)
    assert not IMAGE_KEYS & set(batch)
    check_labels(model, processor, batch, rows)
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("family", ["paligemma"])
def test_prefix_lm_family_uses_suffix_tokens(tiny: tuple[Any, Any], family: str) -> None:
    model, processor = tiny
    for rows in (caption_rows(), text_rows()[1:]):
        batch = ViFTDataCollator(processor)(rows)
        for index, row in enumerate(rows):
            labelled = batch["labels"][index] != IGNORE_INDEX
            assert torch.equal(labelled, (batch["token_type_ids"][index] == 1) & (batch["attention_mask"][index] == 1))
            decoded = processor.tokenizer.decode(batch["labels"][index][labelled], skip_special_tokens=True)
            assert decoded == answers(row)[0]
        assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ValueError, match="one prompt/answer pair"):
        ViFTDataCollator(processor)(text_rows()[:1])


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_images_from_paths_are_capped_and_converted(tiny: tuple[Any, Any], family: str, tmp_path: Path) -> None:
    _, processor = tiny
    Image.new("LA", (280, 140), (90, 200)).save(tmp_path / "big.png")
    row = {"id": "p", "messages": caption_messages("Describe.", "grey"), "images": ["big.png"]}
    full = ViFTDataCollator(processor, image_root=tmp_path)([row])
    capped = ViFTDataCollator(processor, image_root=tmp_path, max_pixels=56 * 56)([row])
    assert full["image_grid_thw"].prod() > capped["image_grid_thw"].prod()
    with pytest.raises(ValueError, match=r"row p: image file not found"):
        ViFTDataCollator(processor, image_root=tmp_path / "elsewhere")([row])
    with pytest.raises(ValueError, match="row p: 1 image part"):
        ViFTDataCollator(processor, image_root=tmp_path)([{**row, "images": []}])


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_max_length_cuts_text_but_never_image_tokens(tiny: tuple[Any, Any], family: str) -> None:
    _, processor = tiny
    rows = text_rows()
    full = ViFTDataCollator(processor)(rows)
    cut = ViFTDataCollator(processor, max_length=20)(rows)
    assert cut["input_ids"].shape[1] == 20
    assert torch.equal(cut["input_ids"], full["input_ids"][:, :20])
    assert torch.equal(cut["labels"], full["labels"][:, :20])
    with pytest.raises(ValueError, match="would cut image tokens"):
        ViFTDataCollator(processor, max_length=5)(caption_rows())


def test_bad_settings_are_rejected(checkpoint_dir: Any) -> None:
    from vift_plugin import load_processor

    processor = load_processor(checkpoint_dir("qwen2_vl"))
    with pytest.raises(ValueError, match="padding_side"):
        ViFTDataCollator(processor, padding_side="middle")
    with pytest.raises(ValueError, match="no assistant turn"):
        ViFTDataCollator(processor)([{"messages": [turn("user", "hi")], "images": []}])
    with pytest.raises(ValueError, match="no assistant turn"):
        ViFTDataCollator(processor)([{"conversations": []}])
    with pytest.raises(ValueError, match="no 'messages' or 'conversations'"):
        ViFTDataCollator(processor)([{"text": "hello"}])


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_llava_conversation_records_collate_like_chat_records(
    tiny: tuple[Any, Any], family: str, tmp_path: Path
) -> None:
    from vift_plugin.data.schema import record

    _, processor = tiny
    Image.new("RGB", (40, 30), "red").save(tmp_path / "x.png")
    messages = caption_messages("Describe.", "A red box.")
    chat = record("x", messages, ["x.png"], "messages")
    llava = record("x", messages, ["x.png"], "llava")
    collator = ViFTDataCollator(processor, image_root=tmp_path)
    chat_batch, llava_batch = collator([chat]), collator([llava])
    assert chat_batch.keys() == llava_batch.keys()
    for key, value in chat_batch.items():
        assert torch.equal(value, llava_batch[key]), key
