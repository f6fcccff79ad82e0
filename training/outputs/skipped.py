"""Data the listing skipped (dali_pipes.notices): each notice printed at once as one ``warning:`` line, every path
kept, so that a run lists them in its folder (skipped.txt, one path a line) and counts them (header, summary.json).
JPEG files found damaged during an epoch (dali_pipes.damage) are kept the same way, in damaged.txt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dali_pipes.notices import Skipped

from .files import write_text

SKIPPED_FILE = "skipped.txt"
DAMAGED_FILE = "damaged.txt"


def to_stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the terminal went away (SIGHUP): the run goes on
        pass


class SkippedData:
    """A dali_pipes.notices handler: says each notice through `say` (one ``warning: ...`` line; stderr by default)
    and keeps its paths, in the order reported, each once: `paths` those skipped, `damaged` those decoded with
    damage (the same list objects all along: a run's summary reads them at its end). Once :meth:`keep_in` gave it a
    run directory, a notice is also recorded there (`record`: the run's log) and the lists rewritten."""

    def __init__(self, say: Callable[[str], None] = to_stderr):
        self._say = say
        self.notices: list[Skipped] = []
        self.paths: list[str] = []
        self.damaged: list[str] = []
        self._listed: set[tuple[bool, str]] = set()  # (damaged?, path) the lists hold: a listing may skip millions
        self._run_dir: Path | None = None
        self._record: Callable[[str], None] | None = None

    def __call__(self, notice: Skipped) -> None:
        self.notices.append(notice)
        damaged = notice.action == "decoded"
        kept = self.damaged if damaged else self.paths
        for path in notice.paths:
            if (damaged, path) not in self._listed:
                self._listed.add((damaged, path))
                kept.append(path)
        self._say(f"warning: {notice.message()}")
        if self._record is not None:
            self._record(f"warning: {notice.message()}")
        if self._run_dir is not None:
            self.write(self._run_dir)

    def keep_in(self, run_dir: Path, record: Callable[[str], None]) -> None:
        """Record the notices so far and every later one in `run_dir`: the lists written, the lines `record`ed."""
        self._run_dir, self._record = run_dir, record
        self.write(run_dir)
        for notice in self.notices:
            record(f"warning: {notice.message()}")

    def write(self, run_dir: Path) -> None:
        """skipped.txt and damaged.txt in `run_dir`, one path a line; none (an old one removed) when empty."""
        for name, paths in ((SKIPPED_FILE, self.paths), (DAMAGED_FILE, self.damaged)):
            path = run_dir / name
            if paths:
                write_text(path, "".join(f"{p}\n" for p in paths))
            else:
                path.unlink(missing_ok=True)
