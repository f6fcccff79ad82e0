"""Checkpoints: a plain dict written atomically, read with ``torch.load(weights_only=True)``.

Checkpoint files are untrusted input: ``weights_only`` lets only tensors and plain containers through, so loading
one never runs code, and anything that is not one of ours is refused with a one-line error naming the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dali_pipes import DataError

from .config import TrainConfig

FORMAT = "dali-train/1"
REQUIRED = ("format", "config", "model", "epoch")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, *, fmt: str = FORMAT, required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """Load and check a dali-train checkpoint (or another of our formats, `fmt`) on the CPU; corrupt or foreign
    files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass a run directory or a .pth file written by dali-train")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — untrusted bytes fail in many ways (struct, unicode, zip, pickle...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a loadable checkpoint ({reason[:200]}); it is corrupt, truncated or not "
                        "from dali-train — use another checkpoint or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != fmt or any(k not in state for k in required):
        what = "a last.pth or best.pth written by dali-train" if fmt == FORMAT else f"a file of format {fmt}"
        found = state.get("format") if isinstance(state, dict) else None
        raise DataError(f"{path}: not a dali-train checkpoint (format {fmt} expected, found {found!r}); use {what}")
    return state


def checkpoint_config(state: dict[str, Any], path: Path, **overrides: Any) -> TrainConfig:
    """The run config saved in `state`, with every override that is not None applied (and validated)."""
    try:
        cfg = TrainConfig.from_dict(state["config"], source=str(path))
    except TypeError as e:
        raise DataError(f"{path}: its saved config is unreadable ({e}); use a checkpoint written by dali-train") \
            from None
    return cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
