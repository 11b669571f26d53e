"""Helpers for patching upstream ``transformers.Trainer`` subclasses (LLaVA, LLaMA-Factory) at runtime.

Used by the patches under ``patches/``. Nothing here imports transformers at module level: LLaVA pins
an older transformers than vift_plugin needs, and the patches must import without it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import nn

from vift_plugin.training.roles import (
    ROLES,
    idle_rate_messages,
    logged_learning_rates,
    parameters_by_role,
    role_param_groups,
    track_step_learning_rates,
)

RateSettings = Callable[[Any], dict[str, tuple[str, float]]]


def has_length(dataset: Any) -> bool:
    """Whether ``len(dataset)`` works (an iterable dataset has none)."""
    try:
        return len(dataset) is not None
    except TypeError:
        return False


def call_compatibly(function: Callable[..., Any], owner: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(owner, *args, **kwargs)``, or ``function(owner)`` when it does not take those arguments.

    Older upstream trainers define ``_get_train_sampler(self)``, from before transformers passed the dataset.
    """
    try:
        inspect.signature(function).bind(owner, *args, **kwargs)
    except TypeError:
        return function(owner)
    return function(owner, *args, **kwargs)


def named_roles(
    model: Any, role_of: Callable[[str], str] | None, owner: str = "vift"
) -> dict[str, list[tuple[str, Any]]]:
    """``{role: [(name, parameter), ...]}`` by :func:`parameters_by_role`, or by ``role_of(name)`` when given.

    ``owner`` prefixes the error raised when ``role_of`` returns something other than a role.
    """
    if role_of is None:
        return {str(role): named for role, named in parameters_by_role(model).items()}
    groups: dict[str, list[tuple[str, Any]]] = {role: [] for role in ROLES}
    for name, parameter in model.named_parameters():
        role = role_of(name)
        if role not in groups:
            raise ValueError(f"{owner}: role_of({name!r}) returned {role!r}; expected one of {ROLES}.")
        groups[role].append((name, parameter))
    return groups


def decay_parameter_names(trainer: Any, model: Any) -> set[str]:
    """The trainer's own rule where it has one (transformers >= 4.3x), else LayerNorm and biases excluded."""
    rule = getattr(trainer, "get_decay_parameter_names", None)
    if rule is not None:
        return set(rule(model))
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    return {name for name in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in name}


def optimizer_cls_and_kwargs(trainer: Any, model: Any) -> tuple[Any, dict[str, Any]]:
    """The trainer's preset ``optimizer_cls_and_kwargs``, else ``get_optimizer_cls_and_kwargs(args[, model])``."""
    preset = getattr(trainer, "optimizer_cls_and_kwargs", None)
    if preset is not None:
        return preset[0], dict(preset[1])
    getter = trainer.get_optimizer_cls_and_kwargs
    try:
        inspect.signature(getter).bind(trainer.args, model)
    except TypeError:
        cls, kwargs = getter(trainer.args)
    else:
        cls, kwargs = getter(trainer.args, model)
    return cls, dict(kwargs)


def is_optimizer_factory(optimizer_cls: Any) -> bool:
    """transformers' ``is_optimizer_factory`` where it exists (optimizers that build their own groups)."""
    try:
        from transformers.trainer import is_optimizer_factory as check
    except ImportError:
        return False
    return bool(check(optimizer_cls))


