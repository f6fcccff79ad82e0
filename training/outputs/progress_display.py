"""The console's view of a pass in progress (an epoch's training or its validation), refreshed by time, not by
steps: an epoch of 40 slow steps shows its progress as it goes, one of 400 fast ones does not read the device every
few milliseconds. On a terminal a tqdm bar, refreshed about every `every_s` seconds; without one (a log file, a
scheduler's output) a plain line every `plain_every_s` seconds. The clock is a parameter (tests pass a fake one).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

REFRESH_S = 1.0  # a terminal's bar: about once a second, one host read each
PLAIN_EVERY_S = 30.0  # without a terminal: a line every 30 s, so that a log shows a slow epoch is alive


class Ticker:
    """True when `every_s` seconds of `clock` have passed since the last True (or since it was made)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self._every, self._clock = every_s, clock
        self._next = clock() + every_s

    def __call__(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._every
        return True


class ProgressDisplay:
    """The progress of one pass of `total` batches named `desc` ("epoch 3/100", "epoch 3/100 val").

    The loop asks :meth:`due` after each batch (a clock read, no device read) and, when it says so, calls
    :meth:`update` with the position and, for training, the running ``loss`` and ``acc`` (one host read)."""

    def __init__(self, total: int, desc: str, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = REFRESH_S,
                 plain_every_s: float = PLAIN_EVERY_S, tty: bool | None = None):
        self.total, self.desc = total, desc
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _isatty(self._stream) if tty is None else tty
        self.due = Ticker(every_s if self._tty else plain_every_s, clock)
        self._bar = None
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=self._stream)

    def update(self, done: int, stats: dict[str, float] | None = None) -> None:
        figures = {} if not stats else {"loss": f"{stats['loss']:.3f}", "acc": f"{100 * stats['acc']:.1f}%"}
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix(figures)  # refreshes the bar
            return
        shown = "".join(f", {k} {v}" for k, v in figures.items())
        try:
            print(f"{self.desc}: {done}/{self.total} batches{shown}", file=self._stream, flush=True)
        except OSError:  # the terminal went away (SIGHUP): the run goes on
            pass

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
