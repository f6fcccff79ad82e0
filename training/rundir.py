"""The run directory: what a folder holds, and one writer at a time.

A folder is empty, a run (last.pth), a run stopped before its first checkpoint (config.yaml and nothing an epoch
produces: nothing to resume, everything to restart it), a run's results without its last.pth (best.pth,
metrics.csv, summary.json or curves.png: removed to save space, or lost — never restarted over, that would delete
them), leftovers of a run (temp files, events, first_batch.png: none of those), or not a dali-train run. One process writes a run directory at a time: it
holds an flock on LOCK_NAME inside it, which the kernel drops when the process ends however it ends (kill -9
included), so a crashed run never leaves its directory locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dali_pipes import ConfigError, DaliTrainError

from . import distributed

if TYPE_CHECKING:
    from .config import TrainConfig
    from .distributed import World

LOCK_NAME = ".dali-train.lock"
# Files a run writes: its outputs, and the temp files of its atomic writes (a kill can leave those behind).
OUTPUTS = ("config.yaml", "metrics.csv", "curves.png", "best.pth", "last.pth", "summary.json", "first_batch.png")
_TEMP = re.compile(r"^(metrics\.csv\.tmp|\.(last|best)\.pth\..+\.tmp|\.(config\.yaml|summary\.json)\.tmp)$")
EVENTS = re.compile(r"^events\.out\.tfevents\..+$")  # TensorBoard's event files (tensorboard_log.py)
# What only a finished epoch writes: a folder holding one of these holds results, whatever else is missing.
RESULTS = ("best.pth", "metrics.csv", "summary.json", "curves.png")

EMPTY, RUN, RESULTS_ONLY, UNSTARTED, LEFTOVERS, FOREIGN = \
    "empty", "run", "results-only", "unstarted", "leftovers", "foreign"


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


def _ours(name: str) -> bool:
    return name in OUTPUTS or bool(_TEMP.match(name) or EVENTS.match(name))


def classify(path: Path, option: str = "--output") -> str:
    """EMPTY (or missing), RUN, RESULTS_ONLY, UNSTARTED, LEFTOVERS or FOREIGN; a path that is a file is a
    ConfigError naming `option`."""
    if not path.exists():
        return EMPTY
    if not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; give a folder path (it is created if missing)")
    names = _entries(path)
    if not names:
        return EMPTY
    if "last.pth" in names:
        return RUN
    if any(n in RESULTS for n in names):
        return RESULTS_ONLY
    if "config.yaml" in names:
        return UNSTARTED
    return LEFTOVERS if all(_ours(n) for n in names) else FOREIGN


def listing(path: Path) -> str:
    """A few of the names in `path` (those that are not a run's first), for a message about what it holds."""
    names = _entries(path)
    names = [n for n in names if not _ours(n)] + [n for n in names if _ours(n)]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def make(path: Path) -> None:
    """Create the folder (and its parents); a file in the way is a ConfigError naming the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ConfigError(f"--output {path}: cannot create the folder, {e.filename or path} is a file "
                          f"({e.strerror}); give a folder path") from None
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot create the folder ({e.strerror}); give a writable folder path") \
            from None


def results(path: Path) -> str:
    """What results `path` holds, in words ("best.pth, metrics.csv (5 epochs), summary.json"), for a refusal."""
    from .outputs import read_metrics  # outputs imports nothing of ours that imports rundir

    held = []
    for name in RESULTS:
        if not (path / name).is_file():
            continue
        if name == "metrics.csv":
            try:
                name += f" ({len(read_metrics(path / name))} epochs)"
            except DaliTrainError:
                name += " (unreadable)"
        held.append(name)
    return ", ".join(held)


def clear_outputs(path: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Remove what a run stopped before its first checkpoint wrote (outputs and temp files but `keep`), nothing
    else. A folder holding results (RESULTS_ONLY, RUN) is refused: its results are never deleted here."""
    kind = classify(path)
    if kind in (RUN, RESULTS_ONLY):
        raise ConfigError(f"{path} holds a run's results ({results(path)}); nothing was deleted")
    for name in _entries(path):
        if name not in keep and _ours(name) and (path / name).is_file():
            (path / name).unlink()


def new_run_dir(cfg: TrainConfig, world: World) -> tuple[Path, RunDirLock | None]:
    """Rank 0 creates the run directory and locks it; every rank learns its path, or the reason it was refused."""
    run_dir, lock, error = None, None, None
    if world.is_main:
        run_dir = Path(cfg.output) if cfg.output else Path("runs") / (
            time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.model}-{cfg.dataset}")
        try:
            classify(run_dir)  # a file in the way is refused before anything is created
            make(run_dir)
            lock = RunDirLock(run_dir).acquire()  # before looking inside: a run starting there now is seen
            kind = classify(run_dir)
            if kind == RUN:
                raise ConfigError(f"--output {run_dir} already holds a run; continue it with --resume {run_dir}, "
                                  "or choose another --output")
            if kind == RESULTS_ONLY:
                raise ConfigError(f"--output {run_dir} holds a run's results ({results(run_dir)}) but no last.pth; "
                                  "choose another --output")
            if kind == UNSTARTED:
                raise ConfigError(f"--output {run_dir} holds a run stopped before its first checkpoint "
                                  f"(config.yaml, no last.pth); start it over from its saved config with "
                                  f"--resume {run_dir}, or choose another --output")
            if kind == LEFTOVERS:
                raise ConfigError(f"--output {run_dir} holds leftovers of a dali-train run ({listing(run_dir)})"
                                  " but no last.pth or config.yaml to resume or restart it from; move them away, or "
                                  "choose another --output")
            if kind == FOREIGN:
                raise ConfigError(f"--output {run_dir} is not a dali-train run and not empty (it holds "
                                  f"{listing(run_dir)}); choose another --output, or an empty folder")
        except (DaliTrainError, OSError) as e:  # every rank raises it, not rank 0 alone (the others would wait)
            if lock is not None:
                lock.release()
            error = e if isinstance(e, DaliTrainError) else ConfigError(
                f"--output {run_dir}: cannot use it ({e.strerror or e}); give a folder this user may write")
    run_dir, error = distributed.broadcast((run_dir, error), world)
    if error:
        raise error
    return Path(run_dir), lock
