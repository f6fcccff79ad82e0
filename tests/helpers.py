"""Test helpers shared by several test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import signal


class StopAfter:
    """Stands in for run.StopSignal: the SIGTERM flag turns true at the n-th poll (one poll per trained step)."""

    def __init__(self, n: int):
        self.n, self.calls, self.signum = n, 0, None

    def is_set(self) -> bool:
        self.calls += 1
        if self.calls >= self.n:
            self.signum = signal.SIGTERM
        return self.signum is not None

    def __enter__(self) -> StopAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
