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

    from vift_plugin.integrations import llamafactory   # or: import vift_llamafactory (patches/llama_factory)
    llamafactory.apply(vision_lr=2e-6, connector_lr=1e-5)
    from llamafactory.train.tuner import run_exp
    run_exp()                                   # reads the YAML named on the command line

or run it in place of ``llamafactory-cli train`` (``VIFT_*`` environment variables or ``--vift-*``
options; the rest of the command line goes to LLaMA-Factory)::

    VIFT_VISION_LR=2e-6 torchrun --nproc_per_node 4 patches/llama_factory/vift_llamafactory.py qwen2vl_sft.yaml
    VIFT_VISION_LR=2e-6 torchrun --nproc_per_node 4 -m vift_plugin.integrations.llamafactory qwen2vl_sft.yaml

Written for hiyouga/LLaMA-Factory 0.9.x (checked against 0.9.3/main): ``llamafactory.train.sft.trainer.
CustomSeq2SeqTrainer`` and ``llamafactory.train.pt.trainer.CustomTrainer`` with
``_get_train_sampler(self, *args, **kwargs)`` and ``create_optimizer(self)``, and
``llamafactory.train.trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)``.
Every symbol is checked when the patch is applied. No upstream code is copied. Imports torch, numpy
and Pillow only (LLaMA-Factory caps transformers below what vift_plugin needs).
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
from vift_plugin.integrations.base import (
    PATCHED_METHODS,
    RATE_PREFIX,
    PatchError,
    Target,
    UpstreamPatch,
    is_patched,
    mark_patched,
)
from vift_plugin.integrations.llamafactory_data import (
    dataset_modalities,
    has_any_column,
    list_lengths,
    write_llamafactory_dataset,
)
from vift_plugin.integrations.settings import UNSET, check_settings, env_bool, env_float, env_window

__all__ = [
    "ENV_VARS",
    "TARGETS",
    "LlamaFactoryPatch",
    "ViFTLlamaFactoryConfig",
    "ViFTPatchError",
    "active_patches",
    "apply",
    "build_sampler",
    "config_from_env",
    "main",
    "write_llamafactory_dataset",
]

logger = logging.getLogger("vift_llamafactory")

UPSTREAM = "hiyouga/LLaMA-Factory 0.9.x (0.9.3 / main)"
CUSTOM_OPTIMIZER = ("llamafactory.train.trainer_utils", "create_custom_optimizer")
# The callback that writes trainer_log.jsonl from a fixed list of keys; patched where it exists.
LOG_CALLBACK = ("llamafactory.train.callbacks", "LogCallback")
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

