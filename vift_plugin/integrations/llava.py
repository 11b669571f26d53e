"""ViFT training for haotian-liu/LLaVA and its forks (Bunny), as a removable runtime patch.

Call :func:`apply` before LLaVA's ``train()`` builds its trainer::

    from vift_plugin.integrations import llava as vift_llava   # or: import vift_llava (patches/llava)
    handle = vift_llava.apply(vision_lr=2e-6)      # patches llava.train.llava_trainer.LLaVATrainer
    from llava.train.train import train
    train(attn_implementation="flash_attention_2")
    handle.remove()                                 # optional: the originals are back, exactly

or run it in place of ``llava/train/train_mem.py`` (same arguments, plus ``--vift-*`` options)::

    deepspeed patches/llava/vift_llava.py --vift-vision-lr 2e-6 --deepspeed scripts/zero3.json ...
    python -m vift_plugin.integrations.llava --vift-vision-lr 2e-6 ...

What changes on the trainer class (nothing else is touched):

- ``_get_train_sampler`` returns a :class:`vift_plugin.data.ModalityGroupedSampler` built from the
  dataset's ``modality_lengths`` (positive: image sample, negative: text-only; the absolute value is
  the length). Every optimizer step (per-device batch x world size x gradient accumulation) is one
  modality on every rank, and the order depends only on ``data_seed``/``seed`` and the epoch,
  never on the global random state. Upstream's sampler ends each epoch with a batch mixing both
  modalities and draws from the global torch generator.
- ``create_optimizer`` gives every trainable parameter a group by role and weight decay:
  the connector (``mm_projector``) at ``mm_projector_lr``, the vision tower at
  ``mm_vision_tower_lr`` (when the training arguments have it, as in LLaVA-NeXT forks) or the
  ``vision_lr`` given here, and the language model at ``learning_rate``. A rate set for a role with
  no trainable parameter is warned about: upstream LLaVA's CLIP tower freezes itself, so there
  ``vision_lr`` does nothing.
- ``log`` adds each role's rate (``learning_rate/vision``, ``learning_rate/connector``,
  ``learning_rate/language``) beside ``learning_rate``, which is the first group's rate only.

Written for (read at apply time, checked symbol by symbol):

- haotian-liu/LLaVA v1.2.2.post1 (main): ``llava.train.llava_trainer.LLaVATrainer`` with
  ``_get_train_sampler(self)`` and ``create_optimizer(self)``;
- BAAI-DCAI/Bunny (main, package version 1.0): ``bunny.train.bunny_trainer.BunnyTrainer``, same methods.

No upstream code is copied. Imports torch, numpy and Pillow only (LLaVA pins an old transformers).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vift_plugin.data.sampler import ModalityGroupedSampler, Remainder, sampler_for_trainer
from vift_plugin.integrations.base import PatchError, Target, UpstreamPatch
from vift_plugin.integrations.settings import check_settings
from vift_plugin.training.roles import ROLES

__all__ = [
    "TARGETS",
    "LLaVAPatch",
    "ViFTLLaVAConfig",
    "ViFTPatchError",
    "active_patches",
    "apply",
    "build_sampler",
    "main",
    "write_llava_json",
]

logger = logging.getLogger("vift_llava")

# Why a role may have no trainable parameter under upstream LLaVA (shown when its rate is set).
IDLE_HINTS = {
    "vision": "LLaVA's CLIP vision tower freezes itself (requires_grad_(False) in clip_encoder.py); only forks "
    "with unfreeze_mm_vision_tower train it.",
    "connector": "LLaVA trains mm_projector only with tune_mm_mlp_adapter or a full fine-tune.",
}

TARGETS: dict[str, Target] = {
    "llava": Target(
        "llava.train.llava_trainer",
        "LLaVATrainer",
        "haotian-liu/LLaVA v1.2.2.post1 (main branch)",
    ),
    "bunny": Target(
        "bunny.train.bunny_trainer",
        "BunnyTrainer",
        "BAAI-DCAI/Bunny (main branch, package version 1.0)",
    ),
}


class ViFTPatchError(PatchError):
    """A symbol the patch needs is missing or incompatible, or the patch is applied twice."""


@dataclass(frozen=True)
class ViFTLLaVAConfig:
    """Settings of one applied patch (see :func:`apply`)."""

    vision_lr: float | None = None
    connector_lr: float | None = None
    remainder: Remainder = "drop"
    length_window: int | None = 64
    sampler: bool = True
    optimizer: bool = True
    role_of: Callable[[str], str] | None = None


# --------------------------------------------------------------------------------------- sampler


def _modality_lengths(dataset: Any) -> tuple[list[str], list[int]]:
    """``(modalities, lengths)`` from LLaVA's signed ``modality_lengths`` (positive: image, negative: text)."""
    signed = getattr(dataset, "modality_lengths", None)
    if signed is None:
        raise ValueError(
            f"vift_llava: the training dataset ({type(dataset).__name__}) has no 'modality_lengths'; ViFT's "
            "sampler needs LLaVA's LazySupervisedDataset (or any dataset with that property: the token or word "
            "count per sample, positive for image samples and negative for text-only ones)."
        )
    modalities, lengths = [], []
    for index, value in enumerate(signed):
        value = int(value)
        if value == 0:
            raise ValueError(
                f"vift_llava: modality_lengths[{index}] is 0, so its modality is unknown (the sign tells image "
                "from text). Drop empty conversations from the data."
            )
        modalities.append("image" if value > 0 else "text")
        lengths.append(abs(value))
    return modalities, lengths


