"""ViFT training for hiyouga/LLaMA-Factory, as a removable runtime patch.

LLaMA-Factory batches image and text-only samples together (its multimodal collator pads an
all-text batch with a blank image so ZeRO-3/FSDP do not hang) and trains the vision tower, the
projector and the language model at one learning rate. This patch adds, on its trainers:

- modality-grouped sampling: ``_get_train_sampler`` returns a
  :class:`vift_plugin.data.ModalityGroupedSampler`, so every optimizer step (per-device batch x
  world size x gradient accumulation) is all-image or all-text on every rank. A sample is an image
  sample when its ``images`` (or ``videos``) list in the tokenized dataset is non-empty; its length
  is ``len(input_ids)``. The order depends only on ``data_seed``/``seed`` and the epoch.
- per-module learning rates: ``create_optimizer`` puts the vision tower, the connector
  (``multi_modal_projector``; Qwen2-VL's ``visual.merger``) and the language model in their own
  groups (and decay/no-decay), at ``vision_lr``, ``connector_lr`` and ``language_lr``. A rate set
  for a module with no trainable parameter is warned about: LLaMA-Factory freezes the vision tower
  and the projector by default (``freeze_vision_tower``, ``freeze_multi_modal_projector``).
- the rates in the logs: ``log`` adds ``learning_rate/vision``, ``learning_rate/connector`` and
  ``learning_rate/language`` beside ``learning_rate`` (the first group's rate only), and
  LLaMA-Factory's ``LogCallback`` copies them into ``trainer_log.jsonl`` (it writes a fixed set of
  keys otherwise).

Use it in Python before ``run_exp()``::

    import vift_llamafactory
    vift_llamafactory.apply(vision_lr=2e-6, connector_lr=1e-5)
    from llamafactory.train.tuner import run_exp
    run_exp()                                   # reads the YAML named on the command line

or run this file in place of ``llamafactory-cli train`` (``VIFT_*`` environment variables or
``--vift-*`` options; the rest of the command line goes to LLaMA-Factory)::

    VIFT_VISION_LR=2e-6 torchrun --nproc_per_node 4 patches/llama_factory/vift_llamafactory.py qwen2vl_sft.yaml

Written for hiyouga/LLaMA-Factory 0.9.x (checked against 0.9.3/main): ``llamafactory.train.sft.trainer.
CustomSeq2SeqTrainer`` and ``llamafactory.train.pt.trainer.CustomTrainer`` with
``_get_train_sampler(self, *args, **kwargs)`` and ``create_optimizer(self)``, and
``llamafactory.train.trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)``.
Every symbol is checked when the patch is applied. No upstream code is copied; the patch needs
``vift_plugin`` installed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vift_plugin.training.upstream import (
    MethodPatch,
    PatchError,
    call_compatibly,
    check_unpatched,
    has_length,
    mark_patched,
    role_log_method,
    role_optimizer_method,
    sampler_dataset,
)

__all__ = [
    "ENV_VARS",
    "TARGETS",
    "LlamaFactoryPatch",
    "ViFTLlamaFactoryConfig",
    "ViFTPatchError",
    "active_patches",
    "apply",
    "apply_vift_to_llamafactory",
    "build_sampler",
    "config_from_env",
    "patch_llamafactory_trainers",
    "vift_llamafactory_patch",
    "write_llamafactory_dataset",
]

logger = logging.getLogger("vift_llamafactory")

UPSTREAM = "hiyouga/LLaMA-Factory 0.9.x (0.9.3 / main)"
PATCHED_METHODS = ("_get_train_sampler", "create_optimizer")
ROLES = ("vision", "connector", "language")
CUSTOM_OPTIMIZER = ("llamafactory.train.trainer_utils", "create_custom_optimizer")
LOG_METHOD = "log"  # replaced on the trainers: adds the per-role rates to the logs
# The callback that writes trainer_log.jsonl from a fixed list of keys; patched where it exists.
LOG_CALLBACK = ("llamafactory.train.callbacks", "LogCallback")
RATE_PREFIX = "learning_rate/"
# Why a module may have no trainable parameter under LLaMA-Factory (shown when its rate is set).
IDLE_HINTS = {
    "vision": "LLaMA-Factory freezes the vision tower unless freeze_vision_tower: false.",
    "connector": "LLaMA-Factory freezes the projector unless freeze_multi_modal_projector: false.",
    "language": "LLaMA-Factory freezes the language model with freeze_language_model: true.",
}

# Environment variables read by apply() for every setting not passed as an argument.
ENV_VARS = {
    "vision_lr": "VIFT_VISION_LR",
    "connector_lr": "VIFT_CONNECTOR_LR",
    "language_lr": "VIFT_LANGUAGE_LR",
    "group_by_modality": "VIFT_GROUP_BY_MODALITY",
    "remainder": "VIFT_REMAINDER",
    "length_window": "VIFT_LENGTH_WINDOW",
}


@dataclass(frozen=True)
class Target:
    """One upstream trainer class this patch knows."""

    module: str
    cls: str


TARGETS: dict[str, Target] = {
    "sft": Target("llamafactory.train.sft.trainer", "CustomSeq2SeqTrainer"),
    "pt": Target("llamafactory.train.pt.trainer", "CustomTrainer"),
}


class ViFTPatchError(PatchError):
    """A symbol the patch needs is missing or incompatible, or the patch is applied twice."""


@dataclass(frozen=True)
class ViFTLlamaFactoryConfig:
    """Settings of one applied patch (see :func:`apply`)."""

    vision_lr: float | None = None
    connector_lr: float | None = None
    language_lr: float | None = None
    group_by_modality: bool = True
    remainder: str = "drop"
    length_window: int | None = 64
    visual_columns: tuple[str, ...] = ("images", "videos")
    role_of: Callable[[str], str] | None = None


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


# --------------------------------------------------------------------------------------- configuration


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"{name}={value!r} is not a number.") from error


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (1/0, true/false, yes/no).")


def _env_window(name: str) -> int | None | _Unset:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return UNSET
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"{name}={value!r} is not an integer or 'none'.") from error


def config_from_env(**given: Any) -> ViFTLlamaFactoryConfig:
    """The settings: each ``given`` value that is not ``UNSET``, else its ``VIFT_*`` variable, else the default."""
    defaults = ViFTLlamaFactoryConfig()
    env: dict[str, Any] = {
        "vision_lr": _env_float(ENV_VARS["vision_lr"]),
        "connector_lr": _env_float(ENV_VARS["connector_lr"]),
        "language_lr": _env_float(ENV_VARS["language_lr"]),
        "group_by_modality": _env_bool(ENV_VARS["group_by_modality"]),
        "remainder": os.environ.get(ENV_VARS["remainder"], "").strip() or None,
        "length_window": _env_window(ENV_VARS["length_window"]),
    }
    values: dict[str, Any] = {}
    for name in ViFTLlamaFactoryConfig.__dataclass_fields__:
        value = given.get(name, UNSET)
        if value is UNSET and name in env:
            value = env[name]
            if value is None and name in ("group_by_modality", "remainder"):
                value = UNSET
        values[name] = getattr(defaults, name) if value is UNSET else value
    config = ViFTLlamaFactoryConfig(**values)
    _check_config(config)
    return config


def _check_config(config: ViFTLlamaFactoryConfig) -> None:
    for name in ("vision_lr", "connector_lr", "language_lr"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{name} must be a non-negative number or None, got {value!r}.")
    if config.remainder not in ("drop", "fill"):
        raise ValueError(f"remainder must be 'drop' or 'fill', got {config.remainder!r}.")
    if config.length_window is not None and (
        isinstance(config.length_window, bool) or not isinstance(config.length_window, int) or config.length_window < 1
    ):
        raise ValueError(f"length_window must be a positive int or None, got {config.length_window!r}.")
    if not config.visual_columns:
        raise ValueError("visual_columns must name at least one column (LLaMA-Factory: 'images', 'videos').")


# --------------------------------------------------------------------------------------- symbol checks


def _advice(upstream: bool) -> str:
    if not upstream:
        return "The class needs _get_train_sampler(self, *args, **kwargs) and create_optimizer(self)."
    return (
        f"This patch was written for {UPSTREAM}. Install that version (pip install 'llamafactory>=0.9,<0.10' "
        "or pip install -e . in its checkout), or pass trainer_classes= your own trainer classes if your fork "
        "renamed them."
    )


def _import(module_name: str, attribute: str, upstream: bool) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ViFTPatchError(
            f"vift_llamafactory: cannot import module {module_name!r} ({type(error).__name__}: {error}). "
            + _advice(upstream)
        ) from error
    value = getattr(module, attribute, None)
    if value is None:
        raise ViFTPatchError(f"vift_llamafactory: module {module_name!r} has no {attribute!r}. " + _advice(upstream))
    return value


def _check_signature(function: Any, where: str, call: tuple[Any, ...], described: str, upstream: bool) -> None:
    if not callable(function):
        raise ViFTPatchError(f"vift_llamafactory: {where} is missing or not callable. " + _advice(upstream))
    try:
        inspect.signature(function).bind(*call)
    except (TypeError, ValueError) as error:
        raise ViFTPatchError(
            f"vift_llamafactory: {where} has an incompatible signature {inspect.signature(function)} "
            f"(the patch calls it as {described}: {error}). " + _advice(upstream)
        ) from error


def _check_class(cls: type, upstream: bool) -> None:
    where = f"{cls.__module__}.{cls.__qualname__}"
    for name in PATCHED_METHODS:
        method = getattr(cls, name, None)
        if method is None:
            raise ViFTPatchError(f"vift_llamafactory: {where} has no method {name!r}. " + _advice(upstream))
        _check_signature(method, f"{where}.{name}", (object(),), f"{name}(self)", upstream)


def _custom_optimizer_factory() -> Callable[..., Any]:
    """``llamafactory.train.trainer_utils.create_custom_optimizer``, checked."""
    function = _import(*CUSTOM_OPTIMIZER, upstream=True)
    _check_signature(
        function,
        ".".join(CUSTOM_OPTIMIZER),
        (None, None, None),
        "create_custom_optimizer(model, training_args, finetuning_args)",
        upstream=True,
    )
    return function


def resolve_trainer_classes(trainer_classes: Any = None) -> list[type]:
    """The classes to patch: names in :data:`TARGETS`, ``"module:Class"`` strings or classes (default: all targets)."""
    if trainer_classes is None:
        items: list[Any] = list(TARGETS)
    elif isinstance(trainer_classes, str | type):
        items = [trainer_classes]
    else:
        items = list(trainer_classes)
    classes = []
    for item in items:
        if isinstance(item, type):
            cls, upstream = item, False
        elif isinstance(item, str) and item in TARGETS:
            cls, upstream = _import(TARGETS[item].module, TARGETS[item].cls, upstream=True), True
        elif isinstance(item, str) and ":" in item:
            module_name, _, class_name = item.partition(":")
            cls, upstream = _import(module_name, class_name, upstream=False), False
        else:
            raise ValueError(
                f"trainer_classes items must be {sorted(TARGETS)}, 'module:Class' or classes; got {item!r}."
            )
        if not isinstance(cls, type):
            raise ViFTPatchError(f"vift_llamafactory: {item!r} is not a class. " + _advice(upstream))
        _check_class(cls, upstream)
        if cls not in classes:
            classes.append(cls)
    return classes


# --------------------------------------------------------------------------------------- sampler


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, list | tuple) else None


def _list_lengths(dataset: Any, column: str) -> list[int] | None:
    """``len(row[column] or [])`` per row, or ``None`` when the dataset has no such column.

    On a ``datasets.Dataset`` this reads Arrow list lengths (index mappings respected); images are
    never decoded.
    """
    names = _column_names(dataset)
    if names is not None:
        if column not in names:
            return None
        values = dataset.with_format("arrow")[column]
        try:
            import pyarrow.compute as pc

            return [int(n) for n in pc.fill_null(pc.list_value_length(values), 0).to_pylist()]
        except Exception:  # not a list column (a single path per row, ...)
            return [_count(value) for value in values.to_pylist()]
    lengths = []
    for index in range(len(dataset)):
        row = dataset[index]
        if not isinstance(row, dict) or column not in row:
            return None
        lengths.append(_count(row[column]))
    return lengths


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, list | tuple):
        return len(value)
    return 1


def _has_any_column(dataset: Any, columns: Sequence[str]) -> bool:
    names = _column_names(dataset)
    if names is None:
        first = dataset[0] if has_length(dataset) and len(dataset) else None
        names = list(first) if isinstance(first, dict) else []
    return any(column in names for column in columns)


def dataset_modalities(dataset: Any, visual_columns: Sequence[str]) -> list[str] | None:
    """``"image"`` where any of ``visual_columns`` is non-empty, else ``"text"``; ``None`` without those columns."""
    counts = [c for c in (_list_lengths(dataset, column) for column in visual_columns) if c is not None]
    if not counts:
        return None
    return ["image" if any(row) else "text" for row in zip(*counts, strict=True)]


def build_sampler(trainer: Any, dataset: Any, config: ViFTLlamaFactoryConfig) -> Any:
    """The :class:`ModalityGroupedSampler` the patched ``_get_train_sampler`` returns."""
    from vift_plugin.data.sampler import sampler_for_trainer

    modalities = dataset_modalities(dataset, config.visual_columns)
    if modalities is None:
        logger.warning(
            "vift_llamafactory: the training dataset has none of the columns %s; every sample counts as text.",
            list(config.visual_columns),
        )
        modalities = ["text"] * len(dataset)
    lengths = _list_lengths(dataset, "input_ids")
    return sampler_for_trainer(
        trainer,
        modalities,
        lengths,
        remainder=config.remainder,  # type: ignore[arg-type]
        length_window=config.length_window,
    )


def _make_sampler_method(original: Callable[..., Any], config: ViFTLlamaFactoryConfig) -> Callable[..., Any]:
    def _get_train_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not config.group_by_modality:
            return call_compatibly(original, self, *args, **kwargs)
        if getattr(getattr(self, "finetuning_args", None), "disable_shuffling", False):
            logger.warning("vift_llamafactory: disable_shuffling is set; keeping the dataset order (no ViFT grouping).")
            return call_compatibly(original, self, *args, **kwargs)
        dataset = sampler_dataset(self, args, kwargs)
        if dataset is None:
            return call_compatibly(original, self, *args, **kwargs)
        own = self.train_dataset
        if own is not None and own is not dataset and not _has_any_column(dataset, config.visual_columns):
            dataset = own  # transformers dropped the unused columns from the copy it passed
        return build_sampler(self, dataset, config)

    return mark_patched(
        _get_train_sampler, "ViFT (vift_llamafactory): a ModalityGroupedSampler (image vs text-only samples)."
    )


# --------------------------------------------------------------------------------------- optimizer


def role_learning_rates(args: Any, config: ViFTLlamaFactoryConfig) -> dict[str, float]:
    """``{"vision", "connector", "language"}``: the configured rates, ``learning_rate`` where unset."""
    base = float(args.learning_rate)
    rates = {"vision": config.vision_lr, "connector": config.connector_lr, "language": config.language_lr}
    return {role: base if rate is None else float(rate) for role, rate in rates.items()}


def rate_settings(config: ViFTLlamaFactoryConfig) -> dict[str, tuple[str, float]]:
    """The rates set explicitly (argument, ``--vift-*`` or ``VIFT_*``), ``{role: (setting, rate)}``."""
    rates = {"vision": config.vision_lr, "connector": config.connector_lr, "language": config.language_lr}
    return {role: (f"{role}_lr", float(rate)) for role, rate in rates.items() if rate is not None}


def _is_8bit(optimizer_cls: Any, kwargs: dict[str, Any]) -> bool:
    """bitsandbytes 8-bit optimizers keep embeddings in 32-bit state, as transformers does."""
    return "bitsandbytes" in str(optimizer_cls) and kwargs.get("optim_bits") == 8


def _custom_optimizer(trainer: Any, model: Any) -> Any | None:
    """The optimizer LLaMA-Factory's finetuning arguments select (GaLore, LoRA+, ...), or ``None``."""
    finetuning_args = getattr(trainer, "finetuning_args", None)
    if finetuning_args is None:
        return None
    custom = _custom_optimizer_factory()(model, trainer.args, finetuning_args)
    if custom is not None:
        logger.warning(
            "vift_llamafactory: the finetuning arguments select a custom optimizer (%s: GaLore, APOLLO, "
            "LoRA+, BAdam, Adam-mini or Muon); ViFT's per-module learning rates are not applied.",
            type(custom).__name__,
        )
    return custom


