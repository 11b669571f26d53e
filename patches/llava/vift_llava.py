"""ViFT training for haotian-liu/LLaVA and its forks (Bunny), as a removable runtime patch.

Import this module and call :func:`apply` before LLaVA's ``train()`` builds its trainer::

    import vift_llava
    handle = vift_llava.apply(vision_lr=2e-6)      # patches llava.train.llava_trainer.LLaVATrainer
    from llava.train.train import train
    train(attn_implementation="flash_attention_2")
    handle.remove()                                 # optional: the originals are back, exactly

or run it in place of ``llava/train/train_mem.py`` (same arguments, plus ``--vift-*`` options)::

    deepspeed patches/llava/vift_llava.py --vift-vision-lr 2e-6 --deepspeed scripts/zero3.json ...

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

No upstream code is copied; the patch needs ``vift_plugin`` installed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vift_plugin.training.upstream import (
    MethodPatch,
    PatchError,
    call_compatibly,
    check_unpatched,
    mark_patched,
    role_log_method,
    role_optimizer_method,
    sampler_dataset,
)

__all__ = [
    "TARGETS",
    "LLaVAPatch",
    "ViFTPatchError",
    "ViFTLLaVAConfig",
    "active_patches",
    "apply",
    "apply_vift_to_llava",
    "build_sampler",
    "patch_llava_trainer",
    "vift_llava_patch",
    "write_llava_json",
]

logger = logging.getLogger("vift_llava")

PATCHED_METHODS = ("_get_train_sampler", "create_optimizer")
LOG_METHOD = "log"  # replaced with create_optimizer: adds the per-role rates to the logs
ROLES = ("vision", "connector", "language")
# Why a role may have no trainable parameter under upstream LLaVA (shown when its rate is set).
IDLE_HINTS = {
    "vision": "LLaVA's CLIP vision tower freezes itself (requires_grad_(False) in clip_encoder.py); only forks "
    "with unfreeze_mm_vision_tower train it.",
    "connector": "LLaVA trains mm_projector only with tune_mm_mlp_adapter or a full fine-tune.",
}


@dataclass(frozen=True)
class Target:
    """One upstream trainer class this patch knows."""

    module: str
    cls: str
    upstream: str


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
    remainder: str = "drop"
    length_window: int | None = 64
    sampler: bool = True
    optimizer: bool = True
    role_of: Callable[[str], str] | None = None


# --------------------------------------------------------------------------------------- symbol checks


def _advice(target: Target | None) -> str:
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


def _import_target(target: Target, upstream: bool = True) -> type:
    advice = _advice(target if upstream else None)
    try:
        module = importlib.import_module(target.module)
    except ImportError as error:
        raise ViFTPatchError(
            f"vift_llava: cannot import module {target.module!r} ({type(error).__name__}: {error}). " + advice
        ) from error
    cls = getattr(module, target.cls, None)
    if not isinstance(cls, type):
        raise ViFTPatchError(f"vift_llava: module {target.module!r} has no class {target.cls!r}. " + advice)
    return cls


def _check_methods(cls: type, target: Target | None) -> None:
    """Each patched method exists and can be called the way the patch calls it (``self`` only)."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    for name in PATCHED_METHODS:
        method = getattr(cls, name, None)
        if method is None or not callable(method):
            raise ViFTPatchError(f"vift_llava: {where} has no method {name!r}. " + _advice(target))
        try:
            inspect.signature(method).bind(object())
        except (TypeError, ValueError) as error:
            raise ViFTPatchError(
                f"vift_llava: {where}.{name} has an incompatible signature {inspect.signature(method)} "
                f"(the patch calls it with self only: {error}). " + _advice(target)
            ) from error