def build_sampler(trainer: Any, dataset: Any, config: ViFTLLaVAConfig) -> ModalityGroupedSampler:
    """The :class:`ModalityGroupedSampler` the patched ``_get_train_sampler`` returns."""
    modalities, lengths = _modality_lengths(dataset)
    return sampler_for_trainer(
        trainer, modalities, lengths, remainder=config.remainder, length_window=config.length_window
    )


def _defines(obj: Any, name: str) -> bool:
    """Whether ``obj`` has attribute ``name``, without evaluating a property (LLaVA's walks the whole data list)."""
    return name in getattr(obj, "__dict__", {}) or any(name in vars(klass) for klass in type(obj).__mro__)


# --------------------------------------------------------------------------------------- patch handle


@dataclass(eq=False)
class LLaVAPatch(UpstreamPatch[ViFTLLaVAConfig]):
    """An applied patch: ``remove()`` (or leaving a ``with`` block) restores the original methods exactly."""

    trainer_cls: type
    target: Target | None

    owner: ClassVar[str] = "vift_llava"
    error: ClassVar[type[Exception]] = ViFTPatchError
    logger: ClassVar[logging.Logger] = logger
    hints: ClassVar[dict[str, str]] = IDLE_HINTS
    sampler_doc: ClassVar[str] = "ViFT (vift_llava): a ModalityGroupedSampler over the dataset's modality_lengths."
    optimizer_doc: ClassVar[str] = (
        "ViFT (vift_llava): one optimizer group per role (vision/connector/language) and decay."
    )

    @classmethod
    def advice(cls, target: Target | None) -> str:
        if target is None:
            return (
                "Pass trainer_cls= a transformers.Trainer subclass with _get_train_sampler(self[, dataset]) "
                "and create_optimizer(self)."
            )
        return (
            f"This patch was written for {target.upstream}. Install that version (pip install -e . in its "
            f"checkout), run from its repository root so {target.module.split('.')[0]!r} is importable, or pass "
            "trainer_cls= your own trainer class if it is a fork with other names."
        )

    def build_sampler(self, trainer: Any, dataset: Any) -> ModalityGroupedSampler:
        return build_sampler(trainer, dataset, self.config)

    def has_sampler_data(self, dataset: Any) -> bool:
        return _defines(dataset, "modality_lengths")

    def learning_rates(self, args: Any) -> dict[str, float]:
        """The connector at ``mm_projector_lr``, else ``connector_lr``; the vision tower at
        ``mm_vision_tower_lr``, else ``vision_lr``; each else (and the language model) at ``learning_rate``."""
        base = float(args.learning_rate)
        set_rates = {role: rate for role, (_, rate) in self.rate_settings(args).items()}
        return {role: set_rates.get(role, base) for role in ROLES}

    def rate_settings(self, args: Any) -> dict[str, tuple[str, float]]:
        """The rates set explicitly, with the precedence of :meth:`learning_rates`. The language model's
        rate is upstream's ``learning_rate``, never a choice of the patch, so it is left out."""
        settings: dict[str, tuple[str, float]] = {}
        for role, arg_name, patch_name in (
            ("vision", "mm_vision_tower_lr", "vision_lr"),
            ("connector", "mm_projector_lr", "connector_lr"),
        ):
            value = getattr(args, arg_name, None)
            if value is not None:
                settings[role] = (arg_name, float(value))
            elif getattr(self.config, patch_name) is not None:
                settings[role] = (patch_name, float(getattr(self.config, patch_name)))
        return settings

    def is_8bit(self, optimizer_cls: Any, kwargs: dict[str, Any]) -> bool:
        """Also LLaVA's own rule (transformers 4.3x): ``Adam8bit`` keeps embeddings in 32-bit state."""
        return optimizer_cls.__name__ == "Adam8bit" or super().is_8bit(optimizer_cls, kwargs)


