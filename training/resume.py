"""What a resume starts from: the checkpoint (or the config.yaml of a run stopped before its first one), the
run's config with --epochs applied, and whether only the final evaluation is left."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from dali_pipes import ConfigError, DataError
from dali_pipes.strict_yaml import load_yaml

from .checkpoint import checkpoint_config, load_checkpoint
from .config import TrainConfig
from .outputs import read_metrics
from .state import TrainState


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a resume of `path` continues from: a file as given, a run directory's last.pth; a folder
    that lost its last.pth continues from best.pth only when best.pth is its latest epoch (read_resume_state
    refuses it otherwise)."""
    path = Path(path)
    if not path.is_dir():
        return path
    last, best = path / "last.pth", path / "best.pth"
    return best if not last.exists() and best.is_file() else last


def _beyond(ckpt_path: Path, progress: TrainState) -> str | None:
    """What the checkpoint's folder holds beyond the checkpoint's position (a later last.pth, metrics.csv rows or a
    summary.json of later epochs), in words; None when nothing. A resume from `ckpt_path` would overwrite that."""
    run_dir, here = ckpt_path.parent, (progress.epoch, progress.batch)
    if ckpt_path.name == "last.pth":  # the folder's own position; a metrics row beyond it is its epoch in flight
        return None
    last = run_dir / "last.pth"
    if last.is_file():
        later = TrainState.from_dict(load_checkpoint(last))
        if (later.epoch, later.batch) > here:
            return f"{last} is at epoch {later.epoch}" + (f" batch {later.batch}" if later.batch else "")
    try:
        rows = read_metrics(run_dir / "metrics.csv")
    except DataError:
        return f"{run_dir / 'metrics.csv'} is unreadable, so what it holds cannot be kept"
    epochs = [int(r["epoch"]) for r in rows if r["epoch"] == r["epoch"]]  # nan: an empty cell
    if epochs and max(epochs) > progress.epoch:
        return f"metrics.csv has epochs up to {max(epochs)}"
    try:
        ran = int(json.loads((run_dir / "summary.json").read_text())["epochs_run"])
    except (OSError, ValueError, TypeError, KeyError):
        ran = 0
    return f"summary.json reports {ran} epochs" if ran > progress.epoch else None


def read_resume_state(ckpt_path: Path, epochs: int | None) -> tuple[TrainConfig, dict, bool]:
    """The run's config and checkpoint, and whether only the final evaluation is left to do."""
    state = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(state, ckpt_path)
    if "ranks" not in state:
        raise DataError(f"{ckpt_path}: not a resumable dali-train checkpoint (no per-rank state); start a new run")
    _same_run(ckpt_path, cfg)
    weights = state["model"].items() if isinstance(state["model"], dict) else ()
    bad = [k for k, v in weights if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()]
    if bad:  # training on from nan weights only diverges: no option of this run helps
        raise DataError(f"{ckpt_path}: {len(bad)} of its weight tensors hold inf/nan (e.g. {bad[0]}); it cannot be "
                        "resumed — start a new run (from an earlier checkpoint of this run, copied into a new "
                        "folder as last.pth, if there is one)")
    progress = TrainState.from_dict(state)
    beyond = _beyond(ckpt_path, progress)
    if beyond is not None:
        at = f"epoch {progress.epoch}" + (f" batch {progress.batch}" if progress.batch else "")
        missing = "" if (ckpt_path.parent / "last.pth").exists() else "its last.pth is missing and "
        raise DataError(f"--resume {ckpt_path}: {missing}this checkpoint is at {at}, behind the run's results "
                        f"({beyond}); continuing from it would overwrite them, so nothing was changed. Resume the "
                        f"run's last.pth, or branch from this checkpoint in a new folder (copy it there as "
                        f"last.pth and --resume that folder)")
    if epochs is not None:
        if epochs < progress.epoch + (1 if progress.batch else 0):
            raise ConfigError(f"--epochs={epochs} is invalid: the run already trained {progress.epoch} epochs")
        cfg = cfg.replace(epochs=epochs)
    done = progress.is_finished(cfg.epochs)
    if done and not _summary_matches(ckpt_path.parent / "summary.json", progress.epoch):
        return cfg, state, True  # interrupted during the final evaluation: finish it
    if done:
        why = "stopped early" if progress.stopped_early else f"finished its {cfg.epochs} epochs"
        raise ConfigError(f"{ckpt_path}: this run {why}; pass --epochs larger than {progress.epoch} "
                          "to extend it, or start a new run")
    return cfg, state, False


def _same_run(ckpt_path: Path, cfg: TrainConfig) -> None:
    """Refuse a checkpoint whose config is not the config.yaml beside it: one copied in from another run (another
    model, dataset, recipe...) would otherwise resume as that run and overwrite this folder's config.yaml.
    `epochs` may differ (an extension by --epochs rewrites config.yaml before its first checkpoint); a
    config.yaml that is missing or unreadable is no evidence either way, and resume rewrites it."""
    path = ckpt_path.parent / "config.yaml"
    try:
        folder = saved_config(ckpt_path.parent, None)
    except (DataError, ValueError, TypeError):  # unreadable, not a mapping, or not a valid config (ConfigError)
        return
    ours, theirs = cfg.to_dict(), folder.to_dict()
    differ = [k for k in ours if k != "epochs" and ours[k] != theirs[k]]
    if differ:
        shown = ", ".join(f"{k} {ours[k]!r} (config.yaml: {theirs[k]!r})" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise DataError(f"{ckpt_path}: not this folder's run: its config differs from {path} in {shown}{more}; it "
                        "was copied from another run or one of the two was edited — resume the run it came from, "
                        "or start a new run")


def _summary_matches(path: Path, epochs_run: int) -> bool:
    """Whether summary.json exists and reports `epochs_run` epochs (one from a shorter run is stale)."""
    try:
        summary = json.loads(path.read_text())
        return int(summary["epochs_run"]) == epochs_run
    except (OSError, ValueError, TypeError, KeyError):
        return False


def saved_config(run_dir: Path, epochs: int | None) -> TrainConfig:
    """The config.yaml of a run stopped before its first checkpoint (with --epochs applied, when given)."""
    path = run_dir / "config.yaml"
    try:
        values = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise DataError(f"{path}: unreadable ({reason}); start a new run with another --output") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: not a dali-train config (a mapping of options); start a new run with another "
                        "--output")
    cfg = TrainConfig.from_dict(values, source=str(path))
    return cfg if epochs is None else cfg.replace(epochs=epochs)
