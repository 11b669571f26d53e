"""What every integration into an upstream training codebase shares: a removable patch of its trainers.

An integration (:mod:`~vift_plugin.integrations.llava`, :mod:`~vift_plugin.integrations.llamafactory`)
replaces methods of upstream's ``transformers.Trainer`` subclasses at runtime, so that upstream's own
training script trains the ViFT way. :class:`UpstreamPatch` owns everything that does not depend on
the codebase:

- **symbol checks**: every upstream module, class and method is imported and its signature checked
  at apply time, and a missing or incompatible one raises the integration's error naming it, the
  upstream version the integration was written for, and the fix;
- **the registry** of applied patches: a handle that restores the originals exactly (``remove()``, or
  leaving a ``with`` block), and an error when a class is patched twice;
- **the two replacements**: ``_get_train_sampler`` returns a
  :class:`~vift_plugin.data.sampler.ModalityGroupedSampler`, and ``create_optimizer`` builds one
  parameter group per role (vision / connector / language, from :mod:`vift_plugin.training.roles`)
  and weight decay, warning where a rate is set for a role with nothing to train;
- **per-role rates in the logs**: ``log`` adds ``learning_rate/<role>`` beside ``learning_rate``.

A subclass says what is specific to its codebase: how to read a sample's modality from upstream's
dataset, where the rates come from, upstream's advice and hints. Nothing here imports transformers
at module level: LLaVA pins an older transformers than vift_plugin needs, so the integrations are
installed with ``pip install --no-deps`` and must import with torch, numpy and Pillow alone.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from vift_plugin.data.sampler import ModalityGroupedSampler
from vift_plugin.integrations.settings import Settings
from vift_plugin.integrations.trainer_api import (
    call_compatibly,
    decay_parameter_names,
    is_optimizer_factory,
    keep_embeddings_32bit,
    named_roles,
    optimizer_cls_and_kwargs,
    sampler_dataset,
)
from vift_plugin.training.roles import (
    idle_rate_messages,
    logged_learning_rates,
    role_param_groups,
    track_step_learning_rates,
)

SAMPLER_METHOD = "_get_train_sampler"
OPTIMIZER_METHOD = "create_optimizer"
PATCHED_METHODS = (SAMPLER_METHOD, OPTIMIZER_METHOD)
LOG_METHOD = "log"  # replaced with create_optimizer: adds the per-role rates to the logs
RATE_PREFIX = "learning_rate/"


@dataclass(frozen=True)
class Target:
    """One upstream class an integration knows: ``module.cls``, written for ``upstream`` (a version)."""

    module: str
    cls: str
    upstream: str


class PatchError(RuntimeError):
    """A symbol a patch needs is missing or incompatible, or the patch is applied twice."""


# --------------------------------------------------------------------------------------- helpers


def mark_patched(function: Callable[..., Any], doc: str) -> Callable[..., Any]:
    """``function`` with docstring ``doc``, marked as a ViFT replacement (what :class:`UpstreamPatch` checks)."""
    function.__doc__ = doc
    function._vift_patch = True  # type: ignore[attr-defined]
    return function


def is_patched(function: Any) -> bool:
    """Whether ``function`` is a ViFT replacement (:func:`mark_patched`)."""
    return bool(getattr(function, "_vift_patch", False))


# --------------------------------------------------------------------------------------- the patch

SettingsT = TypeVar("SettingsT", bound=Settings)
_Patch = TypeVar("_Patch", bound="UpstreamPatch[Any]")


@dataclass(eq=False)
class UpstreamPatch(Generic[SettingsT]):
    """Methods replaced on upstream classes: ``remove()`` (or leaving a ``with`` block) restores them exactly.

    ``config`` holds the integration's settings (its frozen config dataclass). A subclass is one
    integration: it sets ``owner`` (the prefix of messages), ``error`` (the exception raised), ``logger``,
    ``hints`` (why upstream may freeze a role), ``unapplied`` and the replacements' docstrings
    (``sampler_doc``, ``optimizer_doc``), and implements :meth:`advice`, :meth:`build_sampler`,
    :meth:`learning_rates` and :meth:`rate_settings`; it may refine :meth:`keeps_upstream_sampler`,
    :meth:`has_sampler_data`, :meth:`custom_optimizer` and :meth:`is_8bit`. Each subclass gets its own
    :attr:`registry` of applied patches.
    """

    config: SettingsT
    # (class, method name, whether the class defined it itself, the original class attribute)
    saved: list[tuple[type, str, bool, Any]] = field(default_factory=list, kw_only=True)
    active: bool = field(default=True, kw_only=True)

    owner: ClassVar[str] = "vift"
    error: ClassVar[type[Exception]] = PatchError
    registry: ClassVar[list[Any]] = []
    logger: ClassVar[logging.Logger] = logging.getLogger(__name__)
    hints: ClassVar[dict[str, str]] = {}
    unapplied: ClassVar[str] = "per-role learning rates"  # what is skipped where the optimizer makes its groups
    sampler_doc: ClassVar[str] = "ViFT: a ModalityGroupedSampler."
    optimizer_doc: ClassVar[str] = "ViFT: one optimizer group per role (vision/connector/language) and decay."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "registry" not in cls.__dict__:
            cls.registry = []

    # ----------------------------------------------------------------------------------- symbol checks

    @classmethod
    def advice(cls, target: Target | None) -> str:
        """What to do about a missing symbol of ``target`` (``None``: a class the user passed)."""
        raise NotImplementedError

    @classmethod
    def import_symbol(cls, module_name: str, attribute: str, target: Target | None, *, kind: str = "") -> Any:
        """``module_name.attribute``, or the error naming what is missing; ``kind="class"`` requires a class."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise cls.error(
                f"{cls.owner}: cannot import module {module_name!r} ({type(error).__name__}: {error}). "
                + cls.advice(target)
            ) from error
        value = getattr(module, attribute, None)
        if value is None or (kind == "class" and not isinstance(value, type)):
            what = f"{kind} " if kind else ""
            raise cls.error(f"{cls.owner}: module {module_name!r} has no {what}{attribute!r}. " + cls.advice(target))
        return value

    @classmethod
    def check_signature(
        cls, function: Any, where: str, call: tuple[Any, ...], described: str, target: Target | None
    ) -> None:
        """``function`` can be called with ``call`` (the patch calls it ``described``)."""
        if not callable(function):
            raise cls.error(f"{cls.owner}: {where} is missing or not callable. " + cls.advice(target))
        try:
            inspect.signature(function).bind(*call)
        except (TypeError, ValueError) as error:
            raise cls.error(
                f"{cls.owner}: {where} has an incompatible signature {inspect.signature(function)} "
                f"(the patch calls it {described}: {error}). " + cls.advice(target)
            ) from error

    @classmethod
    def check_methods(cls, trainer_cls: type, target: Target | None) -> None:
        """Each patched method exists and can be called the way the patch calls it (``self`` only)."""
        where = f"{trainer_cls.__module__}.{trainer_cls.__qualname__}"
        for name in PATCHED_METHODS:
            method = getattr(trainer_cls, name, None)
            if method is None or not callable(method):
                raise cls.error(f"{cls.owner}: {where} has no method {name!r}. " + cls.advice(target))
            cls.check_signature(method, f"{where}.{name}", (object(),), "with self only", target)

    @classmethod
    def trainer_class(cls, target: Target, *, upstream: bool = True) -> type:
        """``target``'s class, imported and checked (``upstream=False``: a class the user named)."""
        known = target if upstream else None
        trainer_cls: type = cls.import_symbol(target.module, target.cls, known, kind="class")
        cls.check_methods(trainer_cls, known)
        return trainer_cls

    @classmethod
    def named_class(cls, dotted: str) -> type:
        """A user's ``"module:Class"``, imported and checked."""
        module_name, _, class_name = dotted.partition(":")
        return cls.trainer_class(Target(module_name, class_name, dotted), upstream=False)

    @classmethod
    def check_unpatched(cls, trainer_cls: type) -> None:
        """Raise where one of ``trainer_cls``'s methods is already a ViFT replacement."""
        for name in (*PATCHED_METHODS, LOG_METHOD):
            if is_patched(getattr(trainer_cls, name, None)):
                raise cls.error(
                    f"{cls.owner}: {trainer_cls.__qualname__}.{name} is already patched for ViFT; remove() the "
                    "first patch before applying another."
                )

    # ----------------------------------------------------------------------------------- registry

    @classmethod
    def active_patches(cls: type[_Patch]) -> list[_Patch]:
        """Patches of this integration applied and not yet removed, oldest first."""
        return list(cls.registry)

    def replace(self, cls: type, name: str, replacement: Callable[..., Any]) -> None:
        """Set ``cls.name`` to ``replacement`` (named ``name``), remembering what to restore."""
        owned = name in cls.__dict__
        replacement.__name__ = replacement.__qualname__ = name
        self.saved.append((cls, name, owned, cls.__dict__[name] if owned else None))
        setattr(cls, name, replacement)

    def patch_trainer(self, trainer_cls: type, *, sampler: bool = True, optimizer: bool = True) -> None:
        """Replace ``_get_train_sampler`` (``sampler``), ``create_optimizer`` and ``log`` (``optimizer``)."""
        if sampler:
            self.replace(trainer_cls, SAMPLER_METHOD, self.sampler_method(getattr(trainer_cls, SAMPLER_METHOD)))
        if optimizer:
            self.replace(trainer_cls, OPTIMIZER_METHOD, self.optimizer_method(getattr(trainer_cls, OPTIMIZER_METHOD)))
            if callable(getattr(trainer_cls, LOG_METHOD, None)):
                self.replace(trainer_cls, LOG_METHOD, self.log_method(getattr(trainer_cls, LOG_METHOD)))

    def register(self: _Patch) -> _Patch:
        """Add this patch to the registry (once its methods are replaced); returns it."""
        self.registry.append(self)
        return self

    def remove(self) -> None:
        """Restore the originals; a second call does nothing."""
        if not self.active:
            return
        for cls, name, _, _ in self.saved:
            if not is_patched(cls.__dict__.get(name)):
                raise self.error(
                    f"{self.owner}: {cls.__qualname__}.{name} was replaced after the ViFT patch; "
                    "remove that patch first."
                )
        for cls, name, owned, original in self.saved:
            if owned:
                setattr(cls, name, original)
            else:
                delattr(cls, name)
        self.active = False
        if self in self.registry:
            self.registry.remove(self)

    def __enter__(self: _Patch) -> _Patch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # ----------------------------------------------------------------------------------- sampler

    def build_sampler(self, trainer: Any, dataset: Any) -> ModalityGroupedSampler:
        """The sampler the patched ``_get_train_sampler`` returns for ``dataset``."""
        raise NotImplementedError

    def keeps_upstream_sampler(self, trainer: Any) -> bool:
        """Whether ``trainer`` keeps upstream's own sampler (grouping off, or upstream's settings say so)."""
        return False

    def has_sampler_data(self, dataset: Any) -> bool:
        """Whether ``dataset`` has what :meth:`build_sampler` reads; else the trainer's own dataset is read.

        transformers may pass the sampler hook a copy of the dataset without the columns it does not use.
        """
        return True

    def sampler_method(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A ``_get_train_sampler(self[, train_dataset])`` replacement; ``original`` where grouping cannot apply."""
        patch = self

        def _get_train_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
            if patch.keeps_upstream_sampler(self):
                return call_compatibly(original, self, *args, **kwargs)
            dataset = sampler_dataset(self, args, kwargs)
            if dataset is None:
                return call_compatibly(original, self, *args, **kwargs)
            own = self.train_dataset
            if own is not None and own is not dataset and not patch.has_sampler_data(dataset):
                dataset = own
            return patch.build_sampler(self, dataset)

        return mark_patched(_get_train_sampler, self.sampler_doc)

    # ----------------------------------------------------------------------------------- optimizer

    def learning_rates(self, args: Any) -> dict[str, float]:
        """``{"vision", "connector", "language"}`` learning rates for a run with training arguments ``args``."""
        raise NotImplementedError

    def rate_settings(self, args: Any) -> dict[str, tuple[str, float]]:
        """The rates set explicitly, ``{role: (setting, rate)}``; a set rate of a role that trains nothing warns."""
        raise NotImplementedError

    def custom_optimizer(self, trainer: Any, model: Any) -> Any | None:
        """An optimizer upstream's own settings select instead of the role groups, or ``None``."""
        return None

    def is_8bit(self, optimizer_cls: Any, kwargs: dict[str, Any]) -> bool:
        """bitsandbytes 8-bit optimizers keep embeddings in 32-bit state, as transformers does."""
        return "bitsandbytes" in str(optimizer_cls) and kwargs.get("optim_bits") == 8

    def build_optimizer(self, trainer: Any, model: Any) -> Any | None:
        """The trainer's optimizer class over one group per (role, decay), or ``None`` where that class builds its own.

        Warns (on the main process) for each rate :meth:`rate_settings` reports as set whose role has no
        trainable parameter: upstream recipes freeze modules on their own (LLaVA's vision tower always,
        LLaMA-Factory's vision tower and projector by default), which would make the rate silently unused.
        """
        owner, logger = self.owner, self.logger
        optimizer_cls, optimizer_kwargs = optimizer_cls_and_kwargs(trainer, model)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            logger.warning(
                f"{owner}: optim=%s builds its own parameter groups; {self.unapplied} are not applied.",
                getattr(trainer.args, "optim", "?"),
            )
            return None
        rates = self.learning_rates(trainer.args)
        roles = named_roles(model, self.config.role_of, owner)
        main_process = getattr(trainer, "is_world_process_zero", None)
        if main_process is None or main_process():
            for message in idle_rate_messages(roles, self.rate_settings(trainer.args), self.hints):
                logger.warning(f"{owner}: {message}")
        param_groups = role_param_groups(
            roles, decay_parameter_names(trainer, model), float(trainer.args.weight_decay), rates
        )
        if not param_groups:
            raise ValueError(f"{owner}: the model has no trainable parameters.")
        optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        track_step_learning_rates(optimizer)
        if self.is_8bit(optimizer_cls, optimizer_kwargs):
            keep_embeddings_32bit(model)
        logger.info(
            f"{owner}: learning rates vision %g, connector %g, language %g.",
            rates["vision"],
            rates["connector"],
            rates["language"],
        )
        return optimizer

    def optimizer_method(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A ``create_optimizer`` replacement: :meth:`custom_optimizer`, else :meth:`build_optimizer`.

        An optimizer already set on the trainer is kept. ``original`` always runs last: it sees the
        optimizer set and returns it, wrapping it where it does (and builds its own where ours is ``None``).
        """
        patch = self

        def create_optimizer(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.optimizer is None:
                model = args[0] if args else kwargs.get("model")
                model = self.model if model is None else model
                optimizer = patch.custom_optimizer(self, model)
                if optimizer is None:
                    optimizer = patch.build_optimizer(self, model)
                if optimizer is not None:
                    self.optimizer = optimizer
            return call_compatibly(original, self, *args, **kwargs)

        return mark_patched(create_optimizer, self.optimizer_doc)

    def log_method(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A ``log`` replacement that adds each role's rate (``learning_rate/vision``, ...) to the logs.

        transformers' ``learning_rate`` is the first parameter group's rate, so under per-role groups it
        shows one role only. The keys are added wherever ``learning_rate`` is logged and the optimizer
        has role groups; everything that reads the logs (``log_history``, ``trainer_state.json``, the
        console, TensorBoard or W&B) then sees them. ``original`` does the logging, with any extra arguments.
        """

        def log(self: Any, logs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            optimizer = getattr(self, "optimizer", None)
            if isinstance(logs, dict) and "learning_rate" in logs and optimizer is not None:
                logs.update(logged_learning_rates(optimizer, logs["learning_rate"]))
            return original(self, logs, *args, **kwargs)

        return mark_patched(log, f"ViFT ({self.owner}): logs learning_rate/<role> beside learning_rate.")
