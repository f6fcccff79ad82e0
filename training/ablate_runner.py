"""dali-ablate's runner: each arm and seed is one dali-train run directory, skipped when finished, resumed from
its last.pth, completed when only its final evaluation is missing, or started; one refused when it holds a run
with another config."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from dali_pipes import ConfigError, DaliTrainError, DataError
from dali_pipes.strict_yaml import load_yaml

from . import rundir
from .ablate_studies import Study, arm_configs, skip_reason
from .config import TrainConfig, absolute_paths
from .state import TrainState

NOT_COMPARED = ("output", "num_threads")  # may differ between the run on disk and this invocation


@dataclass
class RunRecord:
    arm: str
    seed: int
    run_dir: Path
    status: str  # "done" | "skipped" | "failed"
    note: str = ""
    summary: dict[str, Any] | None = None
    rows: list[dict[str, float]] = field(default_factory=list)


def _saved_config(run_dir: Path) -> dict[str, Any]:
    try:
        saved = load_yaml((run_dir / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise DataError(f"{run_dir}: config.yaml is missing or unreadable; remove the directory to rerun this "
                        "arm, or choose another --output")
    return saved


def _check_same(run_dir: Path, cfg: TrainConfig, saved: dict[str, Any]) -> None:
    wanted = absolute_paths(cfg).to_dict()  # as fit saved it
    # an option missing from config.yaml came after the run was made; it ran with that option's default
    saved = {**TrainConfig().to_dict(), **saved}
    saved["data_dir"] = absolute_paths(TrainConfig(data_dir=str(saved["data_dir"]))).data_dir  # relative: to here
    diffs = [k for k in wanted if k not in NOT_COMPARED and saved[k] != wanted[k]]
    if diffs:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} now" for k in diffs[:3])
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}{more}); rerun with the options the "
                          "study was started with, or choose another --output")


def _clear_partial(run_dir: Path) -> bool:
    """A run killed before its first checkpoint leaves config.yaml (at most): nothing to resume, so start over."""
    kind = rundir.classify(run_dir)
    if kind == rundir.EMPTY:
        return False
    if kind == rundir.RESULTS_ONLY:
        raise DataError(f"{run_dir} holds a run's results ({rundir.results(run_dir)}) but no last.pth; nothing was "
                        f"deleted — continue it with dali-train --resume {run_dir}, or choose another --output")
    if kind == rundir.FOREIGN:
        raise ConfigError(f"{run_dir} holds files that are not an unfinished dali-train run "
                          f"({rundir.listing(run_dir)}); move them away or choose another --output")
    rundir.clear_outputs(run_dir)  # its outputs and temp files; the lock file is the next run's to take
    return True


def run_one(cfg: TrainConfig, arm: str, log: Callable[[str], None], *, stop: Any = None) -> str:
    """Finish one run directory (cfg.output): skip, resume, complete or start it. Returns a note for results.
    `stop` is the run's stop source (None: a StopSignal on SIGINT/SIGTERM), as for `fit`."""
    from .checkpoint import load_checkpoint
    from .run import Interrupted, fit, resume

    run_dir = Path(cfg.output)
    tag = f"[{arm} seed {cfg.seed}]"

    def run_log(line: str) -> None:
        log(f"{tag} {line}")

    try:
        if (run_dir / "summary.json").is_file():
            _check_same(run_dir, cfg, _saved_config(run_dir))
            log(f"{tag} skipped: finished earlier (summary.json exists in {run_dir})")
            return "finished earlier"
        if (run_dir / "last.pth").is_file():
            state = load_checkpoint(run_dir / "last.pth")
            _check_same(run_dir, cfg, state["config"])
            if TrainState.from_dict(state).is_finished(cfg.epochs):
                log(f"{tag} all epochs are in last.pth but summary.json is missing: evaluating best.pth")
                resume(run_dir, log=run_log, stop=stop)  # resume only finishes such a run
                return "completed from last.pth"
            log(f"{tag} resuming {run_dir} from epoch {int(state['epoch']) + 1}"
                + (f" batch {int(state['batch']) + 1}" if state.get("batch") else ""))
            del state
            resume(run_dir, log=run_log, stop=stop)
            return "resumed"
        if _clear_partial(run_dir):
            log(f"{tag} {run_dir} held a run stopped before its first checkpoint: starting it over")
        log(f"{tag} starting in {run_dir}")
        fit(cfg, log=run_log, stop=stop)
        return ""
    except Interrupted as e:
        raise Interrupted(f"{tag} interrupted ({e.where()}); last.pth is saved — rerun the same dali-ablate "
                          "command to resume the study", e.exit_code, run_dir=e.run_dir, epoch=e.epoch, batch=e.batch,
                          signum=e.signum) from None
    finally:
        gc.collect()  # the finished run's loaders and model, before the next run builds its own


def read_record(arm: str, seed: int, run_dir: Path, note: str = "") -> RunRecord:
    from .run import read_metrics

    summary = json.loads((run_dir / "summary.json").read_text())
    return RunRecord(arm, seed, run_dir, "done", note, summary, read_metrics(run_dir / "metrics.csv"))


def check_existing(study: Study, base: TrainConfig, *, seeds: int, output: Path) -> None:
    """Before anything runs: every run directory already there must hold this study's run (its config.yaml)."""
    for arm, cfg in arm_configs(study, base).items():
        for k in range(seeds):
            run_dir = output / arm / f"seed{base.seed + k}"
            if (run_dir / "config.yaml").is_file() and ((run_dir / "summary.json").is_file()
                                                        or (run_dir / "last.pth").is_file()):
                _check_same(run_dir, cfg.replace(seed=base.seed + k, output=str(run_dir)), _saved_config(run_dir))


def run_study(study: Study, base: TrainConfig, *, seeds: int, output: Path,
              log: Callable[[str], None] = click.echo, stop: Any = None) -> list[RunRecord]:
    """Every arm x seed, seed-major (all arms of seed k before seed k+1), so a cut-short study is balanced.
    `stop`: the runs' stop source (None: each run's own StopSignal)."""
    from .run import Interrupted, resolve_device

    configs = arm_configs(study, base)
    device_type = resolve_device(base.device).type
    reasons = {arm: skip_reason(study.arms[arm], cfg, device_type) for arm, cfg in configs.items()}
    for arm, reason in reasons.items():
        if reason:
            log(f"[{arm}] skipped: {reason}")
    records = []
    todo = sum(1 for r in reasons.values() if not r) * seeds
    done = 0
    for k in range(seeds):
        seed = base.seed + k
        for arm, cfg in configs.items():
            run_dir = output / arm / f"seed{seed}"
            if reasons[arm]:
                records.append(RunRecord(arm, seed, run_dir, "skipped", reasons[arm]))
                continue
            done += 1
            log(f"run {done}/{todo}: arm {arm}, seed {seed}")
            try:
                note = run_one(cfg.replace(seed=seed, output=str(run_dir)), arm, log, stop=stop)
            except (ConfigError, DataError, Interrupted):
                raise
            except DaliTrainError as e:
                log(f"[{arm} seed {seed}] failed: {e}")  # divergence: a result of this arm, not a user error
                records.append(RunRecord(arm, seed, run_dir, "failed", str(e)))
                continue
            records.append(read_record(arm, seed, run_dir, note))
    return records
