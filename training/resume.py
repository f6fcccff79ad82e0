"""What a resume starts from: the checkpoint (or the config.yaml of a run stopped before its first one), the
run's config with --epochs applied, and whether only the final evaluation is left."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dali_pipes import ConfigError, DataError
from dali_pipes.strict_yaml import load_yaml

from .checkpoint import checkpoint_config, load_checkpoint
from .config import TrainConfig
from .state import TrainState


def find_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    return path / "last.pth" if path.is_dir() else path


def read_resume_state(ckpt_path: Path, epochs: int | None) -> tuple[TrainConfig, dict, bool]:
    """The run's config and checkpoint, and whether only the final evaluation is left to do."""
    state = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(state, ckpt_path)
    if "ranks" not in state:
        raise DataError(f"{ckpt_path}: not a resumable dali-train checkpoint (no per-rank state); start a new run")
    _same_run(ckpt_path, cfg)
    progress = TrainState.from_dict(state)
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
