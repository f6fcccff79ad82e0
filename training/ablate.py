"""`dali-ablate`: run every arm of an ablation study over several seeds, resumably, and report the differences.

Output directory (`--output DIR`):

    DIR/<arm>/seed<seed>/   one dali-train run directory per arm and seed (seed = --seed + k, k = 0..K-1)
    DIR/results.csv         one row per run; every figure is read from that run's summary.json / metrics.csv
    DIR/summary.md          mean ± std per arm, difference to the baseline arm (the first) with Welch's t
    DIR/curves.png          val accuracy per epoch per arm, mean over seeds (band: min..max)
    DIR/final_acc.png       final-epoch val accuracy per arm: every seed, and mean ± std

Rerunning the same command continues the study: a run whose summary.json exists is skipped, a run with a last.pth
and no summary.json is resumed from it (`training.run.resume`), the others start. A run directory that holds a run
with another config is refused rather than reused.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click
import yaml

from dali_pipes import ConfigError, DaliTrainError, DataError

from .cli import _options, _run_guarded, with_overrides
from . import rundir
from .config import TrainConfig
from .state import TrainState

_D = TrainConfig()
ARM_NAME = re.compile(r"^[A-Za-z0-9+][A-Za-z0-9._+=-]*$")
MANAGED = ("seed", "output")  # set by dali-ablate for every run
NOT_COMPARED = ("output", "num_threads")  # may differ between the run on disk and this invocation
RESULT_FIELDS = ("arm", "seed", "status", "final_val_acc", "best_val_acc", "best_epoch", "epochs_run",
                 "final_train_loss", "mean_epoch_time_s", "peak_cuda_alloc_mib", "peak_host_rss_mib", "amp_dtype",
                 "device", "run_dir", "note")


# ---------------------------------------------------------------------------------------------------- studies

def _base_or_default(base: TrainConfig, name: str) -> Any:
    """The base config's value of an option an arm switches on, or dali-train's default where the base has it off."""
    value = getattr(base, name)
    return value if value else getattr(_D, name)


def _augment_strength(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {name: {"augment": name} for name in ("none", "weak", "strong")}


def _mixing(base: TrainConfig) -> dict[str, dict[str, Any]]:
    mixup, cutmix = _base_or_default(base, "mixup_alpha"), _base_or_default(base, "cutmix_alpha")
    prob = {"mix_prob": _base_or_default(base, "mix_prob")}
    return {"none": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
            "mixup": {"mixup_alpha": mixup, "cutmix_alpha": 0.0, **prob},
            "cutmix": {"mixup_alpha": 0.0, "cutmix_alpha": cutmix, **prob},
            "both": {"mixup_alpha": mixup, "cutmix_alpha": cutmix, **prob}}


def _label_smoothing(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {f"ls-{eps:g}": {"label_smoothing": eps} for eps in (0.0, 0.05, 0.1, 0.2)}


def _precision(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {"fp32": {"amp": False},
            "fp16": {"amp": True, "amp_dtype": "float16"},
            "bf16": {"amp": True, "amp_dtype": "bfloat16"}}


def _recipe(base: TrainConfig) -> dict[str, dict[str, Any]]:
    """The seed chapter's exercise 6: a plain baseline, then one technique added at a time up to the full recipe."""
    steps = [
        ("baseline", {"augment": "weak", "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0,
                      "drop_path": 0.0, "amp": False}),
        ("+autoaugment", {"augment": "weak+autoaugment"}),
        ("+mixup-cutmix", {"mixup_alpha": _base_or_default(base, "mixup_alpha"),
                           "cutmix_alpha": _base_or_default(base, "cutmix_alpha"),
                           "mix_prob": _base_or_default(base, "mix_prob")}),
        ("+label-smoothing", {"label_smoothing": _base_or_default(base, "label_smoothing")}),
        ("+drop-path", {"drop_path": _base_or_default(base, "drop_path")}),
        ("+amp", {"amp": True}),  # the full recipe; the autocast dtype is the base's (bfloat16 on the CPU)
    ]
    arms: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for name, step in steps:
        changes = {**changes, **step}
        arms[name] = changes
    return arms


