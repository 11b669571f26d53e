"""``GenerationSettings``: how :func:`~vift_plugin.evaluation.evaluate` and
:func:`~vift_plugin.evaluation.sweep` prompt, generate and score, defined and checked in one place.

Imports nothing heavy (no torch), so ``vift eval --help`` can show its defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vift_plugin.evaluation.answers import DEFAULT_MARKERS, marker_list

if TYPE_CHECKING:
    from vift_plugin.evaluation.benchmark import BenchmarkItem
    from vift_plugin.generation import Messages

PromptBuilder = Callable[["BenchmarkItem"], "str | Messages"]
"""``prompt_builder(item)``: the user turn's text, or whole chat messages."""


def _positive_int(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an int >= 1 or None" if optional else "an int >= 1"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass
class GenerationSettings:
    """Prompting, greedy generation and answer extraction of a benchmark run, shared by ``evaluate`` and
    ``sweep`` (and ``vift eval`` / ``vift sweep``); checked on construction."""

    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy decoding length of each answer."})
    prompt_suffix: str | None = field(
        default=None,
        metadata={"help": "Text appended to every default prompt, e.g. an answer-format instruction."},
    )
    prompt_builder: PromptBuilder | None = field(
        default=None,
        metadata={
            "help": "prompt_builder(item) returns the text or whole chat messages of an item, in place of the "
            "default prompt (question, lettered options, prompt_suffix)."
        },
    )
    answer_markers: Iterable[str] | str | None = field(
        default=DEFAULT_MARKERS,
        metadata={
            "help": "Where the final answer starts, in the output and in references ('... answer : red'); "
            "None or () scores the whole output. Kept as a tuple of non-blank strings."
        },
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Larger images are downscaled to at most this many pixels."}
    )
    generate_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Extra model.generate() keywords (greedy by default: do_sample=False, num_beams=1)."},
    )
    progress: bool = field(default=True, metadata={"help": "A progress bar (when tqdm is installed)."})
    allow_remote_images: bool = field(
        default=False,
        metadata={"help": "Accept http(s) image URLs, fetched once before generation; default: a URL is refused."},
    )

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size)
        _positive_int("max_new_tokens", self.max_new_tokens)
        _positive_int("max_pixels", self.max_pixels, optional=True)
        if self.prompt_suffix is not None and not isinstance(self.prompt_suffix, str):
            raise TypeError(f"prompt_suffix must be a string or None, got {self.prompt_suffix!r}")
        if self.prompt_builder is not None and not callable(self.prompt_builder):
            raise TypeError(f"prompt_builder must be callable (item -> text or messages), got {self.prompt_builder!r}")
        markers = self.answer_markers
        if markers is not None and not isinstance(markers, (str, Iterable)):
            raise TypeError(f"answer_markers must be a string, an iterable of strings or None, got {markers!r}")
        self.answer_markers = marker_list(markers)
        if self.generate_kwargs is not None:
            if not isinstance(self.generate_kwargs, Mapping):
                raise TypeError(f"generate_kwargs must be a dict of generate() keywords, got {self.generate_kwargs!r}")
            self.generate_kwargs = dict(self.generate_kwargs)
        self.progress = bool(self.progress)
        self.allow_remote_images = bool(self.allow_remote_images)

    @property
    def markers(self) -> tuple[str, ...]:
        """``answer_markers`` as the tuple of non-blank markers scoring uses (empty: the whole output)."""
        return marker_list(self.answer_markers)

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)
