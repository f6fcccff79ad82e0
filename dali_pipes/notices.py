"""Skipped data as a notice: the folder listing reports what it leaves out through :func:`report_skipped`.

A command (dali-train, dali-eval, ...) installs a handler with :func:`skipped_to` for the length of its work: the
handler prints the notice and keeps the paths (dali-train lists them in the run directory), whatever Python's
warning filters say. Without a handler (the library called directly) a notice is a :class:`DataWarning`, the
library's contract with its callers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import DataWarning


@dataclass(frozen=True)
class Skipped:
    """Entries of one kind that the listing of `split` left out: every path (a name that is not UTF-8 as the repr
    of its bytes), what they are, and `detail` about the first one (its reason).

    `action` "decoded": files kept whose damage the decoder filled in (dali_pipes.damage); with no paths, `detail`
    is the whole notice (damage a decoder reported in files nobody could name)."""

    split: str
    what: str
    paths: tuple[str, ...]
    detail: str = ""
    action: str = "skipped"

    def message(self) -> str:
        if not self.paths:
            return f"{self.split}: {self.detail}"
        return f"{self.split}: {self.action} {len(self.paths)} {self.what}, e.g. {self.paths[0]}{self.detail}"


_handler: ContextVar[Callable[[Skipped], None] | None] = ContextVar("dali_pipes_skipped_handler", default=None)


@contextmanager
def skipped_to(handler: Callable[[Skipped], None]) -> Iterator[None]:
    """Within the block, every :class:`Skipped` notice goes to `handler` (and no warning is raised); the
    innermost block wins and the previous handler is back after it."""
    token = _handler.set(handler)
    try:
        yield
    finally:
        _handler.reset(token)


def report_skipped(notice: Skipped, *, stacklevel: int = 2) -> None:
    """Hand `notice` to the installed handler, or raise it as a DataWarning where none is installed."""
    handler = _handler.get()
    if handler is not None:
        handler(notice)
    else:
        warnings.warn(notice.message(), DataWarning, stacklevel=stacklevel + 1)