def _make_optimizer_method(original: Callable[..., Any], config: ViFTLlamaFactoryConfig) -> Callable[..., Any]:
    return role_optimizer_method(
        original,
        learning_rates=lambda args: role_learning_rates(args, config),
        role_of=config.role_of,
        logger=logger,
        owner="vift_llamafactory",
        unapplied="per-module learning rates",
        eight_bit=_is_8bit,
        doc="ViFT (vift_llamafactory): one optimizer group per module role and decay.",
        custom=_custom_optimizer,
        rate_settings=lambda args: rate_settings(config),
        hints=IDLE_HINTS,
    )


def _make_log_method(original: Callable[..., Any]) -> Callable[..., Any]:
    return role_log_method(original, "ViFT (vift_llamafactory): logs learning_rate/<role> beside learning_rate.")


def _log_callback_class() -> type | None:
    """LLaMA-Factory's ``LogCallback`` when it is importable and has the ``on_log``/``_write_log`` it patches."""
    try:
        cls = getattr(importlib.import_module(LOG_CALLBACK[0]), LOG_CALLBACK[1], None)
    except Exception as error:  # optional: the trainers' own logs still carry the rates
        logger.info("vift_llamafactory: %s not patched (%s); trainer_log.jsonl keeps its keys.", LOG_CALLBACK[0], error)
        return None
    if not isinstance(cls, type) or not callable(getattr(cls, "on_log", None)):
        return None
    return cls if callable(getattr(cls, "_write_log", None)) else None


