"""Scoring: normalisation, answer markers, multiple choice, and summaries checked against hand counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.evaluation.conftest import write_images, write_jsonl
from vift_plugin.evaluation import (
    extract_answer,
    extract_choice,
    normalize_answer,
    read_benchmark,
    score_prediction,
    summarize,
)
from vift_plugin.evaluation.answers import gold_choice
from vift_plugin.evaluation.evaluator import summary_markdown
from vift_plugin.evaluation.scoring import Score, score_all

Scored = tuple[list[Any], list[Score]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The top-left.", "top left"),
        ("top left .", "top left"),
        ("  Top   LEFT ", "top left"),
        ("an apple, a pear", "apple pear"),
        ("theatre", "theatre"),  # articles only as whole words
        ("3.5", "3 5"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "markers", "expected"),
    [
        ("The answer is red.", None, ("red.", True)),
        ("because ... answer : top left .", None, ("top left .", True)),
        ("Answer: blue\nthen again, answer: green", None, ("green", True)),
        ("answer:\n\n  red\nexplanation follows", None, ("red", True)),
        ("The answer is: (B)", None, ("(B)", True)),
        ("just red", None, ("just red", False)),
        ("reanswer: red", None, ("reanswer: red", False)),
        ("Answer：red", None, ("red", True)),
        ("Final: red. answer: blue", ["final:"], ("red. answer: blue", True)),
        ("answer: red", [], ("answer: red", False)),
        ("so answer:", None, ("", True)),
    ],
)
def test_extract_answer_takes_the_text_after_the_last_marker(
    text: str, markers: list[str] | None, expected: tuple[str, bool]
) -> None:
    if markers is None:
        assert extract_answer(text) == expected
    else:
        assert extract_answer(text, markers) == expected


CHOICES = ["circle", "dark red circle", "square", "triangle"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        ("(c)", 2),
        ("d.", 3),
        ("option A", 0),
        ("C. square", 2),
        ("(b) dark red circle", 1),
        ("square", 2),
        ("It is a triangle.", 3),
        ("a dark red circle", 1),  # the longer option wins over "circle" inside it
        ("square or triangle", None),  # two options named: ambiguous
        ("The correct option is (D).", 3),
        ("I think it's B", 1),
        ("E", None),  # past the last option
        ("no idea", None),
    ],
)
def test_extract_choice(text: str, expected: int | None) -> None:
    assert extract_choice(text, CHOICES) == expected


def test_gold_choice_accepts_letters_indices_texts_and_marked_answers() -> None:
    assert gold_choice("B", CHOICES) == 1
    assert gold_choice(2, CHOICES) == 2
    assert gold_choice("triangle", CHOICES) == 3
    assert gold_choice("count the sides: three, answer : D", CHOICES) == 3
    assert gold_choice(7, CHOICES) is None
    assert gold_choice("hexagon", CHOICES) is None


# (row, prediction, correct, formatted): every verdict reasoned by hand.
CASES = [
    ({"id": "c1", "question": "Colour?", "answer": "red", "type": "colour"}, "The answer is Red.", True, True),
    (
        {"id": "p1", "question": "Where?", "answer": "top left", "type": "position"},
        "I look at the image . answer : top left .",
        True,
        True,
    ),
    ({"id": "c2", "question": "Colour?", "answer": "blue", "type": "colour"}, "blue", True, False),
    (
        {"id": "c3", "question": "Colour?", "answer": "green", "type": "colour"},
        "answer: red\nhmm, answer: yellow",
        False,
        True,
    ),
    (
        {"id": "s1", "question": "Shape?", "choices": ["circle", "square", "triangle"], "answer": "B", "type": "shape"},
        "answer: (b)",
        True,
        True,
    ),
    (
        {"id": "s2", "question": "Shape?", "choices": ["circle", "square", "triangle"], "answer": "triangle"},
        "It is a triangle.",
        True,
        True,
    ),
    (
        {"id": "s3", "question": "Shape?", "choices": ["circle", "square", "triangle"], "answer": 0, "type": "shape"},
        "no idea",
        False,
        False,
    ),
    (
        {"id": "n1", "question": "How many?", "answer": "there are three apples. answer : 3", "type": "count"},
        "3",
        True,
        False,
    ),
    (
        {"id": "n2", "question": "How many?", "answer": ["two", "2"], "type": "count"},
        "The answer is 2",
        True,
        True,
    ),
]


@pytest.fixture
def scored(tmp_path: Path) -> Scored:
    image = write_images(tmp_path)[0]
    path = write_jsonl(tmp_path / "bench.jsonl", [{**row, "image": image} for row, *_ in CASES])
    items = read_benchmark(path)
    return items, score_all([prediction for _, prediction, *_ in CASES], items)


def test_each_prediction_is_scored_as_reasoned(scored: Scored) -> None:
    items, scores = scored
    for (row, prediction, correct, formatted), score in zip(CASES, scores, strict=True):
        assert (score.id, score.correct, score.formatted) == (row["id"], correct, formatted), prediction
    assert [s.choice for s in scores[4:7]] == ["B", "C", None]
    assert scores[1].extracted == "top left ."


def test_summary_overall_and_per_type_match_hand_counts(scored: Scored) -> None:
    _, scores = scored
    summary = summarize(scores)
    assert (summary["n"], summary["correct"], summary["formatted"]) == (9, 7, 6)
    assert summary["accuracy"] == pytest.approx(7 / 9)
    assert summary["format_rate"] == pytest.approx(6 / 9)
    by_type = {kind: (v["n"], v["correct"], v["formatted"]) for kind, v in summary["by_type"].items()}
    assert by_type == {
        "colour": (3, 2, 2),
        "position": (1, 1, 1),
        "shape": (2, 1, 1),
        "count": (2, 2, 1),
        "(none)": (1, 1, 1),
    }
    markdown = summary_markdown({"fused": summary})
    assert "| fused | 77.8% | 66.7% | 9 |" in markdown
    assert "| colour | 66.7% | 66.7% | 3 |" in markdown


def test_without_markers_the_whole_output_is_scored(scored: Scored) -> None:
    items, _ = scored
    plain = score_prediction("The answer is Red.", items[0], None)
    assert (plain.correct, plain.formatted, plain.extracted) == (False, True, "The answer is Red.")
    custom = score_prediction("Final answer => red", items[0], ["final answer =>"])
    assert (custom.correct, custom.formatted, custom.extracted) == (True, True, "red")
