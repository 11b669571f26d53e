"""Shared fixtures: tiny offline checkpoints of every family, written once per test session."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModelForImageTextToText  # noqa: E402

from vift_plugin import load_processor  # noqa: E402
from vift_plugin.testing import FAMILIES, make_tiny_checkpoint  # noqa: E402
from vift_plugin.testing.families import family_unavailable  # noqa: E402

ALL_FAMILIES = sorted(FAMILIES)

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where torch sees no CUDA device, so the suite passes on CPU, and
    the tests of a family this transformers cannot build without torchvision (the floor-version run)."""
    unavailable = {name: reason for name in FAMILIES if (reason := family_unavailable(name))}
    gpu = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(gpu)
        for name, reason in unavailable.items():
            if re.search(rf"[\[-]{name}[\]-]", item.name):
                item.add_marker(pytest.mark.skip(reason=f"{name}: {reason}"))


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``checkpoint_dir(family)``: the path of a tiny checkpoint, written on first use."""
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny_checkpoint(family, root / family)
        return made[family]

    return get


@pytest.fixture(params=ALL_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def tiny(checkpoint_dir: Any, family: str) -> tuple[Any, Any]:
    """A freshly loaded (model, processor) of ``family``, loaded from disk like a real checkpoint."""
    path = checkpoint_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return model, load_processor(path)


def image(width: int, height: int, colour: str = "red") -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def conversation(question: str, width: int = 48, height: int = 64, colour: str = "red") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image(width, height, colour)}, {"type": "text", "text": question}],
        }
    ]


def encode(processor: Any, conversations: list[list[dict[str, Any]]]) -> Any:
    """The processor's batch encoding of ``conversations`` with a generation prompt, left padded."""
    processor.tokenizer.padding_side = "left"
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
