"""dali-ablate's reports: results.csv (one row per run), summary.md (mean ± std per arm, Welch's t against the
baseline), curves.png and final_acc.png — every figure read from the runs' own summary.json and metrics.csv."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..outputs import write_rows
from .runner import RunRecord
from .studies import _D, Study

RESULT_FIELDS = ("arm", "seed", "status", "final_val_acc", "best_val_acc", "best_epoch", "epochs_run",
                 "final_train_loss", "mean_epoch_time_s", "peak_cuda_alloc_mib", "peak_host_rss_mib", "amp_dtype",
                 "device", "run_dir", "note")


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
    write_rows(path, [result_row(r) for r in records], RESULT_FIELDS)


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
