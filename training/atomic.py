"""The one atomic write: a file is replaced by a temp file in its folder, written, fsynced and renamed over it, so
a reader — or a run killed mid-write — sees the old file or the new one, never half of either; and the one JSON
writer. Standard library only: benchmarks/gpu_check.py writes its reports with it on a bare machine.

A temp file is named ``.<name>.<random>.tmp`` (training/loop/folder.py recognizes one a kill left behind).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace `path` with what `write` writes into the binary file it is given. On any failure (a full disk, an
    exception in `write`, a signal) the temp file is removed, the old file is intact and the error propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs and reports are for reading
        os.replace(tmp, path)
    except BaseException:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:  # a folder gone read-only refuses that too: the first error is the one to report
            pass
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`path` replaced atomically by `text` (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def to_json(obj: Any) -> str:
    """`obj` as indented JSON; nan and inf are a ValueError rather than invalid JSON."""
    return json.dumps(obj, indent=2, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> None:
    """`path` replaced atomically by `obj` as JSON (to_json) and a newline."""
    write_text_atomic(path, to_json(obj) + "\n")