def resolve_trainer_class(trainer_cls: type | str | None = None, target: str = "auto") -> tuple[type, Target | None]:
    """The class to patch: ``trainer_cls`` (a class or ``"module:Class"``), or the ``target``'s upstream class."""
    if isinstance(trainer_cls, str):
        module_name, _, class_name = trainer_cls.partition(":")
        if not class_name:
            raise ValueError(f"trainer_cls as a string must be 'module:Class', got {trainer_cls!r}.")
        cls = _import_target(Target(module_name, class_name, trainer_cls), upstream=False)
        _check_methods(cls, None)
        return cls, None
    if trainer_cls is not None:
        if not isinstance(trainer_cls, type):
            raise TypeError(f"trainer_cls must be a class, got {type(trainer_cls).__name__}.")
        _check_methods(trainer_cls, None)
        return trainer_cls, None
    if target == "auto":
        errors = []
        for name in TARGETS:
            try:
                return resolve_trainer_class(None, name)
            except ViFTPatchError as error:
                errors.append(str(error))
        raise ViFTPatchError(
            "vift_llava: found no LLaVA-style trainer to patch:\n  " + "\n  ".join(errors) + "\n" + _advice(None)
        )
    if target not in TARGETS:
        raise ValueError(f"target must be 'auto' or one of {sorted(TARGETS)}, got {target!r}.")
    spec = TARGETS[target]
    cls = _import_target(spec)
    _check_methods(cls, spec)
    return cls, spec


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


def build_sampler(trainer: Any, dataset: Any, config: ViFTLLaVAConfig) -> Any:
    """The :class:`ModalityGroupedSampler` the patched ``_get_train_sampler`` returns."""
    from vift_plugin.data.sampler import sampler_for_trainer

    modalities, lengths = _modality_lengths(dataset)
    return sampler_for_trainer(
        trainer,
        modalities,
        lengths,
        remainder=config.remainder,  # type: ignore[arg-type]
        length_window=config.length_window,
    )


def _defines(obj: Any, name: str) -> bool:
    """Whether ``obj`` has attribute ``name``, without evaluating a property (LLaVA's walks the whole data list)."""
    return name in getattr(obj, "__dict__", {}) or any(name in vars(klass) for klass in type(obj).__mro__)


def _make_sampler_method(original: Callable[..., Any], config: ViFTLLaVAConfig) -> Callable[..., Any]:
    def _get_train_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
        dataset = sampler_dataset(self, args, kwargs)
        if dataset is None:
            return call_compatibly(original, self, *args, **kwargs)
        if not _defines(dataset, "modality_lengths") and self.train_dataset is not None:
            dataset = self.train_dataset
        return build_sampler(self, dataset, config)

    return mark_patched(
        _get_train_sampler, "ViFT (vift_llava): a ModalityGroupedSampler over the dataset's modality_lengths."
    )


# --------------------------------------------------------------------------------------- optimizer


def role_learning_rates(args: Any, config: ViFTLLaVAConfig) -> dict[str, float]:
    """``{"vision", "connector", "language"}`` learning rates from the training arguments and the patch."""
    base = float(args.learning_rate)
    connector = getattr(args, "mm_projector_lr", None)
    if connector is None:
        connector = config.connector_lr
    vision = getattr(args, "mm_vision_tower_lr", None)
    if vision is None:
        vision = config.vision_lr
    return {
        "vision": base if vision is None else float(vision),
        "connector": base if connector is None else float(connector),
        "language": base,
    }


def rate_settings(args: Any, config: ViFTLLaVAConfig) -> dict[str, tuple[str, float]]:
    """The rates set explicitly, ``{role: (setting, rate)}``, with the same precedence as :func:`role_learning_rates`.

    The language model's rate is upstream's ``learning_rate``, never a choice of the patch, so it is left out.
    """
    settings: dict[str, tuple[str, float]] = {}
    for role, arg_name, patch_name in (
        ("vision", "mm_vision_tower_lr", "vision_lr"),
        ("connector", "mm_projector_lr", "connector_lr"),
    ):
        value = getattr(args, arg_name, None)
        if value is not None:
            settings[role] = (arg_name, float(value))
        elif getattr(config, patch_name) is not None:
            settings[role] = (patch_name, float(getattr(config, patch_name)))
    return settings


