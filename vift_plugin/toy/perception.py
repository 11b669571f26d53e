"""Does a stage's model look at the picture? Caption loss with the right and with shuffled images, and
how many different captions it writes for the test pictures.

A captioner that ignores the image pays the same loss whichever picture it gets and writes the same few
captions for every picture; one that sees pays more when each caption is paired with another
caption's picture, and writes as many captions as there are scenes.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vift_plugin.toy.data import CAPTION_REQUEST


@dataclass(frozen=True)
class Perception:
    """One stage's image reliance: mean caption loss per token (right vs shuffled images), and the
    captions it writes for the test pictures (exact match, distinct count)."""

    stage: str
    loss_right_images: float
    loss_shuffled_images: float
    caption_exact_match: float
    distinct_captions: int
    pictures: int

    @property
    def shuffle_penalty(self) -> float:
        return self.loss_shuffled_images - self.loss_right_images

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shuffle_penalty": self.shuffle_penalty}


def caption_losses(
    model: Any, processor: Any, records: list[dict[str, Any]], image_root: Path, batch_size: int = 32
) -> tuple[float, float]:
    """Mean per-token caption loss of ``records`` with their own images, then with each record's image
    swapped for the next record's (a fixed derangement, so both means cover the same captions)."""
    import torch

    from vift_plugin.data.collator import ViFTDataCollator
    from vift_plugin.generation import to_model

    if len(records) < 2:
        raise ValueError("image reliance needs at least two caption records")
    collator = ViFTDataCollator(processor, image_root=image_root)
    shuffled = [{**row, "images": records[(i + 1) % len(records)]["images"]} for i, row in enumerate(records)]
    means = []
    for rows in (records, shuffled):
        total, tokens = 0.0, 0
        for start in range(0, len(rows), batch_size):
            batch = to_model(collator(rows[start : start + batch_size]), model)
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            total += float(losses)
            tokens += int((labels != -100).sum())
        means.append(total / max(1, tokens))
    return means[0], means[1]


def caption_test_pictures(
    model: Any,
    processor: Any,
    world: dict[str, Path],
    pictures: int | None = None,
    *,
    batch_size: int = 50,
    max_new_tokens: int = 40,
) -> Any:
    """The ``EvalResult`` of captioning the first ``pictures`` test pictures (all when None) under the caption
    request, scored against their captions (whole output, no answer marker)."""
    from vift_plugin.evaluation import GenerationSettings, evaluate

    with open(world["test"], encoding="utf-8") as handle:
        test = [json.loads(line) for line in itertools.islice(handle, pictures)]
    items = [{"id": r["id"], "image": r["image"], "question": CAPTION_REQUEST, "answer": r["caption"]} for r in test]
    return evaluate(
        model,
        processor,
        items,
        ("plain",),
        settings=GenerationSettings(
            batch_size=batch_size, max_new_tokens=max_new_tokens, answer_markers=None, progress=False
        ),
        image_root=world["test"].parent,
    )


def measure_perception(
    stage: str,
    model: Any,
    processor: Any,
    world: dict[str, Path],
    *,
    records: int = 128,
    pictures: int = 200,
    batch_size: int = 50,
    max_new_tokens: int = 40,
    captioned: Any = None,
) -> Perception:
    """:class:`Perception` of ``model``: losses on the first ``records`` training captions, captions of the
    first ``pictures`` test pictures (taken from ``captioned``, a :func:`caption_test_pictures` result over at
    least as many pictures with the same ``batch_size``, when the caller has one)."""
    root = world["captions"].parent
    with open(world["captions"], encoding="utf-8") as handle:
        rows = [json.loads(line) for line, _ in zip(handle, range(records), strict=False)]
    right, shuffled = caption_losses(model, processor, rows, root)
    if captioned is None:
        captioned = caption_test_pictures(
            model, processor, world, pictures, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
    scores = captioned.scores["plain"][:pictures]
    captions = [score.prediction for score in scores]
    exact = sum(score.correct for score in scores) / max(1, len(scores))
    return Perception(stage, right, shuffled, exact, len(set(captions)), len(captions))


def perception_table(rows: list[Perception]) -> str:
    """Markdown: one line per stage."""
    lines = [
        "| stage | caption loss, right images | caption loss, shuffled images | caption exact match "
        "| distinct captions |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.stage} | {row.loss_right_images:.3f} | {row.loss_shuffled_images:.3f} | "
            f"{100 * row.caption_exact_match:.1f}% | {row.distinct_captions} of {row.pictures} |"
        )
    return "\n".join(lines) + "\n"
