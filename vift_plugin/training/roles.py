"""Module roles of a vision-language model: vision encoder, connector (projector), language model.

ViFT trains the three with different learning rates (paper: 1e-5, 2e-6, 1e-5) and recipes freeze
them separately, so every parameter gets a role from its name. The generic rule covers the Hugging
Face families (``vision_tower``/``visual``/``vision_model`` are the encoder; ``multi_modal_projector``/
``connector``/``mm_projector`` the connector; the rest the language model); a per-``model_type`` table
refines layouts where the connector lives inside the vision module (Qwen2-VL's ``visual.merger``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import nn

Role = Literal["vision", "connector", "language"]
ROLES: tuple[Role, ...] = ("vision", "connector", "language")

GENERIC_PATTERNS: dict[str, tuple[str, ...]] = {
    "connector": ("multi_modal_projector", "mm_projector", "connector", "image_newline", "mlp1", "merger"),
    "vision": ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder", "vpm"),
}
MODEL_TYPE_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    "qwen2_vl": {"connector": ("visual.merger",), "vision": ("visual",)},
    "qwen2_5_vl": {"connector": ("visual.merger",), "vision": ("visual",)},
    "qwen3_vl": {"connector": ("visual.merger", "visual.deepstack_merger_list"), "vision": ("visual",)},
    "llava_next": {"connector": ("multi_modal_projector", "image_newline"), "vision": ("vision_tower",)},
}


MODALITY_ROLES: dict[str, tuple[Role, ...]] = {"image": ROLES, "text": ("language",)}


def check_modalities_train(counts: dict[str, int], trainable: Iterable[str]) -> None:
    """Raise when a data kind reaches no trainable role: text-only batches pass through the language
    model alone, so a stage that trains only the vision encoder or connector gets no gradient from them
    (torch fails mid-run with "element 0 of tensors does not require grad")."""
    roles = set(trainable)
    for modality, count in sorted(counts.items()):
        reached = MODALITY_ROLES.get(modality, ROLES)
        if count and not roles.intersection(reached):
            raise ValueError(
                f"{count} {modality} sample(s) but only {', '.join(sorted(roles)) or 'no role'} train(s): "
                f"{modality} batches pass through {' and '.join(reached)} alone and would train nothing. "
                f"Unfreeze the language model (freeze_language false, or use_lora with lora_target language), "
                f"or leave the {modality} data out of this stage."
            )


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", ""))


def _matches(name: str, pattern: str) -> bool:
    return f".{pattern}." in f".{name}."


def parameter_role(name: str, model_type: str = "") -> Role:
    """The role of the parameter (or module) called ``name`` in a model of ``model_type``."""
    patterns = MODEL_TYPE_PATTERNS.get(model_type, GENERIC_PATTERNS)
    role: Role
    for role in ("connector", "vision"):
        if any(_matches(name, pattern) for pattern in patterns[role]):
            return role
    return "language"


def parameters_by_role(model: nn.Module) -> dict[Role, list[tuple[str, nn.Parameter]]]:
    """``{role: [(name, parameter), ...]}`` over ``model.named_parameters()`` (PEFT-wrapped too)."""
    model_type = _model_type(_base(model))
    groups: dict[Role, list[tuple[str, nn.Parameter]]] = {role: [] for role in ROLES}
    for name, parameter in model.named_parameters():
        groups[parameter_role(name, model_type)].append((name, parameter))
    return groups


def role_param_groups(
    named_roles: dict[Any, list[tuple[str, nn.Parameter]]],
    decay: set[str],
    weight_decay: float,
    rates: dict[Any, float],
) -> list[dict[str, Any]]:
    """One optimizer group per (role, decay) holding trainable parameters, each tagged with ``role``.

    ``named_roles`` is ``{role: [(name, parameter), ...]}`` (e.g. :func:`parameters_by_role`), ``decay``
    the names that get ``weight_decay`` (the others 0), ``rates`` the learning rate per role.
    """
    groups = []
    for role, named in named_roles.items():
        for decayed in (True, False):
            params = [p for n, p in named if p.requires_grad and (n in decay) == decayed]
            if params:
                rate = weight_decay if decayed else 0.0
                groups.append({"params": params, "lr": rates[role], "weight_decay": rate, "role": role})
    return groups


STEP_RATES_ATTRIBUTE = "vift_step_learning_rates"


def learning_rate_logs(param_groups: Iterable[dict[str, Any]]) -> dict[str, float]:
    """``{"learning_rate/vision": lr, ...}``: each role's rate now in ``param_groups`` (its first group's).

    transformers logs ``learning_rate`` from the first parameter group only; with one group per role
    that is whichever role comes first (the vision encoder), so the connector's and the language
    model's schedules would not show in the logs, trainer_state.json or the plots without these keys.
    """
    logs: dict[str, float] = {}
    for group in param_groups:
        role = group.get("role")
        if role is not None:
            logs.setdefault(f"learning_rate/{role}", float(group["lr"]))
    return logs


def track_step_learning_rates(optimizer: Any) -> None:
    """Record each role's rate every time ``optimizer`` steps: the rates that step used.

    The scheduler steps right after the optimizer, so at logging time the groups already hold the
    next step's rates, while transformers logs ``learning_rate`` as the step's own (read before the
    scheduler moves). Kept as an attribute of the optimizer so every log wrapper can read it.
    """
    register = getattr(optimizer, "register_step_post_hook", None)
    if register is None:
        return

    def record(stepped: Any, args: Any, kwargs: Any) -> None:
        # merged, not replaced: DeepSpeed ZeRO-1/2 steps the optimizer once per group, showing it one group at a time
        earlier = getattr(stepped, STEP_RATES_ATTRIBUTE, None) or {}
        setattr(stepped, STEP_RATES_ATTRIBUTE, {**earlier, **learning_rate_logs(stepped.param_groups)})

    register(record)


def logged_learning_rates(optimizer: Any, logged_rate: float | None) -> dict[str, float]:
    """Each role's rate for a log line, on the same footing as the ``learning_rate`` transformers logs.

    That is the rate of the step just taken (recorded by :func:`track_step_learning_rates`), except
    under transformers releases that log the rate after the scheduler's step (LLaVA's 4.3x pins): where
    ``logged_rate`` equals the first group's current rate and not its recorded one, the current rates
    are returned, so ``learning_rate/<first role>`` always equals ``learning_rate``.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    current = learning_rate_logs(inner.param_groups)
    stepped: dict[str, float] | None = None
    wrapper: Any = optimizer
    for _ in range(8):  # DeepSpeed adds layers (AcceleratedOptimizer > DeepSpeedOptimizerWrapper > ZeRO > ours)
        stepped = getattr(wrapper, STEP_RATES_ATTRIBUTE, None)
        if stepped is not None or getattr(wrapper, "optimizer", None) is None:
            break
        wrapper = wrapper.optimizer
    if not stepped:
        return current
    first = inner.param_groups[0].get("role") if inner.param_groups else None
    key = f"learning_rate/{first}"
    if logged_rate is not None and current.get(key) == logged_rate and stepped.get(key) != logged_rate:
        return current
    return stepped


