"""The shapes-world training and evaluation files, written as the chat records the rest of the plugin reads.

``write_world(root, sizes)`` writes under ``root``:

- ``captions.jsonl``: image + caption request -> caption (visual perception; ViFT trains on it);
- ``text.jsonl``: scene *text* + question -> ``answer: X`` (``direct``) or the scene restated, then
  ``answer: X`` (``restate``) (task solving; ViFT trains on it). The scene text sits where the image sits
  in the visual prompts, which are laid out as ``vift eval`` lays out every item: image, then question;
- ``scene_texts.jsonl``: scene *text* + caption request -> the same text (repeating a description given as
  text, something every pretrained LLM can do; the demo's stage 0 teaches it along with ``text.jsonl``);
- ``visual_instructions.jsonl``: image + question -> ``answer: X`` (the baseline's data; ViFT never sees it);
- ``test.jsonl`` and ``dev.jsonl``: held-out visual QA over scenes absent from every training file and
  from each other, in ``vift eval`` format (``dev`` is for choosing fusion weights with ``vift sweep``);
- ``images/``: the PNGs.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vift_plugin.data.schema import caption_messages, image_part, text_part
from vift_plugin.data.writers import atomic_output
from vift_plugin.toy.world import Question, Scene, pick_question, scenes

CAPTION_REQUEST = "describe the scene."
ANSWER_MARKER = "answer:"
FACTS_MARKER = "scene:"


@dataclass(frozen=True)
class WorldSizes:
    """How many records of each kind ``write_world`` makes."""

    captions: int = 6000
    texts: int = 16000
    scene_texts: int = 4000
    visual_instructions: int = 6000
    test: int = 400
    dev: int = 100

    @classmethod
    def quick(cls) -> WorldSizes:
        return cls(captions=800, texts=2400, scene_texts=800, visual_instructions=800, test=120, dev=60)


def question_prompt(question: Question) -> str:
    return f"question: {question.text}"


def qa_messages(question: Question, scene: str | None, response: str) -> list[dict[str, Any]]:
    """The scene (the image when ``scene`` is None, else its text), then the question."""
    first = image_part() if scene is None else text_part(scene)
    content = [first, text_part(question_prompt(question))]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": [text_part(response)]}]


RECIPES = ("direct", "restate")


def text_instruction(scene: Scene, question: Question, recipe: str = "direct") -> dict[str, Any]:
    """Scene words + question -> ``answer: X`` (``direct``), or ``scene:`` + the scene restated +
    ``answer: X`` (``restate``)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    caption = scene.describe()
    response = f"{ANSWER_MARKER} {question.answer}"
    if recipe == "restate":
        response = f"{FACTS_MARKER} {caption} {response}"
    return {"messages": qa_messages(question, caption, response), "images": []}


def scene_text(scene: Scene) -> dict[str, Any]:
    """Scene words + caption request -> the scene words: describing a scene given as text."""
    caption = scene.describe()
    messages = [
        {"role": "user", "content": [text_part(caption), text_part(CAPTION_REQUEST)]},
        {"role": "assistant", "content": [text_part(caption)]},
    ]
    return {"messages": messages, "images": []}


def visual_instruction(image: str, question: Question) -> dict[str, Any]:
    """Image + question -> ``answer: X``: the baseline's visual instruction."""
    return {"messages": qa_messages(question, None, f"{ANSWER_MARKER} {question.answer}"), "images": [image]}


def write_world(
    root: str | os.PathLike[str], sizes: WorldSizes | None = None, seed: int = 0, recipe: str = "direct"
) -> dict[str, Path]:
    """Write the shapes world under ``root`` (deterministic in ``seed``); return the files by name."""
    sizes = sizes or WorldSizes()
    folder = Path(root)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def save(scene: Scene, name: str) -> str:
        path = f"images/{name}.png"
        scene.render().save(folder / path)
        return path

    held_out: set[tuple[tuple[int, str, str], ...]] = set()

    def visual_qa(name: str, count: int) -> list[dict[str, Any]]:
        qa_rows = []
        for i, scene in zip(range(count), scenes(seed + 1, exclude=set(held_out)), strict=False):
            held_out.add(scene.key)
            question = pick_question(scene, rng)
            qa_rows.append(
                {
                    "id": f"{name}-{i}",
                    "image": save(scene, f"{name}-{i}"),
                    "question": question_prompt(question),
                    "answer": question.answer,
                    "type": question.type,
                    "caption": scene.describe(),
                }
            )
        return qa_rows

    test_rows = visual_qa("test", sizes.test)
    dev_rows = visual_qa("dev", sizes.dev)
    train = scenes(seed + 2, exclude=held_out)
    caption_rows = []
    for i, scene in zip(range(sizes.captions), train, strict=False):
        caption_rows.append(
            {
                "id": f"cap-{i}",
                "messages": caption_messages(CAPTION_REQUEST, scene.describe()),
                "images": [save(scene, f"cap-{i}")],
            }
        )
    text_rows = []
    for i, scene in zip(range(sizes.texts), train, strict=False):
        text_rows.append({"id": f"text-{i}", **text_instruction(scene, pick_question(scene, rng), recipe)})
    scene_text_rows = [
        {"id": f"scene-text-{i}", **scene_text(scene)}
        for i, scene in zip(range(sizes.scene_texts), train, strict=False)
    ]
    visual_rows = []
    for i, scene in zip(range(sizes.visual_instructions), train, strict=False):
        row = visual_instruction(save(scene, f"vqa-{i}"), pick_question(scene, rng))
        visual_rows.append({"id": f"vqa-{i}", **row})
    files = {
        "captions": folder / "captions.jsonl",
        "text": folder / "text.jsonl",
        "scene_texts": folder / "scene_texts.jsonl",
        "visual_instructions": folder / "visual_instructions.jsonl",
        "test": folder / "test.jsonl",
        "dev": folder / "dev.jsonl",
    }
    for name, rows in (
        ("captions", caption_rows),
        ("text", text_rows),
        ("scene_texts", scene_text_rows),
        ("visual_instructions", visual_rows),
        ("test", test_rows),
        ("dev", dev_rows),
    ):
        with atomic_output(files[name]) as handle:
            handle.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    (folder / "sizes.json").write_text(
        json.dumps({"seed": seed, "recipe": recipe, **asdict(sizes)}, sort_keys=True), encoding="utf-8"
    )
    return files