def _is_8bit(optimizer_cls: Any, kwargs: dict[str, Any]) -> bool:
    """bitsandbytes 8-bit optimizers keep embeddings in 32-bit state, as transformers and LLaVA do."""
    return optimizer_cls.__name__ == "Adam8bit" or (
        "bitsandbytes" in str(optimizer_cls) and kwargs.get("optim_bits") == 8
    )


def _make_optimizer_method(original: Callable[..., Any], config: ViFTLLaVAConfig) -> Callable[..., Any]:
    return role_optimizer_method(
        original,
        learning_rates=lambda args: role_learning_rates(args, config),
        role_of=config.role_of,
        logger=logger,
        owner="vift_llava",
        unapplied="per-role learning rates",
        eight_bit=_is_8bit,
        doc="ViFT (vift_llava): one optimizer group per role (vision/connector/language) and decay.",
        rate_settings=lambda args: rate_settings(args, config),
        hints=IDLE_HINTS,
    )


def _make_log_method(original: Callable[..., Any]) -> Callable[..., Any]:
    return role_log_method(original, "ViFT (vift_llava): logs learning_rate/<role> beside learning_rate.")


# --------------------------------------------------------------------------------------- patch handle

_ACTIVE: list[LLaVAPatch] = []


@dataclass(eq=False)
class LLaVAPatch(MethodPatch):
    """An applied patch: ``remove()`` (or leaving a ``with`` block) restores the original methods exactly."""

    trainer_cls: type
    config: ViFTLLaVAConfig
    target: Target | None

    owner: ClassVar[str] = "vift_llava"
    error: ClassVar[type[Exception]] = ViFTPatchError
    registry: ClassVar[list[Any]] = _ACTIVE


def active_patches() -> list[LLaVAPatch]:
    """Patches applied and not yet removed, oldest first."""
    return list(_ACTIVE)


def _check_config(config: ViFTLLaVAConfig) -> None:
    for name in ("vision_lr", "connector_lr"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{name} must be a non-negative number or None, got {value!r}.")
    if config.remainder not in ("drop", "fill"):
        raise ValueError(f"remainder must be 'drop' or 'fill', got {config.remainder!r}.")
    if config.length_window is not None and (not isinstance(config.length_window, int) or config.length_window < 1):
        raise ValueError(f"length_window must be a positive int or None, got {config.length_window!r}.")
    if not (config.sampler or config.optimizer):
        raise ValueError("Nothing to patch: sampler and optimizer are both False.")


def apply_vift_to_llava(
    trainer_cls: type | str | None = None,
    *,
    target: str = "auto",
    vision_lr: float | None = None,
    connector_lr: float | None = None,
    remainder: str = "drop",
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
    _check_config(config)
    cls, spec = resolve_trainer_class(trainer_cls, target)
    check_unpatched(cls, (*PATCHED_METHODS, LOG_METHOD), "vift_llava", ViFTPatchError)
    import vift_plugin.data.sampler  # noqa: F401  (fail now, not inside train(), when vift_plugin is missing)

    handle = LLaVAPatch(cls, config, spec)
    makers = {"_get_train_sampler": _make_sampler_method, "create_optimizer": _make_optimizer_method}
    for name in PATCHED_METHODS:
        if not getattr(config, "sampler" if name == "_get_train_sampler" else "optimizer"):
            continue
        handle.replace(cls, name, makers[name](getattr(cls, name), config))
    if config.optimizer and callable(getattr(cls, LOG_METHOD, None)):
        handle.replace(cls, LOG_METHOD, _make_log_method(getattr(cls, LOG_METHOD)))
    _ACTIVE.append(handle)
    patched = [name for _, name, _, _ in handle.saved]
    logger.info("vift_llava: patched %s.%s (%s).", cls.__module__, cls.__qualname__, ", ".join(patched))
    return handle


apply = apply_vift_to_llava
patch_llava_trainer = apply_vift_to_llava
vift_llava_patch = apply_vift_to_llava


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
        scratch_prefix=".vift-llava-",
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


if __name__ == "__main__":
    main()
