"""Shared helpers for the patch tests: loading the patch modules from ``patches/`` and checking that a
sampler's optimizer steps are single-modality on every rank, the way ``accelerate`` shards them."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from torch.utils.data import BatchSampler, Sampler

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def vift_llava() -> ModuleType:
    return _load("vift_llava", "patches/llava/vift_llava.py")


@pytest.fixture(scope="session")
def vift_llamafactory() -> ModuleType:
    return _load("vift_llamafactory", "patches/llama_factory/vift_llamafactory.py")


@pytest.fixture(autouse=True)
def _no_leftover_patches(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must remove what it applied; fail (and clean up) otherwise."""
    yield
    leftovers = []
    for name in ("vift_llava", "vift_llamafactory"):
        module = sys.modules.get(name)
        if module is not None:
            for handle in module.active_patches():
                leftovers.append(handle)
                handle.remove()
    assert not leftovers, f"{request.node.name} left patches applied: {leftovers}"


def rank_steps(sampler: Sampler[int], batch_size: int, world_size: int, accumulation: int) -> list[list[list[int]]]:
    """``steps[k][rank]``: the indices rank ``rank`` sees in optimizer step ``k`` (accelerate's sharding)."""
    from accelerate.data_loader import BatchSamplerShard

    per_rank = []
    for rank in range(world_size):
        shard = BatchSamplerShard(BatchSampler(sampler, batch_size, drop_last=False), world_size, rank)
        per_rank.append(list(shard))
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1, f"ranks got different numbers of batches: {counts}"
    steps = []
    for start in range(0, counts.pop(), accumulation):
        steps.append([[i for batch in batches[start : start + accumulation] for i in batch] for batches in per_rank])
    return steps


def assert_single_modality_steps(
    sampler: Sampler[int], modality_of: Callable[[int], str], batch_size: int, world_size: int, accumulation: int
) -> list[str]:
    """Every optimizer step is one modality on all ranks, each rank with full batches; returns step modalities."""
    steps = rank_steps(sampler, batch_size, world_size, accumulation)
    assert steps, "the sampler yielded no steps"
    kinds = []
    for k, step in enumerate(steps):
        for rank_indices in step:
            assert len(rank_indices) == batch_size * accumulation, f"step {k}: short rank shard {rank_indices}"
        found = {modality_of(i) for rank_indices in step for i in rank_indices}
        assert len(found) == 1, f"optimizer step {k} mixes modalities {found}: {step}"
        kinds.append(found.pop())
    return kinds


def write_caption_table(root: Path, count: int) -> Path:
    """``captions.jsonl`` of ``{"image", "caption"}`` rows over ``count`` real PNGs under ``root/images``."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    colours = ("red", "green", "blue", "yellow")
    rows = []
    for i in range(count):
        colour = colours[i % len(colours)]
        Image.new("RGB", (28 + 28 * (i % 2), 28), colour).save(root / "images" / f"{i:03d}.png")
        rows.append({"image": f"images/{i:03d}.png", "caption": f"A {colour} square."})
    path = root / "captions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_alpaca(root: Path, count: int) -> Path:
    """``text.json``: ``count`` Alpaca instructions (``What is a plus b?``)."""
    rows = [{"instruction": f"What is {i} plus {i + 1}?", "input": "", "output": str(2 * i + 1)} for i in range(count)]
    path = root / "text.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def signed_lengths(records: Sequence[dict[str, Any]]) -> list[int]:
    """LLaVA's ``modality_lengths``: words in the conversation, negative for text-only records."""
    out = []
    for record in records:
        words = sum(len(turn["value"].split()) for turn in record["conversations"])
        out.append(words if "image" in record else -words)
    return out