def active_patches() -> list[LLaVAPatch]:
    """Patches applied and not yet removed, oldest first."""
    return LLaVAPatch.active_patches()


def resolve_trainer_class(trainer_cls: type | str | None = None, target: str = "auto") -> tuple[type, Target | None]:
    """The class to patch: ``trainer_cls`` (a class or ``"module:Class"``), or the ``target``'s upstream class."""
    if isinstance(trainer_cls, str):
        if not trainer_cls.partition(":")[2]:
            raise ValueError(f"trainer_cls as a string must be 'module:Class', got {trainer_cls!r}.")
        return LLaVAPatch.named_class(trainer_cls), None
    if trainer_cls is not None:
        if not isinstance(trainer_cls, type):
            raise TypeError(f"trainer_cls must be a class, got {type(trainer_cls).__name__}.")
        LLaVAPatch.check_methods(trainer_cls, None)
        return trainer_cls, None
    if target == "auto":
        errors = []
        for name in TARGETS:
            try:
                return resolve_trainer_class(None, name)
            except ViFTPatchError as error:
                errors.append(str(error))
        raise ViFTPatchError(
            "vift_llava: found no LLaVA-style trainer to patch:\n  "
            + "\n  ".join(errors)
            + "\n"
            + LLaVAPatch.advice(None)
        )
    if target not in TARGETS:
        raise ValueError(f"target must be 'auto' or one of {sorted(TARGETS)}, got {target!r}.")
    return LLaVAPatch.trainer_class(TARGETS[target]), TARGETS[target]


def apply(
    trainer_cls: type | str | None = None,
    *,
    target: str = "auto",
    vision_lr: float | None = None,
    connector_lr: float | None = None,
    remainder: Remainder = "drop",
    length_window: int | None = 64,
    sampler: bool = True,
    optimizer: bool = True,
    role_of: Callable[[str], str] | None = None,
) -> LLaVAPatch:
    """Patch a LLaVA-style trainer class for ViFT; returns a handle (also a context manager).

    Args:
        trainer_cls: the class to patch, or ``"module:Class"``; default: ``target``'s upstream class.
        target: ``"llava"``, ``"bunny"`` or ``"auto"`` (the first of them that imports).
        vision_lr: vision tower learning rate where the training arguments have no ``mm_vision_tower_lr``
            (or it is ``None``); default ``learning_rate``.
        connector_lr: connector learning rate where ``mm_projector_lr`` is ``None``; default ``learning_rate``.
        remainder: ``"drop"`` or ``"fill"`` the samples of a modality that do not fill an optimizer step.
        length_window: optimizer steps per length-sorting window (``None``: a whole modality).
        sampler / optimizer: which of the two methods to replace (``optimizer`` also replaces ``log``,
            which adds the per-role rates).
        role_of: ``name -> "vision" | "connector" | "language"`` in place of
            :func:`vift_plugin.training.roles.parameter_role` (``mm_projector``, ``vision_tower``, ...).

    Raises:
        ViFTPatchError: a module, class or method is missing or incompatible, or the class is already patched.
    """
    config = ViFTLLaVAConfig(vision_lr, connector_lr, remainder, length_window, sampler, optimizer, role_of)
    check_settings(config, ("vision_lr", "connector_lr"))
    if not (config.sampler or config.optimizer):
        raise ValueError("Nothing to patch: sampler and optimizer are both False.")
    cls, spec = resolve_trainer_class(trainer_cls, target)
    LLaVAPatch.check_unpatched(cls)
    handle = LLaVAPatch(config, cls, spec)
    handle.patch_trainer(cls, sampler=config.sampler, optimizer=config.optimizer)
    handle.register()
    patched = [name for _, name, _, _ in handle.saved]
    logger.info("vift_llava: patched %s.%s (%s).", cls.__module__, cls.__qualname__, ", ".join(patched))
    return handle