TARGETS: dict[str, Target] = {
    "sft": Target("llamafactory.train.sft.trainer", "CustomSeq2SeqTrainer", UPSTREAM),
    "pt": Target("llamafactory.train.pt.trainer", "CustomTrainer", UPSTREAM),
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
    remainder: Remainder = "drop"
    length_window: int | None = 64
    visual_columns: tuple[str, ...] = ("images", "videos")
    role_of: Callable[[str], str] | None = None


def config_from_env(**given: Any) -> ViFTLlamaFactoryConfig:
    """The settings: each ``given`` value that is not ``UNSET``, else its ``VIFT_*`` variable, else the default."""
    defaults = ViFTLlamaFactoryConfig()
    env: dict[str, Any] = {
        "vision_lr": env_float(ENV_VARS["vision_lr"]),
        "connector_lr": env_float(ENV_VARS["connector_lr"]),
        "language_lr": env_float(ENV_VARS["language_lr"]),
        "group_by_modality": env_bool(ENV_VARS["group_by_modality"]),
        "remainder": os.environ.get(ENV_VARS["remainder"], "").strip() or None,
        "length_window": env_window(ENV_VARS["length_window"]),
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
    check_settings(config, ("vision_lr", "connector_lr", "language_lr"))
    if not config.visual_columns:
        raise ValueError("visual_columns must name at least one column (LLaMA-Factory: 'images', 'videos').")
    return config


# --------------------------------------------------------------------------------------- sampler


def build_sampler(trainer: Any, dataset: Any, config: ViFTLlamaFactoryConfig) -> ModalityGroupedSampler:
    """The :class:`ModalityGroupedSampler` the patched ``_get_train_sampler`` returns."""
    modalities = dataset_modalities(dataset, config.visual_columns)
    if modalities is None:
        logger.warning(
            "vift_llamafactory: the training dataset has none of the columns %s; every sample counts as text.",
            list(config.visual_columns),
        )
        modalities = ["text"] * len(dataset)
    lengths = list_lengths(dataset, "input_ids")
    return sampler_for_trainer(
        trainer, modalities, lengths, remainder=config.remainder, length_window=config.length_window
    )


# --------------------------------------------------------------------------------------- trainer_log.jsonl


def _log_callback_class() -> type[Any] | None:
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


@dataclass(eq=False)
class LlamaFactoryPatch(UpstreamPatch[ViFTLlamaFactoryConfig]):
    """An applied patch: ``remove()`` (or leaving a ``with`` block) restores the original methods exactly."""

    owner: ClassVar[str] = "vift_llamafactory"
    error: ClassVar[type[Exception]] = ViFTPatchError
    logger: ClassVar[logging.Logger] = logger
    hints: ClassVar[dict[str, str]] = IDLE_HINTS
    unapplied: ClassVar[str] = "per-module learning rates"
    sampler_doc: ClassVar[str] = "ViFT (vift_llamafactory): a ModalityGroupedSampler (image vs text-only samples)."
    optimizer_doc: ClassVar[str] = "ViFT (vift_llamafactory): one optimizer group per module role and decay."

    @property
    def trainer_classes(self) -> list[type]:
        return list(dict.fromkeys(cls for cls, name, _, _ in self.saved if name in PATCHED_METHODS))

    @classmethod
    def advice(cls, target: Target | None) -> str:
        if target is None:
            return "The class needs _get_train_sampler(self, *args, **kwargs) and create_optimizer(self)."
        return (
            f"This patch was written for {target.upstream}. Install that version (pip install "
            "'llamafactory>=0.9,<0.10' or pip install -e . in its checkout), or pass trainer_classes= your own "
            "trainer classes if your fork renamed them."
        )

    @classmethod
    def custom_optimizer_factory(cls) -> Callable[..., Any]:
        """``llamafactory.train.trainer_utils.create_custom_optimizer``, checked."""
        target = TARGETS["sft"]  # for the advice: written for LLaMA-Factory 0.9.x
        function: Callable[..., Any] = cls.import_symbol(*CUSTOM_OPTIMIZER, target)
        cls.check_signature(
            function,
            ".".join(CUSTOM_OPTIMIZER),
            (None, None, None),
            "as create_custom_optimizer(model, training_args, finetuning_args)",
            target,
        )
        return function

    def keeps_upstream_sampler(self, trainer: Any) -> bool:
        if not self.config.group_by_modality:
            return True
        if getattr(getattr(trainer, "finetuning_args", None), "disable_shuffling", False):
            logger.warning("vift_llamafactory: disable_shuffling is set; keeping the dataset order (no ViFT grouping).")
            return True
        return False

    def has_sampler_data(self, dataset: Any) -> bool:
        return has_any_column(dataset, self.config.visual_columns)

    def build_sampler(self, trainer: Any, dataset: Any) -> ModalityGroupedSampler:
        return build_sampler(trainer, dataset, self.config)

    def learning_rates(self, args: Any) -> dict[str, float]:
        """``{"vision", "connector", "language"}``: the configured rates, ``learning_rate`` where unset."""
        base = float(args.learning_rate)
        config = self.config
        rates = {"vision": config.vision_lr, "connector": config.connector_lr, "language": config.language_lr}
        return {role: base if rate is None else float(rate) for role, rate in rates.items()}

    def rate_settings(self, args: Any) -> dict[str, tuple[str, float]]:
        """The rates set explicitly (argument, ``--vift-*`` or ``VIFT_*``), ``{role: (setting, rate)}``."""
        config = self.config
        rates = {"vision": config.vision_lr, "connector": config.connector_lr, "language": config.language_lr}
        return {role: (f"{role}_lr", float(rate)) for role, rate in rates.items() if rate is not None}

    def custom_optimizer(self, trainer: Any, model: Any) -> Any | None:
        """The optimizer LLaMA-Factory's finetuning arguments select (GaLore, LoRA+, ...), or ``None``."""
        finetuning_args = getattr(trainer, "finetuning_args", None)
        if finetuning_args is None:
            return None
        custom = self.custom_optimizer_factory()(model, trainer.args, finetuning_args)
        if custom is not None:
            logger.warning(
                "vift_llamafactory: the finetuning arguments select a custom optimizer (%s: GaLore, APOLLO, "
                "LoRA+, BAdam, Adam-mini or Muon); ViFT's per-module learning rates are not applied.",
                type(custom).__name__,
            )
        return custom


def active_patches() -> list[LlamaFactoryPatch]:
    """Patches applied and not yet removed, oldest first."""
    return LlamaFactoryPatch.active_patches()


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
            LlamaFactoryPatch.check_methods(item, None)
            cls = item
        elif isinstance(item, str) and item in TARGETS:
            cls = LlamaFactoryPatch.trainer_class(TARGETS[item])
        elif isinstance(item, str) and ":" in item:
            cls = LlamaFactoryPatch.named_class(item)
        else:
            raise ValueError(
                f"trainer_classes items must be {sorted(TARGETS)}, 'module:Class' or classes; got {item!r}."
            )
        if cls not in classes:
            classes.append(cls)
    return classes


def apply(
    trainer_classes: Any = None,
    *,
    vision_lr: float | None = UNSET,
    connector_lr: float | None = UNSET,
    language_lr: float | None = UNSET,
    group_by_modality: bool = UNSET,
    remainder: Remainder = UNSET,
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
    LlamaFactoryPatch.custom_optimizer_factory()
    for cls in classes:
        LlamaFactoryPatch.check_unpatched(cls)
    callback = _log_callback_class()
    if callback is not None and is_patched(callback.on_log):
        callback = None  # another active patch (of the other trainer) already adds the rates to the file
    handle = LlamaFactoryPatch(config)
    for cls in classes:
        handle.patch_trainer(cls)
    if callback is not None:
        handle.replace(callback, "on_log", _make_callback_on_log(callback.on_log))
    handle.register()
    logger.info(
        "vift_llamafactory: patched %s; learning rates vision=%s connector=%s language=%s, grouping %s.",
        ", ".join(f"{c.__module__}.{c.__qualname__}" for c in classes),
        config.vision_lr,
        config.connector_lr,
        config.language_lr,
        "on" if config.group_by_modality else "off",
    )
    return handle


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


if __name__ == "__main__":  # python -m: run the imported module's main, so there is one registry of patches
    from vift_plugin.integrations.llamafactory import main as _main

    _main()
