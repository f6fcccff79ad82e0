"""Value checks: one wording for every refusal, ``<label>=<value> is invalid: <rule>``, as a ConfigError, for the
loader's arguments and the recipe's fields here, and for training's configs and CLIs (TrainConfig, MixConfig,
PruneConfig, QuantizeConfig) and the benchmarks, which import them from here.

`label` is what the user typed: ``--lr`` for an option, ``mixup_alpha`` for a field of a Python-only config.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother = 3, 120, 120
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = 8
    return shown


# A value from a file can be any size: the error line shows its start, and the work to show it stays bounded.
_SHOWN = _bounded_repr()


def invalid(label: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"{label}={_SHOWN.repr(value)} is invalid: {rule}")


def check_int(label: str, value: Any, lo: int, hi: int | None = None, *, note: str = "") -> int:
    """An int or numpy integer (not a bool) >= `lo` (and <= `hi` when given), returned as an int; `note` follows
    the rule ("(0: prune only)")."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's integers are Integral
    if not is_int or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise invalid(label, value, f"expected an integer {bound}" + (f" {note}" if note else ""))
    return int(value)


def check_number(label: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = False, rule: str | None = None) -> None:
    """A finite int or float (not a bool) in the interval; `rule` replaces the default wording of the interval."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        if rule is None and math.isinf(hi):  # "(0.0, inf]" would read as if inf were allowed
            rule = f"expected a finite number {'>' if lo_open else '>='} {lo}"
        elif rule is None:
            left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
            rule = f"expected a number in {left}{lo}, {hi}{right}"
        raise invalid(label, value, rule)


def check_choice(label: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise invalid(label, value, f"choose one of {', '.join(options)}")
    return str(value)


def check_bool(label: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise invalid(label, value, "expected true or false")
