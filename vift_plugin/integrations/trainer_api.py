"""What the integrations read and call on an upstream ``transformers.Trainer``, across transformers releases.

Upstream codebases pin old transformers (LLaVA: 4.36/4.37) while others follow new ones (LLaMA-Factory
0.9.5: up to 5.6), so each helper asks the trainer for what it has rather than assuming one release:
the sampler hook with or without a dataset argument, ``get_decay_parameter_names`` or the older rule,
``get_optimizer_cls_and_kwargs(args[, model])``. transformers and bitsandbytes are imported inside the
functions that need them, when the optimizer is built, never when an integration is imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from vift_plugin.training.roles import ROLES, parameters_by_role

RoleOf = Callable[[str], str]


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


def sampler_dataset(trainer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any | None:
    """The dataset a ``_get_train_sampler(self[, train_dataset])`` call is for, or ``None`` when it has no length."""
    dataset = args[0] if args else kwargs.get("train_dataset")
    if dataset is None:
        dataset = trainer.train_dataset
    return dataset if dataset is not None and has_length(dataset) else None


def named_roles(model: Any, role_of: RoleOf | None, owner: str = "vift") -> dict[str, list[tuple[str, Any]]]:
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
