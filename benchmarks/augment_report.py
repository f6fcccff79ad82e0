"""How the augmentation benchmark's report is told: the header, the table, the DALI / torchvision ratios (against
the tuned plain pipeline and against the deterministic reference), the spread warnings, and the plot (linear axis
from zero: a bar's length is its throughput)."""

from __future__ import annotations


from training.harness import machine_lines, table

__all__ = ["format_header", "format_table", "plot_figure", "ratio_lines"]


def format_header(report: dict) -> str:
    c = report["config"]
    batches = ", ".join(map(str, c["batch_sizes"]))
    dali_batch = "" if c.get("dali_batch_size") is None else f", DALI graph batch {c['dali_batch_size']}"
    lines = ["augment throughput benchmark", *machine_lines(report["machine"]),
             (f"  config      {_dataset_line(c)} train split, {c['num_samples']} samples, training batch "
              f"{batches}{dali_batch}, {c['repeats']} repeat(s) x {c['epochs_per_repeat']} epoch(s) after 1 "
              f"warm-up epoch, device {c['device']}"),
             f"  threads     {_threads_line(c)}"]
    if c.get("tuned_workers"):
        lines.append(f"  tuned tv    plain torchvision v2 in a DataLoader, 1 torch thread per worker, the fastest of "
                     f"{', '.join(map(str, c['tuned_workers']))} workers (one timed epoch each, per preset and batch)")
    return "\n".join(lines)


def _threads_line(c: dict) -> str:
    """The threads each DALI row and peer ran on, and by which rule."""
    rule = ("dali_pipes.loader.default_num_threads" if c["dali_threads"] == "default_num_threads"
            else f"--dali-threads {c['dali_threads']}")
    used = ", ".join(f"{row} {n}" for row, n in (c.get("threads") or {}).items())
    return f"{used or 'no DALI rows'} ({rule}; torch-batched peers: torch.set_num_threads as their device's DALI row)"


def _dataset_line(c: dict) -> str:
    if c.get("dataset") not in ("folder", "shards"):
        return "synthetic"
    w, h = c["image_shape"]
    packed = f" packed in {c['shards']} train tar shards" if c["dataset"] == "shards" else ""
    return f"{c['dataset']} ({w}x{h} JPEGs{packed} -> {c['image_size']} px)"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(report: dict) -> str:
    sizes = report["config"]["batch_sizes"]
    by_batch = len(sizes) > 1
    head = ["preset", "batch", "row", "median img/s", "min..max", "spread", "vs reference", "vs tuned tv"]
    if by_batch:
        head.append(f"vs batch {max(sizes)}")
    opens = any("files_opened_per_epoch" in r for r in report["results"])
    if opens:
        head.append("files opened/epoch")
    body = []
    for r in report["results"]:
        if r["status"] != "ok":
            cells = [r["preset"], str(r["batch_size"]), r["row"], "failed", "-", "-", "-", "-"]
            cells += ["-"] if by_batch else []
        else:
            warn = "!" if r.get("spread_warning") else ""
            cells = [r["preset"], str(r["batch_size"]), r["row"], _num(r["median_images_per_s"]),
                     f"{_num(r['min'])}..{_num(r['max'])}", _x(r.get("spread")) + warn,
                     _x(r.get("ratio_vs_reference")), _x(r.get("ratio_vs_tuned_torchvision"))]
            if by_batch:
                cells.append(_x(r["ratio_vs_largest_batch"]))
        if opens:
            n = r.get("files_opened_per_epoch")
            cells.append("-" if n is None else f"{n:,.0f}")
        body.append(cells)
    lines = table(head, body, align="<><>>>>>>>", group=1)
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"failed {r['preset']} batch {r['batch_size']} {r['row']}: {r['error']}")
    for r in report["results"]:
        if r.get("tuning"):
            tried = ", ".join(f"w={t['workers']} {_num(t['images_per_s'])}" for t in r["tuning"])
            lines.append(f"{r['row']} {r['preset']} batch {r['batch_size']}: picked {r['setting']} (tuning epoch "
                         f"img/s: {tried})")
    lines += ratio_lines(report)
    ratios = [q for q in report.get("batch_ratios", []) if q["ratio"] is not None]
    if ratios:
        q0 = ratios[0]
        lines.append(f"images/s at batch {q0['small_batch']} / at batch {q0['large_batch']}: "
                     + ", ".join(f"{q['preset']} {q['row']} {q['ratio']:.2f}x" for q in ratios))
    lines += report.get("warnings", [])
    seen: set[tuple[str, str]] = set()
    for s in report["skipped"]:
        if (s["row"], s["reason"]) not in seen:
            seen.add((s["row"], s["reason"]))
            lines.append(f"skipped {s['row']}: {s['reason']}")
    if not report.get("complete", True):
        lines.append("incomplete: the run stopped before every preset was measured")
    return "\n".join(lines)


def ratio_lines(report: dict) -> list[str]:
    """One line per DALI row: its images/s over the tuned plain torchvision pipeline's, beside its ratio over the
    best deterministic reference row (the ratio this benchmark reported before the tuned row existed)."""
    lines = []
    for q in report.get("torchvision_ratios", []):
        tuned = (f"{_x(q['vs_tuned'])} the tuned torchvision pipeline ({q['tuned_setting']})"
                 if q["vs_tuned"] is not None else "no tuned torchvision row")
        reference = (f"{_x(q['vs_reference'])} the reference ({q['reference_row']})" if q["vs_reference"] is not None
                     else "no reference row")
        lines.append(f"{q['preset']} batch {q['batch_size']} {q['row']}: {tuned}; {reference}")
    return lines


def plot_figure(report: dict):
    """Grouped bars: x = preset, one bar per row (median images/s, min..max whiskers), on a linear axis from zero,
    so that bar lengths compare as throughputs do. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["results"] if r["median_images_per_s"]]
    by_batch = len(report["config"]["batch_sizes"]) > 1

    def label_of(r: dict) -> str:
        return f"{r['row']} b{r['batch_size']}" if by_batch else r["row"]

    presets = list(dict.fromkeys(r["preset"] for r in measured))
    labels = list(dict.fromkeys(label_of(r) for r in measured))
    by_key = {(r["preset"], label_of(r)): r for r in measured}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(presets) * max(1, len(labels)) / 3 + 2), 4.8))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for i, preset in enumerate(presets):
            r = by_key.get((preset, label))
            if r is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(r["median_images_per_s"])
            lo.append(r["median_images_per_s"] - (r["min"] or r["median_images_per_s"]))
            hi.append((r["max"] or r["median_images_per_s"]) - r["median_images_per_s"])
        bars = ax.bar(xs, ys, width, label=label, yerr=[lo, hi], capsize=2)
        # the median on each bar: on a linear axis the slow rows' bars are too short to read
        ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90, padding=2)
    ax.set_yscale("linear")
    top = max((r["max"] or r["median_images_per_s"] for r in measured), default=1.0)
    ax.set_ylim(0, 1.15 * top)  # room for the labels above the whiskers
    ax.set_xticks(range(len(presets)))
    ax.set_xticklabels(presets, rotation=20, ha="right")
    ax.set_ylabel("images / s (median, min..max)")
    m, c = report["machine"], report["config"]
    ax.set_title(f"augmentation throughput, training batch {', '.join(map(str, c['batch_sizes']))}, "
                 f"{m['cores_available']} cores"
                 + (f", {m['gpus'][0]}" if m.get("gpus") else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig

