"""`RunDir`, the one owner of a run folder: its config.yaml (read and written here only), its checkpoints and
progress, whether a config is its run's (one rule, `differences`), and the verdict on what a command may do there
(new, restart, resume, finish-only, done, refused, with the reason). dali-train --output asks `verdict_new`;
dali-train --resume and dali-ablate ask `verdict` once and carry it out (run.carry_out). One process writes a run
folder at a time (lock.py); what a folder holds by its file names is folder.py's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dali_pipes import ConfigError, DaliTrainError, DataError
from dali_pipes.strict_yaml import load_yaml

from .. import distributed
from ..config import TrainConfig
from ..outputs import read_metrics, write_text
from ..recipe.factory import amp_dtype_name, device_here
from .checkpoint import checkpoint_config, load_checkpoint, nonfinite_tensors
from .folder import EMPTY, FOREIGN, LEFTOVERS, RESULTS_ONLY, RUN, UNSTARTED, classify, listing, make, results
from .lock import RunDirLock
from .progress import TrainState

if TYPE_CHECKING:
    from ..distributed import World

# What a command may do with a folder (RunDir.verdict)
NEW, RESTART, RESUME, FINISH, DONE, REFUSED = "new", "restart", "resume", "finish-only", "done", "refused"
# Options that never make another run: where it is written, its threads, the best checkpoints it keeps. `epochs`
# is the run's own to extend (--resume --epochs, dali-ablate --epochs): asked as `epochs=`, checked against progress.
NOT_COMPARED = ("output", "num_threads", "keep_best", "epochs")


@dataclass(frozen=True)
class Verdict:
    """What a command may do with a run folder, and why. RESUME and FINISH continue `state` (the checkpoint at
    `checkpoint`, loaded) with `cfg`; NEW and RESTART start `cfg` there; DONE and REFUSED hold the `error` a command
    that cannot skip raises."""

    kind: str
    reason: str
    cfg: TrainConfig | None = None
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    error: DaliTrainError | None = None

    @property
    def progress(self) -> TrainState:
        return TrainState.from_dict(self.state or {})


def _refused(e: DaliTrainError) -> Verdict:
    return Verdict(REFUSED, str(e), error=e)


def differences(ours: TrainConfig, theirs: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(option, ours, theirs) for every option but NOT_COMPARED in which two configs differ: another run. Each is
    compared as it runs here (config.yaml keeps the resolved config: "auto" as the device it chose, amp_dtype as
    what autocast used), so a study's config with device "auto" is the run it wrote."""
    a, b = _as_run(ours), _as_run(theirs)
    return [(k, a[k], b[k]) for k in a if k not in NOT_COMPARED and a[k] != b[k]]


def _as_run(cfg: TrainConfig) -> dict[str, Any]:
    device = device_here(cfg.device)
    # the LR as one process trains with it (a distributed run's config.yaml holds the LR of its world size)
    return {**cfg.to_dict(), "device": device.type, "amp_dtype": amp_dtype_name(cfg, device),
            "lr": cfg.scaled_lr(1)}


