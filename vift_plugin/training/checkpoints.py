"""Checkpoints a run can trust: which ones are complete, restoring full weights by the model's own
names, and saves that fail with one clear error.

Why not leave this to ``Trainer``: transformers saves a model under its *checkpoint* key names (for
Qwen2-VL ``visual.*``, the model's parameter is ``model.visual.*``) but ``Trainer`` resumes with a
plain ``load_state_dict`` on those names, so a run without LoRA resumed from its base weights with
only a "missing keys" log line. And ``resume_from_checkpoint=True`` picks the newest
``checkpoint-N`` folder even when a killed save left it holding only ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vift_plugin.loading import saved_model_problem

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"
INCOMPLETE_SUFFIX = ".incomplete"


class CheckpointSaveError(OSError):
    """Saving a checkpoint failed (most often a full disk); the message names the folder and the fix."""


def checkpoint_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from, or None when it is complete.

    ``Trainer`` writes the weights, then optimizer, scheduler and RNG states, and
    ``trainer_state.json`` last; a folder with a readable trainer state and whole weight files is complete.
    """
    path = Path(folder)
    if not path.is_dir():
        return "not a folder"
    state = path / TRAINER_STATE_NAME
    if not state.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"{TRAINER_STATE_NAME} is unreadable"
    return saved_model_problem(path)


def checkpoints_newest_first(run_dir: str | os.PathLike[str]) -> list[Path]:
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``(newest complete checkpoint or None, [(newer incomplete checkpoint, why), ...])``."""
    skipped: list[tuple[Path, str]] = []
    for path in checkpoints_newest_first(run_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def set_aside(folder: Path) -> Path:
    """Rename an incomplete ``checkpoint-N`` to ``checkpoint-N.incomplete`` (nothing is deleted), so that
    neither resuming nor ``save_total_limit`` rotation takes it for a checkpoint."""
    target, number = folder.with_name(folder.name + INCOMPLETE_SUFFIX), 1
    while target.exists():
        number += 1
        target = folder.with_name(f"{folder.name}{INCOMPLETE_SUFFIX}-{number}")
    folder.rename(target)
    return target


def resolve_resume(
    resume: str | bool | None, run_dir: str | os.PathLike[str]
) -> tuple[str | None, list[tuple[Path, str]]]:
    """The checkpoint folder to resume from, and the newer incomplete ones that were passed over.

    ``True`` (or ``"true"``/``"last"``) means the newest *complete* checkpoint in ``run_dir``; a path must
    be complete itself. Errors name what is missing and the checkpoint that would work.
    """
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("", "false")):
        return None, []
    found, skipped = last_complete_checkpoint(run_dir)
    if resume is True:
        if found is None:
            reasons = "; ".join(f"{path.name}: {why}" for path, why in skipped) or "no checkpoint-N folder"
            raise ValueError(f"no complete checkpoint in {run_dir} to resume from ({reasons}).")
        return str(found), skipped
    problem = checkpoint_problem(resume)
    if problem is not None:
        instead = f"; the last complete checkpoint is {found}" if found is not None else ""
        raise ValueError(f"{resume} is incomplete ({problem}){instead}.")
    return str(resume), []


def free_bytes(path: str | os.PathLike[str]) -> int:
    return shutil.disk_usage(path).free


def _save_error(error: BaseException, folder: Path, run_dir: str | os.PathLike[str]) -> str:
    """Why a save failed, in words: a full disk (errno 28, or under 1 MiB left) is said as such."""
    disk_full = isinstance(error, OSError) and error.errno == 28
    try:
        disk_full = disk_full or free_bytes(folder if folder.exists() else run_dir) < 1 << 20
    except OSError:
        pass
    return "no space left on device" if disk_full else f"{type(error).__name__}: {error}"


def _resume_hint(run_dir: str | os.PathLike[str]) -> str:
    found, _ = last_complete_checkpoint(run_dir)
    return f"resume from {found} (--resume_from_checkpoint true)" if found is not None else "no earlier checkpoint"


def save_failure(
    folder: str | os.PathLike[str], error: BaseException, run_dir: str | os.PathLike[str]
) -> CheckpointSaveError:
    """The error to raise when saving ``folder`` failed: removes the partial folder and says what to resume from."""
    target = Path(folder)
    why = _save_error(error, target.parent, run_dir)
    shutil.rmtree(target, ignore_errors=True)
    return CheckpointSaveError(
        f"saving {target} failed: {why}; the partial folder was removed. Free space or change output_dir, "
        f"then {_resume_hint(run_dir)}."
    )


def final_save_failure(folder: str | os.PathLike[str], error: BaseException) -> CheckpointSaveError:
    """The error to raise when ``Trainer.save_model`` into ``folder`` failed. Nothing is removed (the folder
    also holds the run's checkpoints and logs); loading the half-written model is refused by name."""
    target = Path(folder)
    return CheckpointSaveError(
        f"saving the model into {target} failed: {_save_error(error, target, target)}; the files written there "
        "are incomplete (loading them is refused). Free space or choose another folder and save again "
        f"(trainer.save_model(DIR)), or {_resume_hint(target)}."
    )


def saved_key_names(model: nn.Module) -> dict[str, str]:
    """``{name in a saved checkpoint: name in model.state_dict()}``, by the renaming ``save_pretrained`` applies.

    transformers reverses its load-time conversion when saving; applying that reversal to shape-only
    placeholders shows which saved key each of the model's tensors became.
    """
    placeholders = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in model.state_dict().items()}
    owner = {id(t): name for name, t in placeholders.items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers save under the model's own names
        return {name: name for name in placeholders}
    pretrained: Any = model
    saved: dict[str, Any] = revert_weight_conversion(pretrained, dict(placeholders))
    return {key: owner[id(tensor)] for key, tensor in saved.items() if id(tensor) in owner}


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors", device="cpu")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard, device="cpu"))
        return state
    raise ValueError(f"{folder} has no safetensors weights (model.safetensors or its shard index) to restore.")


def load_full_weights(model: nn.Module, folder: str | os.PathLike[str]) -> int:
    """Copy a checkpoint's full weights into ``model`` under the model's names; returns how many tensors.

    Raises when a trainable parameter is not in the checkpoint: resuming must never continue from the
    base weights.
    """
    path = Path(folder)
    state = _read_state_dict(path)
    names = saved_key_names(model)
    renamed = {names.get(key, key): tensor for key, tensor in state.items()}
    own = model.state_dict()
    unknown = sorted(key for key in renamed if key not in own)
    if unknown:
        raise ValueError(f"{path} holds weights this model does not have: {unknown[:5]} ({len(unknown)} in all).")
    model.load_state_dict(renamed, strict=False)
    loaded = {t.data_ptr() for name, t in own.items() if name in renamed}
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and n not in renamed and p.data_ptr() not in loaded
    ]
    if missing:
        raise ValueError(
            f"{path} lacks {len(missing)} trained weight(s), e.g. {missing[:3]}: resuming would continue from the "
            "base weights. Was the checkpoint written by a run with the same model and freeze settings?"
        )
    return len(renamed)
