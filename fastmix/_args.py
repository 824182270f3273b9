"""Argument checks shared by every module (a leaf: imports only the errors). One wording for every integer
argument: "NAME must be an integer >= 1, got NAME=VALUE"."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastmix.errors import ConfigError


def check_int(value: Any, name: str, *, minimum: int | None = None, below: int | None = None,
              below_text: str | None = None) -> int:
    """`value` as a Python int: an integer (Python or numpy; bool is not one) with `minimum <= value < below`.
    Otherwise ConfigError "`name` must be an integer >= minimum [and < below_text], got name=value"."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and below is not None and value >= below:
        ok = False
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if below is not None:
            bounds.append(f"< {below_text or below}")
        raise ConfigError(f"{name} must be an integer{' ' if bounds else ''}{' and '.join(bounds)}, "
                          f"got {name}={value!r}")
    return int(value)


def check_optional_int(value: Any, name: str, *, minimum: int | None = None) -> int | None:
    """None, or `check_int(value, name, minimum=minimum)` (the message then says "or None")."""
    if value is None:
        return None
    try:
        return check_int(value, name, minimum=minimum)
    except ConfigError as e:
        raise ConfigError(f"{e}".replace(", got ", " or None, got ", 1)) from None


__all__ = ["check_int", "check_optional_int"]
