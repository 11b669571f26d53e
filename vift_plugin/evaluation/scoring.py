"""Scoring generated answers: exact match and multiple choice over the candidates that
:mod:`vift_plugin.evaluation.answers` extracts, and the summaries of a run.

Open questions are right when the normalised candidate equals a normalised reference; multiple-choice
questions when the choice identified in the candidate is the reference choice. ``formatted`` says the
output followed the expected format: a marker was present (when markers are used), or for multiple
choice a choice was identified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vift_plugin.evaluation.answers import (
    DEFAULT_MARKERS,
    LETTERS,
    extract_answer,
    extract_choice,
    gold_answers,
    gold_choice,
    marker_list,
    normalize_answer,
)
from vift_plugin.evaluation.benchmark import BenchmarkItem


@dataclass
class Score:
    """One scored prediction."""

    id: str
    prediction: str
    extracted: str
    correct: bool
    formatted: bool
    answer: Any
    choice: str | None = None
    type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_prediction(
    prediction: str, item: BenchmarkItem, markers: Iterable[str] | str | None = DEFAULT_MARKERS
) -> Score:
    """Score ``prediction`` (the decoded new tokens) against ``item``.

    With no markers (``None`` or empty) the whole output is the candidate and an open answer counts
    as formatted when it is not empty.
    """
    markers = marker_list(markers)
    candidate, marked = extract_answer(prediction, markers)
    if item.choices:
        index = extract_choice(candidate, item.choices)
        gold = gold_choice(item.answer, item.choices, markers)
        return Score(
            id=item.id,
            prediction=prediction,
            extracted=candidate,
            correct=index is not None and index == gold,
            formatted=index is not None,
            answer=item.answer,
            choice=None if index is None else LETTERS[index],
            type=item.type,
        )
    normal = normalize_answer(candidate)
    correct = bool(normal) and any(normal == normalize_answer(g) for g in gold_answers(item.answer, markers))
    formatted = (marked if markers else True) and bool(candidate)
    return Score(
        id=item.id,
        prediction=prediction,
        extracted=candidate,
        correct=correct,
        formatted=formatted,
        answer=item.answer,
        type=item.type,
    )


def _rates(scores: Sequence[Score]) -> dict[str, Any]:
    n = len(scores)
    correct = sum(s.correct for s in scores)
    formatted = sum(s.formatted for s in scores)
    return {
        "n": n,
        "correct": correct,
        "formatted": formatted,
        "accuracy": correct / n if n else 0.0,
        "format_rate": formatted / n if n else 0.0,
    }


def summarize(scores: Sequence[Score]) -> dict[str, Any]:
    """``{n, correct, formatted, accuracy, format_rate, by_type: {type: {...}}}`` (``by_type`` only when
    some item has a ``type``; items without one are grouped under ``"(none)"``)."""
    summary = _rates(scores)
    if any(s.type is not None for s in scores):
        groups: dict[str, list[Score]] = {}
        for s in scores:
            groups.setdefault(s.type if s.type is not None else "(none)", []).append(s)
        summary["by_type"] = {kind: _rates(group) for kind, group in sorted(groups.items())}
    return summary


def score_all(
    predictions: Sequence[str], items: Sequence[BenchmarkItem], markers: Iterable[str] | str | None = DEFAULT_MARKERS
) -> list[Score]:
    markers = marker_list(markers)
    return [score_prediction(p, item, markers) for p, item in zip(predictions, items, strict=True)]


def summary_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`summarize` over ``predictions.jsonl``-style rows of one mode."""
    return summarize(
        [
            Score(
                id=str(r["id"]),
                prediction=r.get("prediction", ""),
                extracted=r.get("extracted", ""),
                correct=bool(r["correct"]),
                formatted=bool(r["formatted"]),
                answer=r.get("answer"),
                type=r.get("type"),
            )
            for r in rows
        ]
    )
