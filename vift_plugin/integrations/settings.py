"""An integration's settings: validation, and the ``VIFT_*`` environment variables that may give them.

Launchers such as ``torchrun`` start one process per GPU from a command line, so an integration run
in place of upstream's launcher reads settings left out of ``apply()`` from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from vift_plugin.data.sampler import check_remainder
from vift_plugin.integrations.trainer_api import RoleOf


class Settings(Protocol):
    """What :class:`UpstreamPatch` reads of an integration's settings."""

    @property
    def role_of(self) -> RoleOf | None: ...


def check_settings(config: Any, rates: Sequence[str]) -> None:
    """The settings every integration has: ``rates`` non-negative or ``None``, ``remainder``, ``length_window``."""
    for name in rates:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{name} must be a non-negative number or None, got {value!r}.")
    check_remainder(config.remainder)
    window = config.length_window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"length_window must be a positive int or None, got {window!r}.")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # an argument left out, where None is a value (a rate of None: learning_rate)


def env_float(name: str) -> float | None:
    """Environment variable ``name`` as a number; ``None`` where it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"{name}={value!r} is not a number.") from error


def env_bool(name: str) -> bool | None:
    """Environment variable ``name`` as a boolean (1/0, true/false, yes/no, on/off); ``None`` where unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (1/0, true/false, yes/no).")


def env_window(name: str) -> int | None | _Unset:
    """Environment variable ``name`` as an int, or ``None`` for ``none``; :data:`UNSET` where unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return UNSET
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"{name}={value!r} is not an integer or 'none'.") from error