# --------------------------------------------------------------------------------------- data


def write_llava_json(
    output: str | os.PathLike[str],
    *,
    captions: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str | os.PathLike[str]] = (),
    image_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verify_images: bool = True,
    skip_bad: bool = False,
    absolute_image_paths: bool = False,
) -> dict[str, int]:
    """Write one LLaVA training file (``--data_path``) from caption files and text-instruction files.

    Captions (LLaVA-Pretrain/ShareGPT4V, COCO, JSON/JSONL/CSV/TSV/Parquet tables; see ``vift convert
    formats``) become ``{"id", "image", "conversations": [human "<image>\\n<request>", gpt caption]}``;
    text instructions (ShareGPT, Alpaca, messages) become ``{"id", "conversations"}`` without ``image``,
    so LLaVA's ``modality_lengths`` is negative for them. Image paths are relative to ``image_root``
    (default: each caption file's folder), which is then LLaVA's ``--image_folder``; with
    ``absolute_image_paths`` they are absolute. ``output`` ending in ``.json`` is one JSON list (what
    LLaVA's ``json.load`` reads), ``.jsonl`` one record per line. Written atomically.

    Returns ``{"captions": n, "texts": m}``, the records written of each kind.
    """
    from vift_plugin.data.export import write_llava_records

    return write_llava_records(
        output,
        captions=captions,
        texts=texts,
        image_root=image_root,
        seed=seed,
        verify_images=verify_images,
        skip_bad=skip_bad,
        absolute_image_paths=absolute_image_paths,
    )


# --------------------------------------------------------------------------------------- launcher


def main(argv: Sequence[str] | None = None) -> None:
    """Apply the patch, then run upstream ``train()`` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        description="Run LLaVA/Bunny training with ViFT's sampler and per-role learning rates. Options other "
        "than --vift-* go to the upstream train() unchanged.",
    )
    parser.add_argument("--vift-target", choices=["auto", *TARGETS], default="auto")
    parser.add_argument("--vift-vision-lr", type=float, default=None)
    parser.add_argument("--vift-connector-lr", type=float, default=None)
    parser.add_argument("--vift-remainder", choices=["drop", "fill"], default="drop")
    parser.add_argument("--vift-attn-implementation", default=None, help="e.g. flash_attention_2 (LLaVA only)")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    handle = apply(
        target=ours.vift_target,
        vision_lr=ours.vift_vision_lr,
        connector_lr=ours.vift_connector_lr,
        remainder=ours.vift_remainder,
    )
    package = (handle.target or TARGETS["llava"]).module.split(".")[0]
    sys.argv = [sys.argv[0], *rest]
    train = importlib.import_module(f"{package}.train.train").train
    if ours.vift_attn_implementation is not None:
        train(attn_implementation=ours.vift_attn_implementation)
    else:
        train()


if __name__ == "__main__":  # python -m: run the imported module's main, so there is one registry of patches
    from vift_plugin.integrations.llava import main as _main

    _main()
