"""Argument checks shared by every module (a leaf: imports only the errors). One wording for every argument:
"NAME must be ..., got NAME=VALUE" (integers: "batch_size must be an integer >= 1, got batch_size=0"; weights:
"dataset_weights must be non-negative, got dataset_weights[1]=-0.5 for repo_ids[1]='b'")."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastmix.errors import ConfigError

_SHOW_MAX = 16  # entries of a sequence an error message shows in full


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


def check_int_list(values: Any, name: str, *, minimum: int | None = None) -> list[int]:
    """`values` (a list, tuple or 1-D array) as a list of Python ints, each `check_int(v, name[i], minimum)`."""
    if isinstance(values, np.ndarray):
        values = values.tolist() if values.ndim == 1 else None
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list of integers, got {name}={values!r}")
    return [check_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(values)]


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_seconds(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """`value` as a float: a real number (bool is not one), finite, > 0 (>= 0 with `allow_zero`). Otherwise
    ConfigError "`name` must be a finite number of seconds > 0, got name=value"."""
    if not (_is_real(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ConfigError(f"{name} must be a finite number of seconds {'>=' if allow_zero else '>'} 0, "
                          f"got {name}={value!r}")
    return float(value)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _show(values: Any) -> str:
    """A sequence for an error message: in full up to _SHOW_MAX entries, else its head and its length."""
    seq = values.tolist() if isinstance(values, np.ndarray) else [_plain(v) for v in values]
    if len(seq) <= _SHOW_MAX:
        return repr(seq)
    return f"[{', '.join(repr(v) for v in seq[:_SHOW_MAX])}, ...] ({len(seq)} entries)"


def _as_weight_array(weights: Any, what: str, item: Any) -> np.ndarray:
    """float64 (n,) of `weights`; ConfigError naming the first entry that is not a real number."""
    given = weights
    if not isinstance(weights, (str, bytes, Sequence, np.ndarray)):  # a tensor, a Series, ...: numpy converts it
        try:
            weights = np.asarray(weights)
        except (TypeError, ValueError):
            pass
    scalar = weights.ndim == 0 if isinstance(weights, np.ndarray) else not isinstance(weights, Sequence)
    if scalar or isinstance(weights, (str, bytes)):
        raise ConfigError(f"{what} must be a 1-D sequence of numbers, got {what}={given!r}")
    if not (isinstance(weights, np.ndarray) and weights.dtype.kind in "iuf"):
        for i, v in enumerate(weights.ravel() if isinstance(weights, np.ndarray) else weights):
            nested = isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, (str, bytes))
            if not _is_real(v) and not nested:  # a nested sequence: the shape check below names it
                raise ConfigError(f"{what} must be numbers, got {what}[{i}]={_plain(v)!r}{item(i)}")
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a 1-D sequence of numbers, got {what}={given!r} ({exc})") from None
    if w.ndim != 1 or w.size == 0:
        raise ConfigError(f"{what} must be a non-empty 1-D sequence of numbers, got {what} of shape {w.shape}")
    return np.ascontiguousarray(w)


def check_weights(weights: Sequence[float] | np.ndarray | None, names: Sequence[Any] | None = None, *,
                  what: str = "dataset_weights", names_what: str = "repo_ids") -> np.ndarray | None:
    """`weights` as a contiguous float64 array (n,), or None for None (the caller's default).

    Each entry must be a real number (bool is not one), finite and >= 0, and not all may be zero. With `names`
    (the K things the weights go with, called `names_what`) there must be one weight per name, and each error
    names the index, the value and that entry's name. Otherwise ConfigError, e.g.
    "dataset_weights must be finite, got dataset_weights[2]=nan for repo_ids[2]='c'"."""
    if weights is None:
        return None

    def item(i: int) -> str:
        return f" for {names_what}[{i}]={_plain(names[i])!r}" if names is not None and i < len(names) else ""

    w = _as_weight_array(weights, what, item)
    if names is not None and w.size != len(names):
        raise ConfigError(f"{what} length ({w.size}) must match {names_what} length ({len(names)}): "
                          f"{what}={_show(weights)}, {names_what}={_show(names)}")
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{what} must be finite, got {what}[{i}]={float(w[i])}{item(i)}")
    neg = w < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise ConfigError(f"{what} must be non-negative, got {what}[{i}]={_plain(weights[i])}{item(i)}")
    if not (w > 0).any():
        raise ConfigError(f"{what} must not all be zero, got {what}={_show(weights)}")
    return w


__all__ = ["check_int", "check_int_list", "check_optional_int", "check_seconds", "check_weights"]
