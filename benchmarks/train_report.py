"""How the training benchmark's report is told: the header, the table (speed and memory ratios, loader overheads of
the DALI-fed and torchvision-fed rows), the spread warnings, and the plot (linear axis from zero)."""

from __future__ import annotations


from training.harness import machine_lines, table

__all__ = ["format_header", "format_table", "plot_figure"]


def format_header(report: dict) -> str:
    c = report["config"]
    models = "; ".join(f"{d}: {', '.join(ms)}" for d, ms in c["models"].items())
    lines = ["training throughput benchmark", *machine_lines(report["machine"]),
             (f"  config      {models}; batch {c['batch_size']}, {c['repeats']} repeat(s) x {c['steps']} steps "
              f"after {c['warmup_steps']} warm-up steps; DALI loader: synthetic {c['num_samples']} samples, augment "
              f"{c['augment']}")]
    return "\n".join(lines)


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else f"{x:{fmt}}"


def _mem_cell(r: dict) -> str:
    m = r["memory"]
    if r["device"] == "cuda":
        return (f"{_num(m['cuda_peak_allocated_mib'])} / {_num(m['cuda_peak_reserved_mib'])} / "
                f"{_num(m['nvml_process_max_mib'])}")
    return _num(m["host_rss_peak_mib"])


def format_table(report: dict) -> str:
    head = ("device", "model", "row", "median img/s", "min..max", "ms/step", "peak mem MiB", "saved act MiB",
            "vs", "speed", "mem")
    body = []
    for r in report["results"]:
        if r["status"] != "ok":
            body.append((r["device"], r["model"], r["row"], "failed", "-", "-", "-", "-", r["vs"] or "", "", ""))
            continue
        body.append((r["device"], r["model"], r["row"], _num(r["median_images_per_s"]),
                     f"{_num(r['min'])}..{_num(r['max'])}", _num(r["median_step_ms"], ",.1f"), _mem_cell(r),
                     _num(r["memory"]["saved_for_backward_mib"], ",.1f"), r["vs"] or "",
                     "" if r["speedup_vs"] is None else f"{r['speedup_vs']:.2f}x",
                     "" if r["memory_ratio_vs"] is None else f"{r['memory_ratio_vs']:.2f}x"))
    lines = table(head, body, align="<<<>>>>><>>", group=2)
    if any(r["device"] == "cuda" and r["status"] == "ok" for r in report["results"]):
        lines.append("peak mem: cuda = own peak allocated / process peak reserved / process NVML peak (DALI and the "
                     "CUDA context included); cpu = host RSS peak (process)")
    elif body:
        lines.append("peak mem: host RSS peak of the process; mem ratio: bytes saved for backward")
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"failed {r['device']} {r['model']} {r['row']}: {r['error']}")
    summary = _summary_lines(report)
    if summary:
        lines += [""] + summary
    lines += report.get("warnings", [])
    groups: dict[tuple[str, str, str], list[str]] = {}
    for s in report["skipped"]:
        groups.setdefault((s["device"], s["model"], s["reason"]), []).append(s["row"])
    for (dev, model, reason), names in groups.items():
        lines.append(f"skipped {dev} {model} {', '.join(names)}: {reason}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    if not report.get("complete", True):
        lines.append("incomplete: the run stopped before every row was measured")
    return "\n".join(lines)


def _summary_lines(report: dict) -> list[str]:
    out = []
    for q in report["ratios"]:
        if q["kind"] == "amp_vs_fp32" and "+cl" in q["row"]:
            mem = "" if q["memory_ratio"] is None else f", memory {q['memory_ratio']:.2f}x ({q['memory_basis']})"
            out.append(f"{q['device']} {q['model']}: AMP {q['row']} vs {q['vs']}: "
                       f"{_num(q['speedup'], '.2f')}x images/s{mem}")
        elif q["kind"] == "loader":
            how = (f"{q['dali_threads']} DALI threads" if q.get("feed", "dali") == "dali"
                   else f"plain torchvision v2, {q['torchvision_workers']} DataLoader workers of 1 torch thread")
            out.append(f"{q['device']} {q['model']}: loader overhead {_num(q['loader_overhead_pct'], '.0f')}% "
                       f"({q['row']}, {how}, vs the same step on a synthetic batch on the device)")
    return out


def plot_figure(report: dict):
    """Horizontal bars: one per row (median images/s, min..max whiskers), grouped by device and model, on a linear
    axis from zero. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in report["results"] if r["status"] == "ok"]
    labels = [f"{r['device']} {r['model']} {r['row']}" for r in res]
    meds = [r["median_images_per_s"] or 0.0 for r in res]
    lo = [max(0.0, (r["median_images_per_s"] or 0) - (r["min"] or 0)) for r in res]
    hi = [max(0.0, (r["max"] or 0) - (r["median_images_per_s"] or 0)) for r in res]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(res)))
    colors = [{"dali": "tab:orange", "torchvision": "tab:green"}.get(r["feed"], "tab:blue") for r in res]
    bars = ax.barh(range(len(res)), meds, xerr=[lo, hi], color=colors, capsize=2)
    ax.bar_label(bars, labels=[f"{m:,.0f}" for m in meds], fontsize=7, padding=3)
    ax.set_yticks(range(len(res)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("linear")
    ax.set_xlim(0, 1.12 * max([m + h for m, h in zip(meds, hi)], default=1.0))  # room for the labels
    ax.set_xlabel("images / s (median, min..max); orange: DALI-fed, green: torchvision-fed")
    m, c = report["machine"], report["config"]
    ax.set_title(f"training step throughput, batch {c['batch_size']}, {m['cores_available']} cores"
                 + (f", {m['gpus'][0]}" if m.get("gpus") else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig

