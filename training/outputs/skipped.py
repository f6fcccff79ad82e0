"""Data the listing skipped (dali_pipes.notices): each notice printed at once as one ``warning:`` line, every path
kept, so that a run lists them in its folder (skipped.txt, one path a line) and counts them (header, summary.json).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dali_pipes.notices import Skipped

from .files import write_text

SKIPPED_FILE = "skipped.txt"


def to_stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the terminal went away (SIGHUP): the run goes on
        pass


class SkippedData:
    """A dali_pipes.notices handler: says each notice through `say` (one ``warning: ...`` line; stderr by default)
    and keeps its paths, in the order reported, each once."""

    def __init__(self, say: Callable[[str], None] = to_stderr):
        self._say = say
        self.notices: list[Skipped] = []

    def __call__(self, notice: Skipped) -> None:
        self.notices.append(notice)
        self._say(f"warning: {notice.message()}")

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(p for n in self.notices for p in n.paths))

    def write(self, run_dir: Path) -> None:
        """skipped.txt in `run_dir`, one path a line; none (an old one removed) when nothing was skipped."""
        path = run_dir / SKIPPED_FILE
        if self.paths:
            write_text(path, "".join(f"{p}\n" for p in self.paths))
        else:
            path.unlink(missing_ok=True)