STUDIES: dict[str, tuple[Callable[[TrainConfig], dict[str, dict[str, Any]]], str]] = {
    "augment-strength": (_augment_strength, "augment none / weak / strong"),
    "mixing": (_mixing, "no mixing / Mixup / CutMix / both"),
    "label-smoothing": (_label_smoothing, "label smoothing 0 / 0.05 / 0.1 / 0.2"),
    "precision": (_precision, "fp32 / fp16 / bf16 autocast (fp16 is skipped on the CPU)"),
    "recipe": (_recipe, ("plain crop+flip baseline, then +autoaugment, +mixup/cutmix, +label smoothing, "
                         "+drop path, +AMP (the full recipe)")),
}


@dataclass(frozen=True)
class Study:
    name: str
    source: str  # "built-in" or the YAML file's path
    arms: dict[str, dict[str, Any]]  # arm -> the options it changes; the first arm is the baseline


def load_study(spec: str, base: TrainConfig) -> Study:
    if spec in STUDIES:
        return Study(spec, "built-in", STUDIES[spec][0](base))
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.exists():
        return _study_file(path)
    raise ConfigError(f"--study {spec!r}: unknown study; choose one of {', '.join(STUDIES)}, or give a YAML file "
                      "(arms: {name: {option: value, ...}, ...})")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads `1e-3` as a string; a float option given that way is taken as the number it spells."""
    floats = {f.name for f in fields(TrainConfig) if f.type in ("float", float, "float | None")}
    out = {}
    for k, v in values.items():
        if k in floats and isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass  # left for TrainConfig to refuse with its own message
        out[k] = v
    return out


def _study_file(path: Path) -> Study:
    where = f"--study {path}"
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror}); check the path") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("arms"), dict) or not doc["arms"]:
        raise ConfigError(f"{where}: expected a mapping with 'arms: {{name: {{option: value, ...}}, ...}}' "
                          "(the first arm is the baseline)")
    extra = sorted(str(k) for k in doc if k not in ("arms", "description"))
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(extra)}; expected arms (and description)")
    known = {f.name for f in fields(TrainConfig)}
    arms: dict[str, dict[str, Any]] = {}
    for name, options in doc["arms"].items():
        name = str(name)
        if not ARM_NAME.match(name):
            raise ConfigError(f"{where}: arm name {name!r} is not usable as a directory name; use letters, digits "
                              "and . _ + = -")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: arm {name!r}: expected a mapping of option names to values")
        options = {str(k).replace("-", "_"): v for k, v in options.items()}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"{where}: arm {name!r}: unknown option(s) {', '.join(unknown)}")
        managed = sorted(set(options) & set(MANAGED))
        if managed:
            raise ConfigError(f"{where}: arm {name!r}: {', '.join(managed)} is set by dali-ablate for every run "
                              "(--seed is the base seed, --output the study directory); remove it from the arm")
        arms[name] = _coerce(options)
    return Study(path.stem, str(path), arms)


def arm_configs(study: Study, base: TrainConfig) -> dict[str, TrainConfig]:
    """Every arm's TrainConfig (base options, then the arm's changes), validated before anything runs."""
    configs = {}
    for name, changes in study.arms.items():
        try:
            configs[name] = base.replace(**changes)
        except ConfigError as e:
            raise ConfigError(f"study {study.name}: arm {name!r}: {e}") from None
    return configs


def skip_reason(changes: dict[str, Any], cfg: TrainConfig, device_type: str) -> str | None:
    """Why an arm cannot run as named here, or None. An arm that asks for float16 autocast on the CPU would run
    bfloat16 (dali-train's CPU fallback) and be mislabelled, so it is skipped instead."""
    if device_type == "cpu" and cfg.amp and changes.get("amp_dtype") == "float16":
        return ("float16 autocast needs a CUDA device; on the CPU dali-train would run bfloat16 instead, "
                "so this arm is not run here")
    return None


# ---------------------------------------------------------------------------------------------------- runs

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
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise DataError(f"{run_dir}: config.yaml is missing or unreadable; remove the directory to rerun this "
                        "arm, or choose another --output")
    return saved


def _check_same(run_dir: Path, cfg: TrainConfig, saved: dict[str, Any]) -> None:
    wanted = cfg.to_dict()
    missing = object()
    diffs = [k for k in wanted if k not in NOT_COMPARED and saved.get(k, missing) != wanted[k]]
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
    if kind == rundir.FOREIGN:
        raise ConfigError(f"{run_dir} holds files that are not an unfinished dali-train run "
                          f"({rundir.listing(run_dir)}); move them away or choose another --output")
    rundir.clear_outputs(run_dir)  # its outputs and temp files; the lock file is the next run's to take
    return True


def run_one(cfg: TrainConfig, arm: str, log: Callable[[str], None]) -> str:
    """Finish one run directory (cfg.output): skip, resume, complete or start it. Returns a note for results."""
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
                resume(run_dir, log=run_log)  # resume only finishes such a run
                return "completed from last.pth"
            log(f"{tag} resuming {run_dir} from epoch {int(state['epoch']) + 1}"
                + (f" batch {int(state['batch']) + 1}" if state.get("batch") else ""))
            del state
            resume(run_dir, log=run_log)
            return "resumed"
        if _clear_partial(run_dir):
            log(f"{tag} {run_dir} held a run stopped before its first checkpoint: starting it over")
        log(f"{tag} starting in {run_dir}")
        fit(cfg, log=run_log)
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
              log: Callable[[str], None] = click.echo) -> list[RunRecord]:
    """Every arm x seed, seed-major (all arms of seed k before seed k+1), so a cut-short study is balanced."""
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
                note = run_one(cfg.replace(seed=seed, output=str(run_dir)), arm, log)
            except (ConfigError, DataError, Interrupted):
                raise
            except DaliTrainError as e:
                log(f"[{arm} seed {seed}] failed: {e}")  # divergence: a result of this arm, not a user error
                records.append(RunRecord(arm, seed, run_dir, "failed", str(e)))
                continue
            records.append(read_record(arm, seed, run_dir, note))
    return records


