"""Checkpoints: a plain dict written atomically, read with ``torch.load(weights_only=True)``; the config and the
model a checkpoint holds (what dali-eval, dali-quantize and dali-prune start from); which of a run's epochs keep a
checkpoint of their own (--keep-best).

Checkpoint files are untrusted input: ``weights_only`` lets only tensors and plain containers through, so loading
one never runs code, and anything that is not one of ours is refused with a one-line error naming the file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dali_pipes import ConfigError, DaliTrainError, DataError

from ..atomic import atomic_write
from ..config import TrainConfig
from ..recipe import create_model
from ..choices import model_spec
from .progress import TrainState

FORMAT = "dali-train/1"
REQUIRED = ("format", "config", "model", "epoch")
BEST_EPOCH = re.compile(r"^best-epoch(\d+)\.pth$")  # --keep-best K > 1: the checkpoint of each of the K best epochs


class _Counter:
    """A write-only sink that counts bytes: the size a state serializes to, without holding it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _write_error(e: BaseException, state: dict[str, Any], path: Path) -> DaliTrainError:
    """A one-line error for a failed checkpoint write: the path, the cause, and the bytes the file needs."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):  # torch reports a failed write as RuntimeError
        cause = cause.__cause__ or cause.__context__
    counter = _Counter()
    try:
        torch.save(state, counter)
        needed = f"{counter.size:,} bytes ({counter.size / 2**20:.1f} MiB)"
    except Exception:  # noqa: BLE001 — the figure is a courtesy; the error must still be raised
        needed, counter.size = "an unknown number of bytes", 0
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT) or (
            cause is None and free is not None and free < counter.size):
        why = "the disk is full" + (f" ({free:,} bytes free)" if free is not None else "")
    elif isinstance(cause, OSError):
        why = f"the write failed ({cause.strerror or cause})"
    else:
        why = f"the write failed ({type(e).__name__})"
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    return DaliTrainError(f"{path}: cannot write the checkpoint, {why}; it needs {needed}; {kept}; "
                          "free space (or fix the folder) and resume")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new one.
    A failed write (disk full...) is a one-line DaliTrainError; the temp file is removed."""
    path = Path(path)
    state = {"format": FORMAT, **state}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        raise _write_error(e, state, path) from None


