"""dali-ablate's runner: each arm and seed is one dali-train run directory, and its RunDir's verdict says what to do:
skip it when finished, resume it, complete it when only its final evaluation is missing, or start it; refuse it
when it holds a run with another config (the same rule, and the same exemptions, as dali-train --resume)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dali_pipes import ConfigError, DaliTrainError, DataError

from ..config import TrainConfig, absolute_paths
from ..loop import DONE, FINISH, NEW, REFUSED, RESTART, RESUME, RunDir
from .studies import Study, arm_configs, skip_reason

@dataclass
class RunRecord:
    arm: str
    seed: int
    run_dir: Path
    status: str  # "done" | "skipped" | "failed"
    note: str = ""
    summary: dict[str, Any] | None = None
    rows: list[dict[str, float]] = field(default_factory=list)


def run_one(cfg: TrainConfig, arm: str, log: Callable[[str], None], *, stop: Any = None) -> str:
    """Finish one run directory (cfg.output) as its verdict says: skip, resume, complete or start it. Returns a note
    for results. `stop` is the run's stop source (None: a StopSignal on SIGINT/SIGTERM), as for `fit`."""
    from ..loop import Interrupted, carry_out

    folder = RunDir(cfg.output)
    tag = f"[{arm} seed {cfg.seed}]"

    def run_log(line: str) -> None:
        log(f"{tag} {line}")

    try:
        folder.make()
        with folder.lock():
            verdict = folder.verdict(absolute_paths(cfg), epochs=cfg.epochs)
            if verdict.kind == DONE:
                log(f"{tag} skipped: {verdict.reason}")
                return "finished earlier"
            note = {FINISH: "completed from last.pth", RESUME: "resumed"}.get(verdict.kind, "")
            if verdict.kind == FINISH:
                log(f"{tag} {verdict.reason}: evaluating best.pth")
            elif verdict.kind == RESUME:
                log(f"{tag} resuming {folder.path}: {verdict.reason}")
            elif verdict.kind in (NEW, RESTART):
                log(f"{tag} starting in {folder.path}")
            carry_out(folder, verdict, log=run_log, stop=stop)
            return note
    except Interrupted as e:
        raise Interrupted(f"{tag} interrupted ({e.where()}); last.pth is saved — rerun the same dali-ablate "
                          "command to resume the study", e.exit_code, run_dir=e.run_dir, epoch=e.epoch, batch=e.batch,
                          signum=e.signum) from None
    finally:
        gc.collect()  # the finished run's loaders and model, before the next run builds its own


def read_record(arm: str, seed: int, run_dir: Path, note: str = "") -> RunRecord:
    from ..outputs import read_metrics

    summary = json.loads((run_dir / "summary.json").read_text())
    return RunRecord(arm, seed, run_dir, "done", note, summary, read_metrics(run_dir / "metrics.csv"))


def check_existing(study: Study, base: TrainConfig, *, seeds: int, output: Path) -> None:
    """Before anything runs: every run directory already there must hold this study's run (its config.yaml)."""
    for arm, cfg in arm_configs(study, base).items():
        for k in range(seeds):
            run_dir = output / arm / f"seed{base.seed + k}"
            if (run_dir / "config.yaml").is_file() and ((run_dir / "summary.json").is_file()
                                                        or (run_dir / "last.pth").is_file()):
                want = absolute_paths(cfg.replace(seed=base.seed + k, output=str(run_dir)))
                verdict = RunDir(run_dir).verdict(want, epochs=want.epochs)
                if verdict.kind == REFUSED:
                    raise verdict.error


def run_study(study: Study, base: TrainConfig, *, seeds: int, output: Path,
              log: Callable[[str], None] = click.echo, stop: Any = None) -> list[RunRecord]:
    """Every arm x seed, seed-major (all arms of seed k before seed k+1), so a cut-short study is balanced.
    `stop`: the runs' stop source (None: each run's own StopSignal)."""
    from ..loop import Interrupted
    from ..recipe import resolve_device

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
