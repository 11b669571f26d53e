"""Fixtures for the training tests: toy caption/text records written once per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vift_plugin.testing.records import write_toy_records


@dataclass(frozen=True)
class ToyData:
    """``captions.jsonl`` and ``text.jsonl`` under ``root`` (images under ``root/images``)."""

    root: Path
    captions: Path
    texts: Path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyData:
    """12 coloured-square captions and 8 arithmetic text instructions."""
    root = tmp_path_factory.mktemp("toy")
    captions, texts = write_toy_records(root, captions=12, texts=8)
    return ToyData(root, captions, texts)
