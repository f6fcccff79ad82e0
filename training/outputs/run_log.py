"""train.log: what the console showed of a run (its header, notes and notices, the epoch lines, the final line or
the error), appended to in the run directory, so that a resume adds its lines after the earlier ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LOG_FILE = "train.log"


class RunLog:
    """A `log` callable that shows each line through `echo` and appends it to `path`. The file is a record, not
    the run: a failed write (a full disk, a folder gone read-only) is said once through `echo`, and the lines
    after it are on the console only."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self._echo, self._broken = path, echo, False

    def __call__(self, line: str) -> None:
        self._echo(line)
        self.record(line)

    def record(self, line: str) -> None:
        """Append `line` to the file only (a line shown by someone else: a notice, the command's last line)."""
        if self._broken:
            return
        try:
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(f"{line}\n")
        except OSError as e:
            self._broken = True
            self._echo(f"note: {self.path}: cannot write it ({e.strerror or e}); the rest of this run's lines are "
                       "on the console only")