def _make_callback_on_log(original: Callable[..., Any]) -> Callable[..., Any]:
    """``LogCallback.on_log`` that also writes the newest log's ``learning_rate/<role>`` keys to trainer_log.jsonl.

    Upstream builds the line from a fixed list of keys and hands it to ``self._write_log`` (on a
    thread pool); for the duration of the call an instance attribute of that name adds the rates.
    """

    def on_log(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        history = getattr(state, "log_history", None) or [{}]
        rates = {k: v for k, v in history[-1].items() if isinstance(k, str) and k.startswith(RATE_PREFIX)}
        if not rates:
            return original(self, args, state, control, **kwargs)
        write = type(self)._write_log

        def _write_log(output_dir: str, logs: dict[str, Any]) -> None:
            write(self, output_dir, {**logs, **rates})

        self._write_log = _write_log
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            self.__dict__.pop("_write_log", None)

    return mark_patched(on_log, "ViFT (vift_llamafactory): trainer_log.jsonl lines also carry learning_rate/<role>.")


# --------------------------------------------------------------------------------------- patch handle

_ACTIVE: list[LlamaFactoryPatch] = []


@dataclass(eq=False)
class LlamaFactoryPatch(MethodPatch):
    """An applied patch: ``remove()`` (or leaving a ``with`` block) restores the original methods exactly."""

    config: ViFTLlamaFactoryConfig

    owner: ClassVar[str] = "vift_llamafactory"
    error: ClassVar[type[Exception]] = ViFTPatchError
    registry: ClassVar[list[Any]] = _ACTIVE

    @property
    def trainer_classes(self) -> list[type]:
        return list(dict.fromkeys(cls for cls, name, _, _ in self.saved if name in PATCHED_METHODS))


def active_patches() -> list[LlamaFactoryPatch]:
    """Patches applied and not yet removed, oldest first."""
    return list(_ACTIVE)


def apply_vift_to_llamafactory(
    trainer_classes: Any = None,
    *,
    vision_lr: float | None = UNSET,
    connector_lr: float | None = UNSET,
    language_lr: float | None = UNSET,
    group_by_modality: bool = UNSET,
    remainder: str = UNSET,
    length_window: int | None = UNSET,
    visual_columns: Sequence[str] = ("images", "videos"),
    role_of: Callable[[str], str] | None = None,
) -> LlamaFactoryPatch:
    """Patch LLaMA-Factory's trainers for ViFT; returns a handle (also a context manager).

    Every setting left out comes from its environment variable (:data:`ENV_VARS`), else the default.

    Args:
        trainer_classes: ``"sft"``, ``"pt"`` (see :data:`TARGETS`), ``"module:Class"`` strings or classes, or a
            list of them; default: both upstream trainers.
        vision_lr / connector_lr / language_lr: per-module learning rates (``VIFT_VISION_LR``,
            ``VIFT_CONNECTOR_LR``, ``VIFT_LANGUAGE_LR``); ``None`` means the run's ``learning_rate``.
        group_by_modality: modality-grouped sampling on (default) or off (``VIFT_GROUP_BY_MODALITY``).
        remainder: ``"drop"`` (default) or ``"fill"`` the samples that do not fill a step (``VIFT_REMAINDER``).
        length_window: optimizer steps per length-sorting window, ``None`` for a whole modality
            (``VIFT_LENGTH_WINDOW``, ``none``); default 64.
        visual_columns: dataset columns whose non-empty lists make a sample an image sample.
        role_of: ``name -> "vision" | "connector" | "language"`` in place of
            :func:`vift_plugin.training.roles.parameter_role`.

    Raises:
        ViFTPatchError: a module, class, method or function is missing or incompatible, or a class is
            already patched.
    """
    config = config_from_env(
        vision_lr=vision_lr,
        connector_lr=connector_lr,
        language_lr=language_lr,
        group_by_modality=group_by_modality,
        remainder=remainder,
        length_window=length_window,
        visual_columns=tuple(visual_columns),
        role_of=role_of,
    )
    classes = resolve_trainer_classes(trainer_classes)
    _custom_optimizer_factory()
    for cls in classes:
        check_unpatched(cls, (*PATCHED_METHODS, LOG_METHOD), "vift_llamafactory", ViFTPatchError)
    callback = _log_callback_class()
    if callback is not None and getattr(callback.on_log, "_vift_patch", False):
        callback = None  # another active patch (of the other trainer) already adds the rates to the file
    import vift_plugin.data.sampler  # noqa: F401  (fail now, not inside training, when vift_plugin is missing)

    handle = LlamaFactoryPatch(config)
    makers = {"_get_train_sampler": _make_sampler_method, "create_optimizer": _make_optimizer_method}
    for cls in classes:
        for name in PATCHED_METHODS:
            handle.replace(cls, name, makers[name](getattr(cls, name), config))
        if callable(getattr(cls, LOG_METHOD, None)):
            handle.replace(cls, LOG_METHOD, _make_log_method(getattr(cls, LOG_METHOD)))
    if callback is not None:
        handle.replace(callback, "on_log", _make_callback_on_log(callback.on_log))
    _ACTIVE.append(handle)
    logger.info(
        "vift_llamafactory: patched %s; learning rates vision=%s connector=%s language=%s, grouping %s.",
        ", ".join(f"{c.__module__}.{c.__qualname__}" for c in classes),
        config.vision_lr,
        config.connector_lr,
        config.language_lr,
        "on" if config.group_by_modality else "off",
    )
    return handle


apply = apply_vift_to_llamafactory
patch_llamafactory_trainers = apply_vift_to_llamafactory
vift_llamafactory_patch = apply_vift_to_llamafactory


# --------------------------------------------------------------------------------------- data


def write_llamafactory_dataset(
    dataset_dir: str | os.PathLike[str],
    name: str = "vift_mix",
    *,
    captions: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str | os.PathLike[str]] = (),
    image_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verify_images: bool = True,
    skip_bad: bool = False,
) -> dict[str, int]:
    """Write ``{dataset_dir}/{name}.json`` and register it in ``{dataset_dir}/dataset_info.json``.

    Captions become ShareGPT-style ``conversations`` with one ``<image>`` and an absolute ``image``
    path; text instructions become ``conversations`` without an image. Other entries of an existing
    ``dataset_info.json`` are kept. Use it as ``dataset: {name}`` with ``dataset_dir: {dataset_dir}``.
    Returns ``{"captions": n, "texts": m}``.
    """
    from vift_plugin.data.export import write_llava_records
    from vift_plugin.data.files import atomic_output

    folder = Path(dataset_dir)
    counts = write_llava_records(
        folder / f"{name}.json",
        captions=captions,
        texts=texts,
        image_root=image_root,
        seed=seed,
        verify_images=verify_images,
        skip_bad=skip_bad,
        absolute_image_paths=True,
        scratch_prefix=".vift-lf-",
    )
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"},
    }
    with atomic_output(info_path) as handle:
        handle.write(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return counts


# --------------------------------------------------------------------------------------- launcher


def main(argv: Sequence[str] | None = None) -> None:
    """Apply the patch, then run LLaMA-Factory's ``run_exp()`` on the remaining arguments."""
    parser = argparse.ArgumentParser(
        description="Run LLaMA-Factory training with ViFT's modality-grouped sampling and per-module learning "
        "rates. Options other than --vift-* (e.g. a YAML file) go to LLaMA-Factory unchanged.",
    )
    parser.add_argument("--vift-vision-lr", type=float, default=UNSET)
    parser.add_argument("--vift-connector-lr", type=float, default=UNSET)
    parser.add_argument("--vift-language-lr", type=float, default=UNSET)
    parser.add_argument("--vift-no-grouping", action="store_true", help="keep LLaMA-Factory's sampler")
    parser.add_argument("--vift-remainder", choices=["drop", "fill"], default=UNSET)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    apply(
        vision_lr=ours.vift_vision_lr,
        connector_lr=ours.vift_connector_lr,
        language_lr=ours.vift_language_lr,
        group_by_modality=False if ours.vift_no_grouping else UNSET,
        remainder=ours.vift_remainder,
    )
    sys.argv = [sys.argv[0], *rest]
    from llamafactory.train.tuner import run_exp

    run_exp()


if __name__ == "__main__":
    main()