class RunDir:
    """One run folder: `given` is what the user named (the folder, or a checkpoint file in it)."""

    def __init__(self, given: str | Path):
        self.given = Path(given)
        self.path = self.given.parent if self.given.is_file() or self.given.suffix == ".pth" else self.given

    def kind(self, option: str = "--output") -> str:
        return classify(self.path, option)

    def make(self) -> None:
        make(self.path)

    def lock(self) -> RunDirLock:
        """The folder's lock, not yet acquired (`with rd.lock():`)."""
        return RunDirLock(self.path)

    # -- config.yaml: read and written here only ----------------------------------------------------------------------
    def read_config(self) -> TrainConfig:
        """The run's config.yaml; unreadable, not a mapping or not a valid config is a DataError naming it."""
        path = self.path / "config.yaml"
        try:
            values = load_yaml(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise DataError(f"{path}: unreadable ({reason}); start a new run with another --output") from None
        if not isinstance(values, dict):
            raise DataError(f"{path}: not a dali-train config (a mapping of options); start a new run with another "
                            "--output")
        try:
            return TrainConfig.from_dict(values, source=str(path))
        except (ConfigError, TypeError, ValueError) as e:
            raise DataError(f"{path}: not a valid dali-train config ({str(e).splitlines()[0]})") from None

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # -- what the folder holds ----------------------------------------------------------------------------------------
    def summary_epochs(self) -> int | None:
        """The epochs summary.json reports (None: no readable summary.json)."""
        try:
            return int(json.loads((self.path / "summary.json").read_text())["epochs_run"])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def beyond(self, ckpt_path: Path, progress: TrainState) -> str | None:
        """What the folder holds beyond the checkpoint's position (a later last.pth, metrics.csv rows or a
        summary.json of later epochs), in words; None when nothing. A resume from `ckpt_path` would overwrite it."""
        here = (progress.epoch, progress.batch)
        if ckpt_path.name == "last.pth":  # the folder's own position; a metrics row beyond it is its epoch in flight
            return None
        last = self.path / "last.pth"
        if last.is_file():
            later = TrainState.from_dict(load_checkpoint(last))
            if (later.epoch, later.batch) > here:
                return f"{last} is at epoch {later.epoch}" + (f" batch {later.batch}" if later.batch else "")
        try:
            rows = read_metrics(self.path / "metrics.csv")
        except DataError:
            return f"{self.path / 'metrics.csv'} is unreadable, so what it holds cannot be kept"
        epochs = [int(r["epoch"]) for r in rows if r["epoch"] == r["epoch"]]  # nan: an empty cell
        if epochs and max(epochs) > progress.epoch:
            return f"metrics.csv has epochs up to {max(epochs)}"
        ran = self.summary_epochs() or 0
        return f"summary.json reports {ran} epochs" if ran > progress.epoch else None

    # -- the verdict ------------------------------------------------------------------------------------------------
    def verdict(self, cfg: TrainConfig | None = None, *, epochs: int | None = None) -> Verdict:
        """What `dali-train --resume` (cfg None) or dali-ablate (cfg: the arm's config, with its `epochs`) may do
        here. Nothing is changed: the command carries the verdict out (training.run.carry_out)."""
        try:
            return self._verdict(cfg, epochs)
        except DaliTrainError as e:
            return _refused(e)

    def _verdict(self, cfg: TrainConfig | None, epochs: int | None) -> Verdict:
        where = f"--resume {self.given}" if cfg is None else str(self.path)
        if self.given.is_dir() or (cfg is not None and not self.given.exists()):
            kind = self.kind("--resume" if cfg is None else "--output")
            if kind == EMPTY and cfg is not None:
                return Verdict(NEW, "empty", cfg=cfg)
            if kind in (UNSTARTED, LEFTOVERS) and (kind == UNSTARTED or cfg is not None):
                run_cfg = cfg if cfg is not None else self.read_config()
                run_cfg = run_cfg if epochs is None else run_cfg.replace(epochs=epochs)
                why = "stopped before its first checkpoint (config.yaml, no last.pth)" if kind == UNSTARTED else \
                    f"holds leftovers of a run stopped before its first checkpoint ({listing(self.path)})"
                source = "its config.yaml" if cfg is None else "this study's config"
                return Verdict(RESTART, f"{why}; starting it over from {source}", run_cfg)
            if kind in (EMPTY, LEFTOVERS, FOREIGN):
                held = ", it is empty" if kind == EMPTY else f"; it holds {listing(self.path)}"
                what = ("a run directory or a .pth file written by dali-train" if cfg is None else
                        "an empty folder, or move them away")
                raise (DataError if cfg is None else ConfigError)(
                    f"{where}: not a dali-train run (no last.pth or config.yaml{held}); pass {what}")
            if cfg is not None and (self.path / "summary.json").is_file():
                return self._finished_study(cfg, epochs)
            if kind == RESULTS_ONLY and not (self.path / "best.pth").is_file():
                raise DataError(f"{where}: it holds a run's results ({results(self.path)}) but no last.pth or "
                                "best.pth to continue from; nothing was changed. Restore last.pth, or start a new "
                                "run with another --output")
            ckpt = self.path / ("last.pth" if kind == RUN else "best.pth")
        else:
            ckpt = self.given
        return self._from_checkpoint(ckpt, cfg, epochs, where)

    def _finished_study(self, cfg: TrainConfig, epochs: int | None) -> Verdict:
        try:
            saved = self.read_config()
        except DataError:
            raise DataError(f"{self.path}: config.yaml is missing or unreadable; remove the directory to rerun "
                            "this arm, or choose another --output") from None
        self._same_run(cfg, saved, "config.yaml")
        if epochs is None or epochs == saved.epochs:
            return Verdict(DONE, f"finished earlier (summary.json exists in {self.path})", saved)
        return self._from_checkpoint(self.path / "last.pth", cfg, epochs, str(self.path))

    def _same_run(self, cfg: TrainConfig, saved: TrainConfig, what: str) -> None:
        differ = differences(cfg, saved)
        if differ:
            shown = "; ".join(f"{k}: {b!r} there, {a!r} now" for k, a, b in differ[:3])
            more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
            raise ConfigError(f"{self.path} holds a run with another config ({shown}{more}, in its {what}); rerun "
                              "with the options it was started with, or choose another --output")

    def _from_checkpoint(self, ckpt: Path, cfg: TrainConfig | None, epochs: int | None, where: str) -> Verdict:
        state = load_checkpoint(ckpt)
        run_cfg = checkpoint_config(state, ckpt)
        if "ranks" not in state:
            raise DataError(f"{ckpt}: not a resumable dali-train checkpoint (no per-rank state); start a new run")
        self._checkpoint_is_the_folders(ckpt, run_cfg)
        if cfg is not None:
            self._same_run(cfg, run_cfg, ckpt.name)
        bad = nonfinite_tensors(state["model"])
        if bad:  # training on from nan weights only diverges: no option of this run helps
            raise DataError(f"{ckpt}: {len(bad)} of its weight tensors hold inf/nan (e.g. {bad[0]}); it cannot be "
                            "resumed — start a new run (from an earlier checkpoint of this run, copied into a new "
                            "folder as last.pth, if there is one)")
        progress = TrainState.from_dict(state)
        beyond = self.beyond(ckpt, progress)
        if beyond is not None:
            at = f"epoch {progress.epoch}" + (f" batch {progress.batch}" if progress.batch else "")
            missing = "" if (ckpt.parent / "last.pth").exists() else "its last.pth is missing and "
            raise DataError(f"--resume {ckpt}: {missing}this checkpoint is at {at}, behind the run's results "
                            f"({beyond}); continuing from it would overwrite them, so nothing was changed. Resume "
                            f"the run's last.pth, or branch from this checkpoint in a new folder (copy it there as "
                            f"last.pth and --resume that folder)")
        if epochs is not None:
            if epochs < progress.epoch + (1 if progress.batch else 0):
                raise ConfigError(f"--epochs={epochs} is invalid: the run already trained {progress.epoch} epochs")
            run_cfg = run_cfg.replace(epochs=epochs)
        at = f"epoch {progress.epoch + 1}" + (f" batch {progress.batch + 1}" if progress.batch else "")
        if not progress.is_finished(run_cfg.epochs):
            return Verdict(RESUME, f"continues from {ckpt.name} at {at}", run_cfg, ckpt, state)
        if self.summary_epochs() != progress.epoch:  # interrupted during the final evaluation: finish it
            return Verdict(FINISH, f"all epochs are in {ckpt.name} but summary.json is missing", run_cfg, ckpt,
                           state)
        why = "stopped early" if progress.stopped_early else f"finished its {run_cfg.epochs} epochs"
        error = ConfigError(f"{ckpt}: this run {why}; pass --epochs larger than {progress.epoch} to extend it, or "
                            "start a new run")
        return Verdict(DONE, why, run_cfg, ckpt, state, error)

    def _checkpoint_is_the_folders(self, ckpt: Path, cfg: TrainConfig) -> None:
        """Refuse a checkpoint whose config is not the config.yaml beside it: one copied in from another run would
        otherwise resume as that run and overwrite this folder's config.yaml. A config.yaml that is missing or
        unreadable is no evidence either way, and resume rewrites it."""
        try:
            folder = RunDir(ckpt.parent).read_config()
        except DataError:
            return
        differ = differences(cfg, folder)
        if differ:
            shown = ", ".join(f"{k} {a!r} (config.yaml: {b!r})" for k, a, b in differ[:3])
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise DataError(f"{ckpt}: not this folder's run: its config differs from {ckpt.parent / 'config.yaml'} "
                            f"in {shown}{more}; it was copied from another run or one of the two was edited — resume "
                            "the run it came from, or start a new run")

    def verdict_new(self) -> Verdict:
        """What `dali-train --output` may do here: NEW in an empty (or missing) folder, else REFUSED."""
        path = self.path
        try:
            kind = classify(path)
        except ConfigError as e:
            return _refused(e)
        refusal = {
            RUN: f"--output {path} already holds a run; continue it with --resume {path}, or choose another --output",
            UNSTARTED: f"--output {path} holds a run stopped before its first checkpoint (config.yaml, no last.pth); "
                       f"start it over from its saved config with --resume {path}, or choose another --output",
            FOREIGN: f"--output {path} is not a dali-train run and not empty (it holds {{listing}}); choose another "
                     "--output, or an empty folder",
            LEFTOVERS: f"--output {path} holds leftovers of a dali-train run ({{listing}}) but no last.pth or "
                       "config.yaml to resume or restart it from; move them away, or choose another --output",
            RESULTS_ONLY: f"--output {path} holds a run's results ({{results}}) but no last.pth; choose another "
                          "--output",
        }.get(kind)
        if refusal is None:
            return Verdict(NEW, "empty")
        text = refusal.replace("{listing}", listing(path) if kind in (FOREIGN, LEFTOVERS) else "")
        text = text.replace("{results}", results(path) if kind == RESULTS_ONLY else "")
        return _refused(ConfigError(text))


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
            verdict = RunDir(run_dir).verdict_new()
            if verdict.error is not None:
                raise verdict.error
        except (DaliTrainError, OSError) as e:  # every rank raises it, not rank 0 alone (the others would wait)
            if lock is not None:
                lock.release()
            error = e if isinstance(e, DaliTrainError) else ConfigError(
                f"--output {run_dir}: cannot use it ({e.strerror or e}); give a folder this user may write")
    run_dir, error = distributed.broadcast((run_dir, error), world)
    if error:
        raise error
    return Path(run_dir), lock
