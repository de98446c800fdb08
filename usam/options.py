"""Config values checked up front: one `UsamError` line naming the key, before any work.

Hydra hands over whatever the user typed (`predictor.epochs=abc` is the string "abc",
`predictor.lr=true` a bool), and torch or `range` would fail deep inside, or worse accept
it (`float(True) == 1.0`, `bool("no") is True`). Every numeric or boolean option of a stage
goes through one of these functions, which return the value in its proper type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from usam.errors import UsamError

NULLS = ("", "None", "null")  # what `unset` takes for null besides None


def unset(value: Any) -> bool:
    """The one rule for "no value": None, and the strings a command line gives for it.

    Hydra reads `key=null` as None but `key=None` as the string "None" (and `key=''` as "");
    a folder or model named "None" is far likelier a user's null than a real name.
    """
    return value is None or (isinstance(value, (str, Path)) and str(value) in NULLS)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def number(
    value: Any,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in [low, high] (`*_open`: that end excluded)."""
    rng = _range_text(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsamError(f"{key} must be a number{rng}, got {_show(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise UsamError(f"{key} must be a finite number{rng}, got {_show(value)}")
    if (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and (v > high or (high_open and v == high))
    ):
        raise UsamError(f"{key} must be a number{rng}, got {_show(value)}")
    return v


def integer(value: Any, key: str, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number in [low, high]; 10.0 counts as 10, 10.5 does not."""
    rng = _range_text(low, high, False, False)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise UsamError(f"{key} must be a whole number{rng}, got {_show(value)}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise UsamError(f"{key} must be a whole number{rng}, got {_show(value)}")
    return v


def flag(value: Any, key: str) -> bool:
    """true or false, nothing else (a string "false" would otherwise count as true)."""
    if not isinstance(value, bool):
        raise UsamError(f"{key} must be true or false, got {_show(value)}")
    return value


def interval(
    value: Any,
    key: str,
    *,
    whole: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> tuple[float, float] | tuple[int, int]:
    """A search range [a, b] with a < b, both inside [low, high] (`*_open`: that end excluded)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise UsamError(f"{key} must be a range [low, high], got {_show(value)}")
    value = list(value)  # a ListConfig too
    if whole:
        a, b = (integer(v, f"{key}[{i}]", low=low, high=high) for i, v in enumerate(value))
    else:
        a, b = (
            number(v, f"{key}[{i}]", low=low, high=high, low_open=low_open, high_open=high_open)
            for i, v in enumerate(value)
        )
    if not a < b:
        raise UsamError(f"{key} must be a range [low, high] with low < high, got {list(value)}")
    return a, b


def estimators(cfg: Any) -> Any:
    """The stage's `estimators` option (bundle folders); `predictors`, its old name, still works.

    The stage configs default `estimators` to `${oc.select:predictors,<default>}` and leave
    `predictors` unset (`???`), so `predictors=<dir>` alone sets `estimators`. Both given with
    different values is refused rather than one silently winning. Null by `unset`'s rule.
    """
    new = _plain(cfg.get("estimators"))
    if "predictors" in cfg and not OmegaConf.is_missing(cfg, "predictors"):
        old = _plain(cfg["predictors"])
        if old != new:
            raise UsamError(
                f"estimators={_show(new)} and predictors={_show(old)} disagree (predictors is the "
                "old name of estimators); give estimators= only"
            )
    return None if unset(new) else new


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True)
        if isinstance(value, (DictConfig, ListConfig))
        else value
    )


def _range_text(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""
