"""Small benchmark files with real PNG images, for the evaluation tests."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models run fastest on one thread, above all on a busy machine (threads spin-wait)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


def write_images(folder: Path) -> list[str]:
    """One small PNG per colour under ``folder/images``; their paths relative to ``folder``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for index, colour in enumerate(COLOURS):
        name = f"images/{colour}.png"
        Image.new("RGB", (32 + 8 * index, 40), colour).save(folder / name)
        names.append(name)
    return names


def write_jsonl(path: Path, rows: Sequence[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def colour_rows(folder: Path, answers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Open colour questions (type ``colour``/``shade`` alternately), one per image."""
    images = write_images(folder)
    return [
        {
            "id": f"q{i}",
            "image": image,
            "question": "What colour is the square?" if i % 2 == 0 else "Name the colour of this shape.",
            "answer": answers[i] if answers else COLOURS[i],
            "type": "colour" if i % 2 == 0 else "shade",
        }
        for i, image in enumerate(images)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
