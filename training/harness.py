"""Benchmark harness: how every measurement of this project is taken and reported (benchmarks/augment_throughput.py,
benchmarks/train_throughput.py and dali-quantize's latency), so that their figures mean the same thing.

- Arms (the things compared) are set up and warmed up untimed, then measured in interleaved repeats: each repeat
  runs every arm once, starting at a rotating arm (A B C, B C A, C A B, ...), so slow drift on a shared, noisy
  machine (clock boost, caches, other processes) hits every arm alike, and a ratio of two arms compares figures
  taken side by side.
- An arm that fails (set-up or a timed repeat) keeps its one-line error and the others go on.
- Each arm's figures are summarized as median, min and max over its repeats (`Stats`); what is not finite becomes
  None, since JSON has no inf or nan. A row whose repeats spread more than `SPREAD_LIMIT` (max / min) is warned
  about (`spread_warnings`): on a shared machine its median, and every ratio built on it, may not repeat.
- Reports are JSON (training.atomic's `to_json` refuses nan rather than writing invalid JSON), rewritten atomically
  (training.atomic), with the machine
  they ran on (`training.machine.machine_info`), and printed as aligned tables (`table`).

Importing this module needs only the standard library (benchmarks/gpu_check.py runs on a bare interpreter).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .atomic import to_json  # noqa: F401 - benchmarks/augment_throughput.py imports it from here (edited in parallel)

T = TypeVar("T")

SPREAD_LIMIT = 1.5  # max / min of a row's repeats above which its median is warned about


def one_line(error: BaseException, limit: int = 300) -> str:
    """`error` as one line for a report row: its type and the first line of its message, cut at `limit`."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def finite(x: float | None) -> float | None:
    """`x`, or None where it is None, inf or nan."""
    return x if x is not None and math.isfinite(x) else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is 0."""
    return finite(a / b) if a is not None and b else None


@dataclass(frozen=True)
class Stats:
    """Median, min and max of one figure over the repeats of an arm, and the figure of each repeat."""

    median: float | None
    min: float | None
    max: float | None
    runs: list[float | None]

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stats:
        """Over the values that are not None; the median, min or max that is inf or nan becomes None."""
        values = list(values)
        present = [v for v in values if v is not None]
        if not present:
            return cls(None, None, None, [finite(v) for v in values])
        return cls(finite(statistics.median(present)), finite(min(present)), finite(max(present)),
                   [finite(v) for v in values])


def spread(lo: float | None, hi: float | None) -> float | None:
    """max / min of a row's repeats (1.0: every repeat the same), or None where either is missing or min is 0."""
    return ratio(hi, lo)


def spread_warnings(rows: Iterable[dict[str, Any]], label: Callable[[dict[str, Any]], str],
                    limit: float = SPREAD_LIMIT) -> list[str]:
    """Sets each row's ``spread`` (max / min of its repeats, from its ``min`` and ``max``) and ``spread_warning``
    (spread > `limit`); returns one line per warned row, named by `label(row)`."""
    lines = []
    for row in rows:
        row["spread"] = spread(row.get("min"), row.get("max"))
        row["spread_warning"] = row["spread"] is not None and row["spread"] > limit
        if row["spread_warning"]:
            lines.append(f"warning: {label(row)}: repeats spread {row['spread']:.2f}x (max/min > {limit}): the "
                         "machine was busy or the row is unstable; its median and ratios may not repeat")
    return lines


@dataclass
class Arm(Generic[T]):
    """One thing measured: its name, what describes it (`spec`, the caller's), what it measures with while alive
    (`state`: a loader, a compiled model; dropped when it fails), the figures of its timed repeats, or its error."""

    name: str
    spec: Any = None
    state: Any = None
    runs: list[T] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, error: BaseException) -> None:
        self.error, self.state = one_line(error), None


def set_up(arms: Sequence[Arm], setup: Callable[[Arm], Any], *,
           on_fail: Callable[[Arm], None] | None = None, keep_going: bool = True) -> None:
    """`arm.state = setup(arm)` for each arm, untimed (building, compiling, warm-up). An arm whose setup raises
    fails alone (`on_fail` is told), unless `keep_going` is False: then the error propagates."""
    for arm in arms:
        try:
            arm.state = setup(arm)
        except Exception as e:
            if not keep_going:
                raise
            arm.fail(e)
            if on_fail is not None:
                on_fail(arm)


def interleaved(arms: Sequence[Arm[T]], repeats: int, measure: Callable[[Arm[T], int], T], *,
                on_result: Callable[[Arm[T], int, T], None] | None = None,
                on_fail: Callable[[Arm[T]], None] | None = None, keep_going: bool = True) -> None:
    """`repeats` rounds; each calls `measure(arm, repeat)` once for every arm still ok, starting at a rotating
    arm, and appends the figure to `arm.runs`. An arm whose measurement raises fails alone (unless `keep_going`
    is False); KeyboardInterrupt always propagates."""
    for r in range(repeats):
        live = [arm for arm in arms if arm.ok]
        for k in range(len(live)):
            arm = live[(r + k) % len(live)]  # no arm always runs first or last
            try:
                figure = measure(arm, r)
            except Exception as e:
                if not keep_going:
                    raise
                arm.fail(e)
                if on_fail is not None:
                    on_fail(arm)
                continue
            arm.runs.append(figure)
            if on_result is not None:
                on_result(arm, r, figure)


# ------------------------------------------------------------------------------------------------------ reports
def table(head: Sequence[str], body: Sequence[Sequence[str]], *, align: str = "", group: int = 0,
          rule: bool = True, empty: str = "(no rows measured)") -> list[str]:
    """Lines of a text table: each column as wide as its widest cell, aligned by `align` ('<' or '>' per column,
    '<' where not given), a rule of dashes under the head, a blank line where the first `group` cells change."""
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
    align = align.ljust(len(head), "<")

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    lines = [fmt(head)] + ([fmt(["-" * w for w in widths])] if rule else [])
    previous = None
    for cells in body:
        key = tuple(cells[:group])
        if group and previous is not None and key != previous:
            lines.append("")
        lines.append(fmt(cells))
        previous = key
    if not body and empty:
        lines.append(empty)
    return lines


def machine_lines(m: dict[str, Any]) -> list[str]:
    """The machine part of a report's header (from `training.machine.machine_info`)."""
    gpu = ", ".join(m["gpus"]) if m.get("gpus") else "none visible"
    if m.get("driver"):
        gpu += f" (driver {m['driver']})"
    return [f"  date        {m['date']}",
            f"  cpu         {m['cpu_model']}",
            f"  cores       {m['cores_available']} available of {m['cores_total']} (torch threads "
            f"{m['torch_threads']})",
            f"  gpu         {gpu}",
            f"  versions    python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
            f"DALI {m['dali']}"]
