"""Shared helpers for the integration tests: the integration modules (and the re-export files under
``patches/``, loaded by path), and checking that a sampler's optimizer steps are single-modality on
every rank, the way ``accelerate`` shards them."""

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


INTEGRATIONS = ("vift_plugin.integrations.llava", "vift_plugin.integrations.llamafactory")


@pytest.fixture(scope="session")
def vift_llava() -> ModuleType:
    return importlib.import_module("vift_plugin.integrations.llava")


@pytest.fixture(scope="session")
def vift_llamafactory() -> ModuleType:
    return importlib.import_module("vift_plugin.integrations.llamafactory")


def load_patch_file(name: str, relative: str) -> ModuleType:
    """A re-export file under ``patches/`` loaded by its path, the way users import it (not as a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_leftover_patches(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must remove what it applied; fail (and clean up) otherwise."""
    yield
    leftovers = []
    for name in INTEGRATIONS:
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


def recording_collate(
    collator: Callable[[list[Any]], dict[str, Any]],
    seen: list[str],
    prepare: Callable[[list[dict[str, Any]]], list[Any]] = list,
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A data collator: ``collator(prepare(features))``, appending each batch's modality to ``seen``."""
    from vift_plugin.training.trainer import batch_modality

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(prepare(features))
        seen.append(batch_modality(batch))
        return batch

    return collate


def tiny_run_arguments(root: Path, **overrides: Any) -> dict[str, Any]:
    """Training-argument keywords for a short CPU run under ``root/run``: per-device batch 2, accumulation 2,
    constant lr 1e-3, no saving, reporting or workers; ``overrides`` added or replaced."""
    return {
        "output_dir": str(root / "run"),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "remove_unused_columns": False,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **overrides,
    }


def assert_trained_grouped(trainer: Any, seen: Sequence[str], steps: int, rates: dict[str, float]) -> None:
    """``steps`` optimizer steps ran, each over 2 single-modality micro-batches, at per-role ``rates``."""
    assert trainer.state.global_step == steps
    grouped = [list(seen[i : i + 2]) for i in range(0, 2 * steps, 2)]
    assert all(len(set(step)) == 1 for step in grouped), grouped
    assert {g["role"]: g["lr"] for g in trainer.optimizer.param_groups} == rates


def lr_by_name(trainer: Any) -> dict[str, tuple[float, float, str | None]]:
    """``name -> (lr, weight_decay, role)`` from the optimizer's groups (each parameter in exactly one)."""
    group_of = {}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            assert id(parameter) not in group_of, "a parameter is in two groups"
            group_of[id(parameter)] = (group["lr"], group["weight_decay"], group.get("role"))
    return {name: group_of[id(p)] for name, p in trainer.model.named_parameters() if id(p) in group_of}


def assert_role_groups(
    trainer: Any, model_type: str, expected_lr: dict[str, float], weight_decay: float
) -> dict[str, tuple[float, float, str | None]]:
    """Each grouped parameter has its ``parameter_role``, that role's lr and decay; returns :func:`lr_by_name`."""
    from vift_plugin.training.roles import parameter_role

    rates = lr_by_name(trainer)
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    for name, (lr, decay_rate, role) in rates.items():
        assert role == parameter_role(name, model_type)
        assert lr == expected_lr[role], name
        assert decay_rate == (weight_decay if name in decay else 0.0), name
    return rates
