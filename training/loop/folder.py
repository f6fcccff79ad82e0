"""What a folder holds, by its file names alone: empty, a run (last.pth), a run stopped before its first checkpoint
(config.yaml and nothing an epoch produces: nothing to resume, everything to restart it), a run's results without its
last.pth (best.pth, metrics.csv, summary.json or curves.png: removed to save space, or lost — never restarted over,
that would delete them), leftovers of a run (temp files, events, first_batch.png: none of those), or not a dali-train
run. RunDir (rundir.py) decides from this what a command may do there.
"""

from __future__ import annotations

import re
from pathlib import Path

from dali_pipes import ConfigError, DaliTrainError

from ..outputs import read_metrics
from .checkpoint import BEST_EPOCH
from .lock import LOCK_NAME

# Files a run writes: its outputs, and the temp files of its atomic writes (a kill can leave those behind).
OUTPUTS = ("config.yaml", "metrics.csv", "curves.png", "best.pth", "last.pth", "summary.json", "first_batch.png",
           "skipped.txt", "damaged.txt", "train.log")
_TEMP = re.compile(r"^\.(metrics\.csv|last\.pth|best\.pth|best-epoch\d+\.pth|config\.yaml|summary\.json|skipped\.txt"
                   r"|damaged\.txt)"
                   r"\..+\.tmp$")
# (the temp names of training.atomic)
EVENTS = re.compile(r"^events\.out\.tfevents\..+$")  # TensorBoard's event files (tensorboard_log.py)
# What only a finished epoch writes: a folder holding one of these holds results, whatever else is missing.
RESULTS = ("best.pth", "metrics.csv", "summary.json", "curves.png")

EMPTY, RUN, RESULTS_ONLY, UNSTARTED, LEFTOVERS, FOREIGN = \
    "empty", "run", "results-only", "unstarted", "leftovers", "foreign"

def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


def _ours(name: str) -> bool:
    return name in OUTPUTS or bool(_TEMP.match(name) or EVENTS.match(name) or BEST_EPOCH.match(name))


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
    if any(n in RESULTS or BEST_EPOCH.match(n) for n in names):
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
