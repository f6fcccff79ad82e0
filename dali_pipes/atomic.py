"""The data layer's atomic write: a file is written to ``.<name>.partial`` beside it, flushed to disk and renamed
over it, so a reader, or a packing or download killed mid-write, sees the old file or the new one, never half of
either (dali-shard removes a ``.partial`` a kill left behind when it runs again).

training.atomic is the training job's (its temp names, its JSON writer); it is not imported from here because
nothing in dali_pipes imports training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace `path` with what `write` writes into the binary file it is given; on any failure the partial file
    is removed, the old file is intact and the error propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