# ---------------------------------------------------------------------------------------------------- reports

def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def result_row(r: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"arm": r.arm, "seed": r.seed, "status": r.status, "run_dir": str(r.run_dir),
                           "note": r.note}
    if r.summary is not None:
        s = r.summary
        times = _finite([m.get("epoch_time_s") for m in r.rows])
        cuda = _finite([m.get("max_mem_allocated_mib") for m in r.rows])
        rss = _finite([m.get("host_rss_peak_mib") for m in r.rows])
        row.update(
            final_val_acc=s.get("final_epoch_val_acc"),
            best_val_acc=s.get("best_val_acc"),
            best_epoch=s.get("best_epoch"),
            epochs_run=s.get("epochs_run"),
            final_train_loss=r.rows[-1]["train_loss"] if r.rows else None,
            mean_epoch_time_s=statistics.fmean(times) if times else None,
            peak_cuda_alloc_mib=max(cuda) if cuda else None,
            peak_host_rss_mib=max(rss) if rss else None,
            amp_dtype=s.get("amp_dtype") or "float32",
            device=s.get("device_name") or s.get("device"),
        )
    return {k: ("" if row.get(k) is None else row[k]) for k in RESULT_FIELDS}


def write_results(records: list[RunRecord], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(result_row(r) for r in records)
    tmp.replace(path)


def welch_t(a: list[float], b: list[float]) -> float | None:
    """Welch's t of mean(a) - mean(b); None with fewer than 2 values on a side. No spread at all: 0 if the means
    are equal, else +-inf."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.fmean(a) - statistics.fmean(b)
    if se == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f} (1 run)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _changes(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(the base config)"


def write_summary(study: Study, base: TrainConfig, seeds: int, records: list[RunRecord], path: Path) -> None:
    arms = list(study.arms)
    baseline = arms[0]
    by_arm = {arm: [r for r in records if r.arm == arm] for arm in arms}
    done = {arm: [r for r in rs if r.status == "done"] for arm, rs in by_arm.items()}
    final = {arm: [float(r.summary["final_epoch_val_acc"]) for r in rs] for arm, rs in done.items()}
    devices = sorted({str(r.summary.get("device_name") or r.summary.get("device")) for rs in done.values()
                      for r in rs})
    differing = {k: v for k, v in base.to_dict().items() if k not in ("output", "seed") and v != getattr(_D, k)}
    lines = [
        f"# Ablation study: {study.name}",
        "",
        (f"Study: {study.name} ({study.source}), {len(arms)} arms x {seeds} seed(s) (seeds {base.seed}.."
         f"{base.seed + seeds - 1}); baseline arm: **{baseline}**. Written {time.strftime('%Y-%m-%d %H:%M')} by "
         f"dali-ablate; device(s): {', '.join(devices) or 'n/a'}."),
        "",
        ("Base config (options not at their dali-train default): "
         + (", ".join(f"{k}={v}" for k, v in differing.items()) or "all defaults") + "."),
        "",
        "| arm | changes to the base config |",
        "|---|---|",
        *(f"| {arm} | {_changes(study.arms[arm])} |" for arm in arms),
        "",
        "## Results",
        "",
        ("Final-epoch val accuracy (the primary figure) and best val accuracy, mean ± sample std over seeds, in %. "
         "Difference to the baseline in percentage points; Welch's t of that difference and whether |t| > 2."),
        "",
        ("| arm | runs | final val acc (%) | best val acc (%) | Δ final vs baseline (pp) | Welch t | \\|t\\| > 2 "
         "| final train loss | epoch time (s) | peak CUDA alloc (MiB) | peak host RSS (MiB) | autocast |"),
        "|---|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---|",
    ]
    for arm in arms:
        rs = done[arm]
        if not rs:
            status = by_arm[arm][0].status if by_arm[arm] else "not run"
            lines.append(f"| {arm} | 0 | {status} | | | | | | | | | |")
            continue
        rows = [result_row(r) for r in rs]
        best = [float(r.summary["best_val_acc"]) for r in rs]
        if arm == baseline:
            delta, t_text, sig = "baseline", "—", "—"
        elif not final[baseline]:
            delta, t_text, sig = "n/a (no baseline runs)", "n/a", "n/a"
        else:
            diff = 100 * (statistics.fmean(final[arm]) - statistics.fmean(final[baseline]))
            delta = f"{diff:+.2f}"
            t = welch_t(final[arm], final[baseline])
            t_text = "n/a" if t is None else f"{t:+.2f}"
            sig = "n/a" if t is None else ("yes" if abs(t) > 2 else "no")

        def col(key: str, digits: int = 1, rows: list[dict[str, Any]] = rows) -> str:
            return _mean_std(_finite([row[key] if row[key] != "" else None for row in rows]), digits=digits)

        autocast = ", ".join(sorted({row["amp_dtype"] for row in rows}))
        lines.append(f"| {arm} | {len(rs)} | {_mean_std(final[arm], 100)} | {_mean_std(best, 100)} | {delta} | "
                     f"{t_text} | {sig} | {col('final_train_loss', 3)} | {col('mean_epoch_time_s')} | "
                     f"{col('peak_cuda_alloc_mib', 0)} | {col('peak_host_rss_mib', 0)} | {autocast} |")
    not_done = [r for r in records if r.status != "done"]
    if not_done:
        lines += ["", "## Not run", ""]
        seen = set()
        for r in not_done:
            key = (r.arm, r.status, r.note)
            if key in seen:
                continue
            seen.add(key)
            seeds_of = [x.seed for x in not_done if (x.arm, x.status, x.note) == key]
            lines.append(f"- {r.arm} ({r.status}, seed(s) {', '.join(map(str, seeds_of))}): {r.note}")
    lines += [
        "",
        "## Notes",
        "",
        ("- Every figure comes from the runs' own summary.json (accuracies) and metrics.csv (train loss of the last "
         "epoch, mean epoch time, peak memory over epochs); per-run values are in results.csv."),
        ("- Welch's t with a handful of seeds is a rough indication, not a test with a controlled error rate; "
         "'n/a' where an arm or the baseline has fewer than 2 finished runs."),
        ("- Train loss is measured against the mixed and smoothed targets, so it is not comparable across arms that "
         "change Mixup/CutMix or label smoothing."),
        "",
    ]
    path.write_text("\n".join(lines))


def write_plots(study: Study, records: list[RunRecord], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arms = [arm for arm in study.arms if any(r.arm == arm and r.status == "done" for r in records)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        per_epoch: dict[int, list[float]] = {}
        for r in records:
            if r.arm == arm and r.status == "done":
                for row in r.rows:
                    if math.isfinite(row["val_acc"]):
                        per_epoch.setdefault(int(row["epoch"]), []).append(100 * row["val_acc"])
        epochs = sorted(per_epoch)
        mean = [statistics.fmean(per_epoch[e]) for e in epochs]
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=arm)
        if any(len(per_epoch[e]) > 1 for e in epochs):
            ax.fill_between(epochs, [min(per_epoch[e]) for e in epochs], [max(per_epoch[e]) for e in epochs],
                            color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel="val accuracy (%)", title=f"{study.name}: val accuracy, mean over seeds "
                                                             "(band: min..max)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if arms:
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(study.arms) + 2), 4.5))
    names = list(study.arms)
    for i, arm in enumerate(names):
        accs = [100 * float(r.summary["final_epoch_val_acc"]) for r in records if r.arm == arm and r.status == "done"]
        if not accs:
            ax.annotate("not run", (i, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                        fontsize=8, color="grey", xytext=(0, 4), textcoords="offset points")
            continue
        ax.scatter([i] * len(accs), accs, color="grey", s=14, zorder=2, label="one seed" if i == 0 else None)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ax.errorbar([i], [statistics.fmean(accs)], yerr=[std], fmt="o", color="C0", capsize=6, markersize=7,
                    zorder=3, label="mean ± std" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0)
    ax.set(ylabel="final val accuracy (%)", title=f"{study.name}: final-epoch val accuracy per arm")
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "final_acc.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI

_STUDY_HELP = "; ".join(f"{name}: {text}" for name, (_, text) in STUDIES.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog="Built-in studies — " + _STUDY_HELP + ". A custom study is a YAML file: arms: {name: {option: "
                      "value, ...}, ...}, the first arm being the baseline.")
@click.option("--study", default=None, help="A built-in study name or a YAML file of arms.")
@click.option("--seeds", type=int, default=1, help="Runs per arm; run k uses seed --seed + k.")
@_options
@click.pass_context
def main(click_ctx: click.Context, study: str | None, seeds: int, **options: Any) -> None:
    """Run every arm of an ablation study over several seeds (resumable) and report the differences.

    Every dali-train option sets the base config the arms change."""
    from click.core import ParameterSource

    overrides = options.pop("aug_overrides")
    given = {k for k in options if click_ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    options["augment"] = with_overrides(options["augment"], overrides)

    def work() -> tuple[Any, Path, list]:
        if not study:
            raise ConfigError(f"--study is required: one of {', '.join(STUDIES)}, or a YAML file of arms")
        if seeds < 1:
            raise ConfigError(f"--seeds={seeds} is invalid: expected an integer >= 1 (runs per arm)")
        if not options["output"]:
            raise ConfigError("--output DIR is required: the study directory (rerun with the same one to resume)")
        output = Path(options["output"])
        if output.exists() and not output.is_dir():
            raise ConfigError(f"--output {output} is a file; give a directory")
        base = TrainConfig.from_dict(options, source="options")
        spec = load_study(study, base)
        arm_configs(spec, base)  # every arm valid before the first run starts
        for k in sorted(given):
            setters = [arm for arm, changes in spec.arms.items() if k in changes]
            if setters:
                click.echo(f"note: --{k.replace('_', '-')} is set by arm(s) {', '.join(setters)} of this study; "
                           "they use their own value")
        check_existing(spec, base, seeds=seeds, output=output)
        output.mkdir(parents=True, exist_ok=True)
        records = run_study(spec, base, seeds=seeds, output=output)
        write_results(records, output / "results.csv")
        write_summary(spec, base, seeds, records, output / "summary.md")
        write_plots(spec, records, output)
        return spec, output, records

    spec, output, records = _run_guarded(work, second_interrupt="interrupted; finished runs are kept — rerun the "
                                         "same dali-ablate command to resume the study")
    failed = [r for r in records if r.status == "failed"]
    earlier = sum(r.note == "finished earlier" for r in records)
    click.echo(f"study {spec.name}: {sum(r.status == 'done' for r in records)} run(s) done ({earlier} finished "
               f"earlier), {sum(r.status == 'skipped' for r in records)} not run (skipped arms), {len(failed)} "
               f"failed — "
               f"{output / 'summary.md'}, {output / 'results.csv'}, {output / 'curves.png'}, "
               f"{output / 'final_acc.png'}")
    if failed:
        sys.exit(1)


for _param in main.params:  # the shared dali-train options, with the meaning they have here
    if _param.name == "output":
        _param.help = ("The study directory (required): <output>/<arm>/seed<seed>/ per run, results.csv, "
                       "summary.md, curves.png, final_acc.png. Rerun with the same one to resume.")
    elif _param.name == "seed":
        _param.help = "Base seed: run k of every arm uses seed + k."
