"""Answer extraction: what a model's output (or a reference) answers, before any scoring.

A text is reduced to a *candidate*: the text after the LAST answer marker (``answer:``, ``answer :``
or ``the answer is`` by default), or the whole text when no marker is present. Open answers are
compared after :func:`normalize_answer`; multiple-choice candidates name a choice by letter (``B``,
``(b)``, ``b.``) or by the option's text (:func:`extract_choice`). Below both the benchmark reader,
which checks every reference names one of its choices, and :mod:`vift_plugin.evaluation.scoring`.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Sequence

LETTERS = string.ascii_uppercase
Answer = str | int | float | list[str]
"""A reference answer: text, a 0-based choice index, a number, or several accepted texts."""

DEFAULT_MARKERS: tuple[str, ...] = ("answer:", "answer :", "the answer is")

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation + "“”‘’«»…") + "]")
_SPACES = re.compile(r"\s+")
_LEADING = re.compile(r"^[\s:：\-–—=>]+")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation and articles removed, whitespace collapsed.

    ``"The top-left."``, ``"top left ."`` and ``" Top  Left"`` all become ``"top left"``.
    """
    text = _PUNCTUATION.sub(" ", str(text).lower())
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _marker_pattern(marker: str) -> str:
    """A marker as a regex: case-insensitive via the caller, any whitespace run matching any other,
    optional whitespace between a word and punctuation (``answer:`` also matches ``answer :``)."""
    parts: list[str] = []
    previous = ""
    for char in marker.strip():
        if char.isspace():
            if previous and not previous.isspace():
                parts.append(r"\s+")
        else:
            if previous and not previous.isspace() and previous.isalnum() != char.isalnum():
                parts.append(r"\s*")
            parts.append("[:：]" if char == ":" else re.escape(char))
        previous = char
    pattern = "".join(parts)
    if marker.strip()[:1].isalnum():
        pattern = r"(?<!\w)" + pattern
    return pattern


def marker_list(markers: Iterable[str] | str | None) -> tuple[str, ...]:
    """``markers`` as a tuple of non-blank strings (a single string is one marker)."""
    if isinstance(markers, str):
        markers = [markers]
    return tuple(m for m in markers or () if isinstance(m, str) and m.strip())


@functools.lru_cache(maxsize=64)
def _compile(markers: tuple[str, ...]) -> re.Pattern[str] | None:
    patterns = sorted({_marker_pattern(m) for m in markers}, key=len, reverse=True)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def compile_markers(markers: Iterable[str] | str | None) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any of ``markers`` (None when there are none)."""
    return _compile(marker_list(markers))


def extract_answer(text: str, markers: Iterable[str] | str | None = DEFAULT_MARKERS) -> tuple[str, bool]:
    """``(candidate, marker_found)``: the first non-empty line after the last marker, or all of ``text``.

    Leading colons or dashes after the marker are dropped (``the answer is: red`` gives ``red``).
    """
    pattern = compile_markers(markers)
    text = str(text)
    last = None
    if pattern is not None:
        for match in pattern.finditer(text):
            last = match
    if last is None:
        return text.strip(), False
    rest = _LEADING.sub("", text[last.end() :])
    for line in rest.splitlines():
        if line.strip():
            return line.strip(), True
    return "", True


_BARE_LETTER = re.compile(r"^\s*(?:option|choice)?\s*[\(\[]?\s*([a-z])\s*[\)\]]?\s*[.:,;]?\s*$", re.IGNORECASE)
_LEADING_LETTER = re.compile(
    r"^\s*(?:(?:option|choice)\s+)?(?:[\(\[]\s*([a-z])\s*[\)\]]|([a-z])\s*[\).:])(?:\s|$)", re.IGNORECASE
)
_OPTION_WORD = re.compile(r"^\s*(?:option|choice)\s+([a-z])\b", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"[\(\[]\s*([A-Za-z])\s*[\)\]]")
_MARKED_LETTER = re.compile(r"(?<![\w'])([A-Z])(?:[\).:](?!\w)|(?=\s*$))")


def _letter_index(letter: str, count: int) -> int | None:
    index = LETTERS.index(letter.upper())
    return index if index < count else None


def _unique(indices: Iterable[int | None]) -> int | None:
    found = {i for i in indices if i is not None}
    return found.pop() if len(found) == 1 else None


def _phrase_in(phrase: str, text: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def extract_choice(text: str, choices: Sequence[str]) -> int | None:
    """The 0-based index of the option ``text`` names, or None when none (or several) are named.

    In order: the option's whole text; a bare letter (``B``, ``(b)``, ``b.``, ``option B``); a leading
    letter (``B. red``, ``(b) red``); exactly one option text inside the answer (the longest when one
    contains another); exactly one letter in brackets or marked (``(C)``, ``C.``) anywhere.
    """
    count = len(choices)
    normal = normalize_answer(text)
    options = [normalize_answer(c) for c in choices]
    if normal and normal in options and options.count(normal) == 1:
        return options.index(normal)
    for pattern in (_BARE_LETTER, _LEADING_LETTER, _OPTION_WORD):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g)
            return _letter_index(letter, count)
    named = [i for i, option in enumerate(options) if _phrase_in(option, normal)]
    named = [i for i in named if not any(j != i and options[i] in options[j] for j in named)]
    if len(named) == 1:
        return named[0]
    if named:
        return None
    letters = _unique(_letter_index(m, count) for m in _PAREN_LETTER.findall(text))
    if letters is not None:
        return letters
    return _unique(_letter_index(m, count) for m in _MARKED_LETTER.findall(text))


def gold_choice(answer: Answer, choices: Sequence[str], markers: Iterable[str] | None = DEFAULT_MARKERS) -> int | None:
    """The reference choice index of a multiple-choice answer: a 0-based index, a letter or a text."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer if 0 <= answer < len(choices) else None
    if isinstance(answer, list):
        return _unique(gold_choice(a, choices, markers) for a in answer)
    if not isinstance(answer, str):
        return None
    candidate, _ = extract_answer(answer, markers)
    return extract_choice(candidate, choices)


def gold_answers(answer: Answer, markers: Iterable[str] | None = DEFAULT_MARKERS) -> list[str]:
    """The accepted reference answers, each reduced to the text after its last marker."""
    answers = answer if isinstance(answer, list) else [answer]
    return [extract_answer(str(a), markers)[0] for a in answers]
