"""Mixing: modality and token-length columns (lengths close to the collator's), resampling ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image, ImageFile

from vift_plugin import load_processor
from vift_plugin.cli import main
from vift_plugin.data import ViFTDataCollator, mix_datasets
from vift_plugin.data.files import ImageError
from vift_plugin.data.mixing import resample
from vift_plugin.data.schema import caption_messages, text_part

SIZES = [(40, 30), (200, 90), (64, 64)]


def write_images(root: Path) -> list[str]:
    names = []
    for i, size in enumerate(SIZES):
        Image.new("RGB", size, "red").save(root / f"{i}.png")
        names.append(f"{i}.png")
    return names


def caption_dataset(names: list[str]) -> datasets.Dataset:
    captions = ["a red square", "a long red banner on a wall, seen from the side at dusk", "red"]
    return datasets.Dataset.from_list(
        [
            {"id": f"c{i}", "messages": caption_messages("Describe the image.", c), "images": [name]}
            for i, (c, name) in enumerate(zip(captions, names, strict=True))
        ]
    )


def text_dataset() -> datasets.Dataset:
    dialogues = [["What is 2+2?", "4"], ["Name a colour.", "Red.", "Another?", "Blue, which is a primary colour."]]
    rows = []
    for i, turns in enumerate(dialogues):
        messages = [
            {"role": "user" if k % 2 == 0 else "assistant", "content": [text_part(t)]} for k, t in enumerate(turns)
        ]
        rows.append({"id": f"t{i}", "messages": messages, "images": []})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3", "gemma3"])
def test_lengths_track_the_collated_lengths(checkpoint_dir: Any, family: str, tmp_path: Path) -> None:
    processor = load_processor(checkpoint_dir(family))
    names = write_images(tmp_path)
    mixed = mix_datasets(caption_dataset(names), text_dataset(), processor, image_root=tmp_path)
    assert mixed["modality"] == ["image"] * 3 + ["text"] * 2
    collator = ViFTDataCollator(processor, image_root=tmp_path)
    actual = [int(collator([row])["attention_mask"].sum()) for row in mixed]
    for estimate, real in zip(mixed["length"], actual, strict=True):
        assert abs(estimate - real) <= max(3, 0.1 * real), (mixed["length"], actual)
    assert mixed["length"][1] > mixed["length"][0] or family in ("llava", "gemma3")


def test_image_sizes_come_from_headers_only(
    checkpoint_dir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = load_processor(checkpoint_dir("qwen2_vl"))
    names = write_images(tmp_path)
    expected = mix_datasets(caption_dataset(names), None, processor, image_root=tmp_path)["length"]

    def no_decoding(self: Image.Image) -> Any:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert mix_datasets(caption_dataset(names), None, processor, image_root=tmp_path)["length"] == expected
    capped = mix_datasets(caption_dataset(names), None, processor, image_root=tmp_path, max_pixels=28 * 28 * 4)
    assert capped["length"][1] < expected[1]


def test_ratios_resample_each_source(checkpoint_dir: Any, tmp_path: Path) -> None:
    processor = load_processor(checkpoint_dir("qwen2_vl"))
    names = write_images(tmp_path)
    mixed = mix_datasets(
        caption_dataset(names), text_dataset(), processor, image_root=tmp_path, ratios={"text": 2.5, "image": 1 / 3}
    )
    assert mixed["modality"].count("image") == 1 and mixed["modality"].count("text") == 5
    assert sorted(mixed["id"])[1:] == ["t0", "t0", "t0", "t1", "t1"] or sorted(mixed["id"])[1:] == [
        "t0",
        "t0",
        "t1",
        "t1",
        "t1",
    ]
    with pytest.raises(ValueError, match="ratios keys"):
        mix_datasets(caption_dataset(names), text_dataset(), processor, ratios={"video": 1.0})
    numbers = datasets.Dataset.from_dict({"x": list(range(10))})
    assert resample(numbers, 0.5, seed=1)["x"] == resample(numbers, 0.5, seed=1)["x"]
    assert len(resample(numbers, 0.0)) == 0
    with pytest.raises(ValueError, match=">= 0"):
        resample(numbers, -1.0)


def test_unreadable_images_name_the_row(checkpoint_dir: Any, tmp_path: Path) -> None:
    processor = load_processor(checkpoint_dir("qwen2_vl"))
    names = write_images(tmp_path)
    names[2] = "https://example.invalid/x.png"
    with pytest.raises(ImageError, match="row 2"):
        mix_datasets(caption_dataset(names), None, processor, image_root=tmp_path)
    fallback = mix_datasets(caption_dataset(names), None, processor, image_root=tmp_path, default_image_size=(64, 64))
    reference = mix_datasets(caption_dataset(write_images(tmp_path)), None, processor, image_root=tmp_path)
    assert fallback["length"] == reference["length"]


def test_cli_mix_writes_a_dataset(checkpoint_dir: Any, tmp_path: Path) -> None:
    names = write_images(tmp_path)
    caption_dataset(names).to_json(tmp_path / "captions.jsonl")
    text_dataset().to_json(tmp_path / "text.jsonl")
    out = tmp_path / "mixed"
    argv = ["convert", "mix", "--captions", str(tmp_path / "captions.jsonl"), "--text", str(tmp_path / "text.jsonl")]
    argv += ["--processor", str(checkpoint_dir("qwen2_vl")), "-o", str(out), "--image-root", str(tmp_path)]
    assert main([*argv, "--ratio", "text=2"]) == 0
    mixed = datasets.load_from_disk(out)
    assert mixed["modality"].count("text") == 4 and mixed["modality"].count("image") == 3
    assert all(length > 0 for length in mixed["length"])