def load_checkpoint(path: str | Path, *, fmt: str = FORMAT, required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """Load and check a dali-train checkpoint (or another of our formats, `fmt`) on the CPU; corrupt or foreign
    files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass a run directory or a .pth file written by dali-train")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — untrusted bytes fail in many ways (struct, unicode, zip, pickle...)
        reason = _load_failure(e)
        raise DataError(f"{path}: not a loadable checkpoint ({reason}); it is corrupt, truncated or not "
                        "from dali-train — use another checkpoint or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != fmt or any(k not in state for k in required):
        what = "a last.pth or best.pth written by dali-train" if fmt == FORMAT else f"a file of format {fmt}"
        found = state.get("format") if isinstance(state, dict) else None
        raise DataError(f"{path}: not a dali-train checkpoint (format {fmt} expected, found {found!r}); use {what}")
    return state


def _load_failure(e: Exception) -> str:
    """Why torch.load refused the file, in one line. torch's own text for a refused pickle advises re-running with
    ``weights_only=False``, i.e. running the file's code: never pass that on for an untrusted file."""
    text = str(e).strip()
    if "weights only load failed" in text.lower() or "weightsunpickler" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds objects other than tensors and plain containers{what}, and loading those could run code"
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def checkpoint_config(state: dict[str, Any], path: Path, **overrides: Any) -> TrainConfig:
    """The run config saved in `state`, with every override that is not None applied (and validated)."""
    try:
        cfg = TrainConfig.from_dict(state["config"], source=str(path))
    except TypeError as e:
        raise DataError(f"{path}: its saved config is unreadable ({e}); use a checkpoint written by dali-train") \
            from None
    return cfg.replace(**{k: v for k, v in overrides.items() if v is not None})


def chosen_weights(state: dict[str, Any], path: Path, weights: str | None = None) -> str:
    """Which weights of a checkpoint to use: `weights` ("model" or "ema") when given, else the ones that scored
    the run's best accuracy if the checkpoint was written at the end of that epoch (best.pth), those that scored its
    epoch for a best-epochNNN.pth (--keep-best), else "model".
    "ema" asked of a checkpoint without an EMA is a ConfigError."""
    if weights is None:
        progress = TrainState.from_dict(state)
        if progress.batch or "ema" not in state:
            return "model"
        if progress.epoch == progress.best_epoch:
            return progress.best_weights
        # a best-epochNNN.pth (--keep-best): the weights that scored its epoch, as they were ranked
        history = state.get("history") or [{}]
        return "ema" if BEST_EPOCH.match(path.name) and epoch_score(history[-1])[1] == "ema" else "model"
    if weights == "ema" and "ema" not in state:
        raise ConfigError(f"--weights ema: {path} holds no EMA weights (its run trained without --ema-decay); "
                          "use --weights model")
    return weights


def nonfinite_tensors(weights: Any) -> list[str]:
    """The names of the float tensors of a state dict (weights or norm statistics) that hold nan or inf; [] for
    anything that is not a dict. A model with any answers every image with nan logits."""
    items = weights.items() if isinstance(weights, dict) else ()
    return [name for name, t in items if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


def model_from_checkpoint(state: dict[str, Any], path: Path, cfg: TrainConfig, num_classes: int, *,
                          weights: str = "model", image_size: int | None = None) -> torch.nn.Module:
    """The model the config names, with the checkpoint's `weights` ("model": the trained weights, "ema": their
    average); a checkpoint of another shape is refused. `image_size` (the side of the images it will see, the
    loader's) refuses a CIFAR-stem model on large images, as dali-train does when it builds one.

    The checkpoint's ``model_spec`` (written by dali-train: name, source library and version, class count) says
    what was trained; a model of another class count than the data's, or of a timm/torchvision version other
    than the installed one whose weights no longer fit, is refused saying so."""
    spec = state.get("model_spec")
    if isinstance(spec, dict) and spec.get("num_classes") not in (None, num_classes):
        raise DataError(f"{path}: its model has {spec['num_classes']} classes but the data has {num_classes}; "
                        "evaluate it on the data it was trained on (--dataset, --data-dir)")
    model = create_model(cfg.model, num_classes=num_classes, image_size=image_size)
    what = f"model {cfg.model} with {num_classes} classes"
    if isinstance(spec, dict) and spec.get("version") is not None:
        now = model_spec(cfg.model, num_classes)
        if now["version"] != spec["version"]:
            what += f" as {now['source']} {now['version']} builds it (the checkpoint's was {spec['version']})"
    load_weights(model, state[weights], path, what)
    return model


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path, what: str) -> None:
    """`model.load_state_dict(weights)`; weights of another shape are a one-line DataError naming `path`."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not fit {what} ({str(e).splitlines()[0][:160]}); use a checkpoint of "
                        "that architecture trained on this dataset") from None


def epoch_score(row: dict) -> tuple[float, str]:
    """What ranks a finished epoch (a metrics.csv row) among the best: its validation accuracy, from the EMA weights
    where they scored better than the raw ones (best.pth keeps whichever), and which weights those are."""
    ema = row.get("ema_val_acc", -1.0)
    return (ema, "ema") if ema > row.get("val_acc", -1.0) else (row.get("val_acc", -1.0), "model")


def best_epochs(history: list[dict], k: int) -> list[int]:
    """The `k` best epochs of `history` (metrics.csv's rows), best first; of equal scores the earlier epoch ranks
    first, as best.pth keeps the first epoch that reached its score."""
    ranked = sorted(history, key=lambda row: (-epoch_score(row)[0], row["epoch"]))
    return [int(row["epoch"]) for row in ranked[:k]]


def best_epoch_name(epoch: int) -> str:
    return f"best-epoch{epoch:03d}.pth"


def keep_best(run_dir: Path, checkpoint: dict[str, Any], history: list[dict], *, keep: int, improved: bool,
              save: Callable[[str, dict[str, Any]], None]) -> list[str]:
    """Write the checkpoint of the epoch just finished (`history`'s last row) where it belongs: best.pth when it
    `improved` on the run's best, and with `keep` > 1 best-epochNNN.pth when it ranks among the `keep` best epochs,
    whose other files are then removed (timm's CheckpointSaver max_history). best.pth is then a hard link to its
    epoch's file (a copy where the file system has no links). Returns the files kept, best first.

    The files follow from the history alone, which the checkpoint carries: a resumed run keeps exactly the files the
    uninterrupted run would, and a file written by a process killed before its last.pth is replaced or removed."""
    if keep <= 1:
        if improved:
            save("best.pth", checkpoint)
        return ["best.pth"]
    kept = best_epochs(history, keep)
    epoch = int(history[-1]["epoch"])
    name = best_epoch_name(epoch)
    if epoch in kept:
        save(name, checkpoint)
    if improved:
        _link_or_save(run_dir, name, "best.pth", checkpoint, save)
    names = {best_epoch_name(e) for e in kept}
    for path in run_dir.iterdir():
        if BEST_EPOCH.match(path.name) and path.name not in names:
            path.unlink(missing_ok=True)
    return [best_epoch_name(e) for e in kept]


def _link_or_save(run_dir: Path, source: str, name: str, checkpoint: dict[str, Any],
                  save: Callable[[str, dict[str, Any]], None]) -> None:
    """`name` replaced atomically by a hard link to `source` (no second copy on disk), else written by `save`."""
    tmp = run_dir / f".{name}.{os.getpid()}.link.tmp"  # a temp name folder.py knows as a kill's leftover
    try:
        tmp.unlink(missing_ok=True)
        os.link(run_dir / source, tmp)
        os.replace(tmp, run_dir / name)
    except OSError:
        tmp.unlink(missing_ok=True)
        save(name, checkpoint)
