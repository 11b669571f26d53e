"""The caption requests a caption is paired with: brief or detailed by caption length, picked by seed."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

from vift_plugin.data.files import read_json_document

BRIEF_QUERIES = (
    "Describe the image briefly.",
    "Give a short caption for this picture.",
    "What does this image show? Answer in one sentence.",
    "Write a concise description of the photo.",
    "Summarise the picture in a few words.",
    "Provide a brief caption.",
    "In one line, what is in this image?",
    "Caption this image.",
    "Tell me briefly what you see.",
    "Write a one-sentence summary of the image.",
)

DETAILED_QUERIES = (
    "Describe the image in detail.",
    "Give a thorough description of everything visible in this picture.",
    "What is happening in this image? Describe it carefully, including the objects, colours and layout.",
    "Write a detailed caption for the photo.",
    "Explain the contents of the image as completely as you can.",
    "Describe this scene in depth.",
    "Provide a comprehensive description of the picture.",
    "Walk me through the details of this image.",
)


@dataclass(frozen=True)
class QueryPool:
    """User-turn requests for captions; captions longer than ``detailed_min_words`` get a detailed one."""

    brief: tuple[str, ...] = field(default=BRIEF_QUERIES, metadata={"help": "Requests for short captions."})
    detailed: tuple[str, ...] = field(default=DETAILED_QUERIES, metadata={"help": "Requests for long captions."})
    detailed_min_words: int = field(
        default=30, metadata={"help": "Captions with at least this many words get a detailed request."}
    )

    def __post_init__(self) -> None:
        for name in ("brief", "detailed"):
            pool = getattr(self, name)
            valid = isinstance(pool, (list, tuple)) and pool and all(isinstance(q, str) and q.strip() for q in pool)
            if not valid:
                raise ValueError(f"QueryPool.{name} must be a non-empty list of non-empty strings, got {pool!r}.")
            object.__setattr__(self, name, tuple(pool))
        if isinstance(self.detailed_min_words, bool) or not isinstance(self.detailed_min_words, int):
            raise ValueError(f"detailed_min_words must be a whole number, got {self.detailed_min_words!r}.")
        if self.detailed_min_words < 1:
            raise ValueError(f"detailed_min_words must be >= 1, got {self.detailed_min_words}.")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> QueryPool:
        """Read ``{"brief": [...], "detailed": [...], "detailed_min_words": N}`` (any key optional)."""
        data = read_json_document(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'brief' and/or 'detailed' lists.")
        unknown = set(data) - {"brief", "detailed", "detailed_min_words"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected brief, detailed, detailed_min_words.")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def pick(self, caption: str, key: str, seed: int) -> str:
        """The request for ``caption``; depends only on ``seed``, ``key`` (the row id) and the caption length.

        Words are counted as spaces + 1, which is what separates them in captions and is cheap.
        """
        pool = self.detailed if caption.count(" ") + 1 >= self.detailed_min_words else self.brief
        return pool[zlib.crc32(f"{seed}\x00{key}".encode()) % len(pool)]