def idle_rate_messages(
    named_roles: dict[Any, list[tuple[str, nn.Parameter]]],
    settings: dict[str, tuple[str, float]],
    hints: dict[str, str] | None = None,
) -> list[str]:
    """One message per role whose learning rate was set but which has no trainable parameter.

    ``settings`` maps a role to the setting that gave its rate and the rate (``{"vision": ("vision_lr",
    1e-5)}``), only for rates set explicitly (a rate defaulted from ``learning_rate`` is not a choice to
    report); ``hints`` adds a per-role reason (e.g. that upstream freezes its vision tower). Such a
    rate silently does nothing: the role gets no optimizer group.
    """
    messages = []
    for role, (setting, rate) in settings.items():
        named = named_roles.get(role, [])
        if any(parameter.requires_grad for _, parameter in named):
            continue
        why = "frozen" if named else "the model has no parameter of that role"
        hint = (hints or {}).get(role)
        messages.append(
            f"{setting}={rate:g} is set but the {role} role has no trainable parameter ({why}); the rate does "
            f"nothing" + (f". {hint}" if hint else ".")
        )
    return messages


def check_roles(model: nn.Module) -> dict[Role, int]:
    """Parameter counts per role; an error naming the model class when vision or connector is empty."""
    counts = {role: sum(p.numel() for _, p in params) for role, params in parameters_by_role(model).items()}
    missing = [role for role in ("vision", "connector") if counts[role] == 0]
    if missing:
        base = _base(model)
        raise ValueError(
            f"Found no {' or '.join(missing)} parameters in {type(base).__name__} "
            f"(model_type {_model_type(base)!r}). Add its module names to "
            "vift_plugin.training.roles.MODEL_TYPE_PATTERNS[model_type] = {'vision': (...), 'connector': (...)}."
        )
    return counts


def set_trainable(model: nn.Module, frozen: Iterable[str]) -> list[str]:
    """Freeze the parameters of the ``frozen`` roles and unfreeze the others.

    Returns the names of parameters that should train but cannot (quantized, not floating point).
    """
    frozen = set(frozen)
    stuck = []
    for role, params in parameters_by_role(model).items():
        for name, parameter in params:
            trainable = role not in frozen
            if trainable and not parameter.is_floating_point():
                stuck.append(name)
                trainable = False
            parameter.requires_grad_(trainable)
    return stuck


def module_names_by_role(model: nn.Module, role: Role, kind: type[nn.Module] = nn.Linear) -> list[str]:
    """Names of the ``kind`` modules (default ``nn.Linear``) of ``role``, e.g. LoRA targets."""
    model_type = _model_type(_base(model))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, kind) and name and parameter_role(name, model_type) == role
    ]


def _base(model: Any) -> Any:
    from vift_plugin.layers import unwrap_model

    return unwrap_model(model)
