"""Small offline training records (coloured-square captions, arithmetic text instructions) for tests."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image

from vift_plugin.data.schema import caption_messages, text_part

COLOURS = ("red", "green", "blue", "yellow", "white", "black")


def write_toy_records(
    root: str | os.PathLike[str], captions: int = 24, texts: int = 16, seed: int = 0
) -> tuple[Path, Path]:
    """Write images and ``captions.jsonl`` / ``text.jsonl`` chat records under ``root``; return the two files.

    Captions name the colour of a square picture; text records answer ``What is N plus M?``. Image
    paths are relative to ``root``.
    """
    rng = random.Random(seed)
    folder = Path(root)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    caption_rows = []
    for i in range(captions):
        colour = COLOURS[i % len(COLOURS)]
        size = rng.choice([(28, 28), (56, 28), (56, 56)])
        name = f"images/{i:04d}.png"
        Image.new("RGB", size, colour).save(folder / name)
        query = "Describe the image."
        caption_rows.append(
            {"id": f"c{i}", "messages": caption_messages(query, f"A {colour} square."), "images": [name]}
        )
    text_rows = []
    for i in range(texts):
        a, b = rng.randrange(10), rng.randrange(10)
        messages = [
            {"role": "user", "content": [text_part(f"What is {a} plus {b}?")]},
            {"role": "assistant", "content": [text_part(str(a + b))]},
        ]
        text_rows.append({"id": f"t{i}", "messages": messages, "images": []})
    caption_file, text_file = folder / "captions.jsonl", folder / "text.jsonl"
    for file, rows in ((caption_file, caption_rows), (text_file, text_rows)):
        file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return caption_file, text_file