def keep_embeddings_32bit(model: Any) -> None:
    """Register 32-bit optimizer state for every embedding with bitsandbytes (for its 8-bit optimizers)."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def sampler_dataset(trainer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any | None:
    """The dataset a ``_get_train_sampler(self[, train_dataset])`` call is for, or ``None`` when it has no length."""
    dataset = args[0] if args else kwargs.get("train_dataset")
    if dataset is None:
        dataset = trainer.train_dataset
    return dataset if dataset is not None and has_length(dataset) else None


def _role_optimizer(
    trainer: Any,
    model: Any,
    learning_rates: Callable[[Any], dict[str, float]],
    role_of: Callable[[str], str] | None,
    *,
    logger: logging.Logger,
    owner: str,
    unapplied: str,
    eight_bit: Callable[[Any, dict[str, Any]], bool],
    rate_settings: RateSettings | None = None,
    hints: dict[str, str] | None = None,
) -> Any | None:
    """The trainer's optimizer class over one group per (role, decay), or ``None`` where that class builds its own.

    Warns (on the main process) for each rate ``rate_settings(args)`` reports as set whose role has no
    trainable parameter: upstream recipes freeze modules on their own (LLaVA's vision tower always,
    LLaMA-Factory's vision tower and projector by default), which would make the rate silently unused.
    """
    optimizer_cls, optimizer_kwargs = optimizer_cls_and_kwargs(trainer, model)
    if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
        logger.warning(
            f"{owner}: optim=%s builds its own parameter groups; {unapplied} are not applied.",
            getattr(trainer.args, "optim", "?"),
        )
        return None
    rates = learning_rates(trainer.args)
    roles = named_roles(model, role_of, owner)
    main_process = getattr(trainer, "is_world_process_zero", None)
    if rate_settings is not None and (main_process is None or main_process()):
        for message in idle_rate_messages(roles, rate_settings(trainer.args), hints):
            logger.warning(f"{owner}: {message}")
    param_groups = role_param_groups(
        roles,
        decay_parameter_names(trainer, model),
        float(trainer.args.weight_decay),
        rates,
    )
    if not param_groups:
        raise ValueError(f"{owner}: the model has no trainable parameters.")
    optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
    track_step_learning_rates(optimizer)
    if eight_bit(optimizer_cls, optimizer_kwargs):
        keep_embeddings_32bit(model)
    logger.info(
        f"{owner}: learning rates vision %g, connector %g, language %g.",
        rates["vision"],
        rates["connector"],
        rates["language"],
    )
    return optimizer


def role_optimizer_method(
    original: Callable[..., Any],
    *,
    learning_rates: Callable[[Any], dict[str, float]],
    role_of: Callable[[str], str] | None,
    logger: logging.Logger,
    owner: str,
    unapplied: str,
    eight_bit: Callable[[Any, dict[str, Any]], bool],
    doc: str,
    custom: Callable[[Any, Any], Any | None] | None = None,
    rate_settings: RateSettings | None = None,
    hints: dict[str, str] | None = None,
) -> Callable[..., Any]:
    """A ``create_optimizer`` replacement: one optimizer group per (role, decay) at ``learning_rates(args)``.

    ``custom(trainer, model)`` may return an optimizer that upstream's own settings select instead.
    ``rate_settings(args)`` names the rates set explicitly (``{role: (setting, rate)}``), to warn where
    such a role has no trainable parameter; ``hints`` says per role why upstream may have frozen it.
    Where the optimizer class builds its own groups, ``original`` runs unchanged (logged; ``unapplied``
    names what is skipped). Embeddings keep 32-bit state where ``eight_bit(optimizer_cls, kwargs)``.
    ``original`` always runs last: it sees the optimizer set and returns it, wrapping it where it does.
    """

    def create_optimizer(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.optimizer is None:
            model = args[0] if args else kwargs.get("model")
            model = self.model if model is None else model
            optimizer = custom(self, model) if custom is not None else None
            if optimizer is None:
                optimizer = _role_optimizer(
                    self,
                    model,
                    learning_rates,
                    role_of,
                    logger=logger,
                    owner=owner,
                    unapplied=unapplied,
                    eight_bit=eight_bit,
                    rate_settings=rate_settings,
                    hints=hints,
                )
            if optimizer is not None:
                self.optimizer = optimizer
        return call_compatibly(original, self, *args, **kwargs)

    return mark_patched(create_optimizer, doc)


def role_log_method(original: Callable[..., Any], doc: str) -> Callable[..., Any]:
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

    return mark_patched(log, doc)


_Patch = TypeVar("_Patch", bound="MethodPatch")


class PatchError(RuntimeError):
    """A symbol a patch needs is missing or incompatible, or the patch is applied twice."""


def check_unpatched(cls: type, names: Iterable[str], owner: str, error: type[Exception] = PatchError) -> None:
    """Raise ``error`` where one of ``cls``'s methods ``names`` is already a ViFT replacement."""
    for name in names:
        if getattr(getattr(cls, name, None), "_vift_patch", False):
            raise error(
                f"{owner}: {cls.__qualname__}.{name} is already patched for ViFT; remove() the first "
                "patch before applying another."
            )


@dataclass(eq=False)
class MethodPatch:
    """Methods replaced on classes: ``remove()`` (or leaving a ``with`` block) restores the originals exactly.

    Subclasses set ``owner`` (the prefix of error messages), ``error`` (the exception raised) and
    ``registry`` (the list of applied patches that :meth:`remove` takes this one out of).
    """

    # (class, method name, whether the class defined it itself, the original class attribute)
    saved: list[tuple[type, str, bool, Any]] = field(default_factory=list, kw_only=True)
    active: bool = field(default=True, kw_only=True)

    owner: ClassVar[str] = "vift"
    error: ClassVar[type[Exception]] = PatchError
    registry: ClassVar[list[Any]] = []

    def replace(self, cls: type, name: str, replacement: Callable[..., Any]) -> None:
        """Set ``cls.name`` to ``replacement`` (named ``name``), remembering what to restore."""
        owned = name in cls.__dict__
        replacement.__name__ = replacement.__qualname__ = name
        self.saved.append((cls, name, owned, cls.__dict__[name] if owned else None))
        setattr(cls, name, replacement)

    def remove(self) -> None:
        """Restore the originals; a second call does nothing."""
        if not self.active:
            return
        for cls, name, _, _ in self.saved:
            if not getattr(cls.__dict__.get(name), "_vift_patch", False):
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


def mark_patched(function: Callable[..., Any], doc: str) -> Callable[..., Any]:
    """``function`` with docstring ``doc``, marked as a ViFT replacement (what :class:`MethodPatch` checks)."""
    function.__doc__ = doc
    function._vift_patch = True  # type: ignore[attr-defined]
    return function
