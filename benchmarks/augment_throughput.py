"""Augmentation throughput: torchvision DataLoader workers vs DALI on CPU (and GPU) over the synthetic CIFAR split.

    python benchmarks/augment_throughput.py --device cpu --presets standard --json bench.json

How it measures (the numbers decide which backend users pick, so every row is measured the same way):

- every row builds its loader once; one full epoch per row is run first and not timed (DALI pipeline build,
  the first worker start, caches);
- a repeat times ``--epochs-per-repeat`` full epochs (``set_epoch`` each epoch, every batch consumed; CUDA rows
  synchronize before the clock is read); images/s = images delivered / seconds;
- rows of a preset are measured interleaved (each repeat runs every row once, starting at a rotating row), so
  machine noise hits all rows alike; median and min..max are over repeats;
- ratio = row median / best torchvision median of the same preset.

Rows are timed exactly as a training loop over ``create_loader`` would see them: whatever the backend pays per
epoch (worker start-up, if its workers do not persist) is part of the timed epochs.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click  # noqa: E402
import torch  # noqa: E402

from benchmarks._outputs import output_options, write_outputs  # noqa: E402
from dali_pipes import DaliTrainError, resolve_augment  # noqa: E402
from dali_pipes.loader import cpu_count, create_loader  # noqa: E402
from training.monitor import cpu_model, package_version  # noqa: E402

DEFAULT_PRESETS = ("none", "weak", "standard", "strong", "weak+autoaugment", "weak+randaugment",
                   "weak+trivialaugment")
NO_CUDA = "no CUDA device visible"


# --------------------------------------------------------------------------------------------------- machine info
def _gpu_info() -> dict[str, Any]:
    """GPU name(s) through torch, driver through pynvml (nvidia-ml-py) when importable; nothing when no CUDA."""
    info: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available()), "gpus": [], "driver": None,
                            "cuda_runtime": torch.version.cuda}
    if not info["cuda_available"]:
        return info
    try:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver should not stop the header
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - pynvml absent or NVML unusable: skip quietly
        pass
    return info


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores_available": cpu_count(),
        "cores_total": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **_gpu_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "dali": package_version("nvidia.dali"),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------------ rows
def plan_rows(device: str, workers: Sequence[int], dali_threads: int, cuda: bool) -> tuple[list[dict], list[dict]]:
    """The rows of every preset, and the skipped rows with their reason.

    ``cpu``: torchvision rows and dali-cpu, all delivering CPU tensors. ``cuda``: torchvision rows delivering to the
    GPU (pinned memory) and dali-gpu. ``all``: the cpu rows plus dali-gpu (when CUDA is visible).
    """
    rows: list[dict] = []
    skipped: list[dict] = []
    tv_device = "cuda" if device == "cuda" else "cpu"

    def add(row: dict) -> None:
        if row["device"] == "cuda" and not cuda:
            skipped.append({"row": row["row"], "reason": NO_CUDA})
        else:
            rows.append(row)

    for k in workers:
        add({"row": f"torchvision w={k}", "backend": "torchvision", "device": tv_device, "workers_or_threads": k})
    if device in ("cpu", "all"):
        add({"row": "dali-cpu", "backend": "dali", "device": "cpu", "workers_or_threads": dali_threads})
    if device in ("cuda", "all"):
        add({"row": "dali-gpu", "backend": "dali", "device": "cuda", "workers_or_threads": dali_threads})
    return rows, skipped


def _build(row: dict, preset: str, batch_size: int, num_samples: int):
    options = ({"num_workers": row["workers_or_threads"]} if row["backend"] == "torchvision"
               else {"num_threads": row["workers_or_threads"]})
    return create_loader(dataset="synthetic", split="train", batch_size=batch_size, backend=row["backend"],
                         device=row["device"], augment=preset, num_samples=num_samples, **options)


def _run_epochs(loader, epochs: Sequence[int], cuda: bool) -> tuple[int, float]:
    """Consume whole epochs; returns (images, seconds)."""
    if cuda:
        torch.cuda.synchronize()
    images = 0
    start = time.perf_counter()
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            images += int(batch[0].shape[0])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    expected = loader.shard_size * len(epochs)
    if images != expected:  # a throughput over a short or long epoch would mislead: stop instead
        raise RuntimeError(f"loader delivered {images} images over {len(epochs)} epoch(s), expected {expected}")
    return images, seconds


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def measure(presets: Sequence[str] = DEFAULT_PRESETS, *, device: str = "all", workers: Sequence[int] | None = None,
            batch_size: int = 256, repeats: int = 3, epochs_per_repeat: int = 1, num_samples: int = 10_000,
            dali_threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report {"machine", "config", "results", "skipped"}.

    Raises :class:`dali_pipes.DaliTrainError` for invalid presets or sizes (before anything is measured).
    """
    ncores = cpu_count()
    workers = list(range(ncores + 1)) if workers is None else [int(w) for w in workers]
    dali_threads = ncores if dali_threads is None else int(dali_threads)
    if device not in ("cpu", "cuda", "all"):
        raise ValueError(f"device={device!r}: expected cpu, cuda or all")
    if repeats < 1 or epochs_per_repeat < 1:
        raise ValueError("repeats and epochs_per_repeat must be >= 1")
    for preset in presets:
        resolve_augment(preset)  # ConfigError (a DaliTrainError) now, not after minutes of measuring
    say = progress or (lambda _msg: None)
    cuda = bool(torch.cuda.is_available())
    rows, skipped_rows = plan_rows(device, workers, dali_threads, cuda)
    config = {"presets": list(presets), "device": device, "workers": workers, "dali_threads": dali_threads,
              "batch_size": batch_size, "repeats": repeats, "epochs_per_repeat": epochs_per_repeat,
              "num_samples": num_samples, "dataset": "synthetic", "split": "train", "warmup_epochs": 1}
    results: list[dict] = []
    skipped = [{**s, "preset": p} for p in presets for s in skipped_rows]

    for preset in presets:
        loaders = []
        for row in rows:  # build + warm-up (epoch 0), untimed
            say(f"[{preset}] {row['row']}: build + warm-up epoch")
            loader = _build(row, preset, batch_size, num_samples)
            _run_epochs(loader, [0], row["device"] == "cuda")
            loaders.append(loader)
        runs: list[list[float]] = [[] for _ in rows]
        for r in range(repeats):
            epochs = [1 + r * epochs_per_repeat + j for j in range(epochs_per_repeat)]
            for k in range(len(rows)):
                i = (r + k) % len(rows)  # rotate the starting row so no row always runs first or last
                images, seconds = _run_epochs(loaders[i], epochs, rows[i]["device"] == "cuda")
                runs[i].append(images / seconds if seconds > 0 else float("inf"))
                say(f"[{preset}] repeat {r + 1}/{repeats} {rows[i]['row']}: {runs[i][-1]:,.0f} img/s")
        del loaders  # free this preset's DALI pipelines and worker processes before the next preset runs
        gc.collect()
        preset_results = []
        for row, rs in zip(rows, runs):
            preset_results.append({"preset": preset, "row": row["row"], "backend": row["backend"],
                                   "device": row["device"], "workers_or_threads": row["workers_or_threads"],
                                   "median_images_per_s": _finite(statistics.median(rs)),
                                   "min": _finite(min(rs)), "max": _finite(max(rs)),
                                   "runs": [_finite(x) for x in rs]})
        tv = [r["median_images_per_s"] for r in preset_results
              if r["backend"] == "torchvision" and r["median_images_per_s"]]
        best = max(tv) if tv else None
        for res in preset_results:
            med = res["median_images_per_s"]
            res["ratio_vs_best_torchvision"] = _finite(med / best) if best and med is not None else None
        results += preset_results
    return {"machine": machine_info(), "config": config, "results": results, "skipped": skipped}


# ------------------------------------------------------------------------------------------------------ output
def format_header(report: dict) -> str:
    m, c = report["machine"], report["config"]
    gpu = ", ".join(m["gpus"]) if m.get("gpus") else "none visible"
    if m.get("driver"):
        gpu += f" (driver {m['driver']})"
    lines = [
        "augment throughput benchmark",
        f"  date        {m['date']}",
        f"  cpu         {m['cpu_model']}",
        f"  cores       {m['cores_available']} available of {m['cores_total']} (torch threads {m['torch_threads']})",
        f"  gpu         {gpu}",
        f"  versions    python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"DALI {m['dali']}",
        f"  config      synthetic train split, {c['num_samples']} samples, batch {c['batch_size']}, "
        f"{c['repeats']} repeat(s) x {c['epochs_per_repeat']} epoch(s) after 1 warm-up epoch, "
        f"dali threads {c['dali_threads']}, device {c['device']}",
    ]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def format_table(report: dict) -> str:
    head = ("preset", "row", "median img/s", "min..max", "ratio vs best tv")
    body = []
    for r in report["results"]:
        ratio = r["ratio_vs_best_torchvision"]
        body.append((r["preset"], r["row"], _num(r["median_images_per_s"]), f"{_num(r['min'])}..{_num(r['max'])}",
                     "-" if ratio is None else f"{ratio:.2f}x"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    align = ["<", "<", ">", ">", ">"]

    def fmt(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])]
    previous = None
    for cells in body:
        if previous is not None and cells[0] != previous:
            lines.append("")
        lines.append(fmt(cells))
        previous = cells[0]
    if not body:
        lines.append("(no rows measured)")
    seen: set[tuple[str, str]] = set()
    for s in report["skipped"]:
        if (s["row"], s["reason"]) not in seen:
            seen.add((s["row"], s["reason"]))
            lines.append(f"skipped {s['row']}: {s['reason']}")
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False)  # ValueError rather than invalid JSON


def plot(report: dict, path: str | Path) -> None:
    """Grouped bars: x = preset, one bar per row (median, min..max whiskers), log-scale images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in report["results"]))
    labels = list(dict.fromkeys(r["row"] for r in report["results"]))
    by_key = {(r["preset"], r["row"]): r for r in report["results"]}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(presets) * max(1, len(labels)) / 3 + 2), 4.8))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for i, preset in enumerate(presets):
            r = by_key.get((preset, label))
            if r is None or not r["median_images_per_s"]:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(r["median_images_per_s"])
            lo.append(r["median_images_per_s"] - (r["min"] or r["median_images_per_s"]))
            hi.append((r["max"] or r["median_images_per_s"]) - r["median_images_per_s"])
        ax.bar(xs, ys, width, label=label, yerr=[lo, hi], capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(presets)))
    ax.set_xticklabels(presets, rotation=20, ha="right")
    ax.set_ylabel("images / s (median, min..max)")
    m, c = report["machine"], report["config"]
    ax.set_title(f"augmentation throughput, batch {c['batch_size']}, {m['cores_available']} cores"
                 + (f", {m['gpus'][0]}" if m.get("gpus") else ""), fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ CLI
def _parse_presets(ctx, param, value: str) -> list[str]:
    presets = [p.strip() for p in value.split(",") if p.strip()]
    if not presets:
        raise click.BadParameter("give at least one preset")
    for p in presets:
        try:
            resolve_augment(p)
        except DaliTrainError as e:
            raise click.BadParameter(str(e)) from None
    return list(dict.fromkeys(presets))


def _parse_workers(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        workers = [int(w) for w in value.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2") from None
    if not workers or any(w < 0 for w in workers):
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(workers))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda", "all"]), default="all", show_default=True,
              help="Which rows: cpu (torchvision + dali-cpu), cuda (torchvision to GPU + dali-gpu), all.")
@click.option("--presets", default=",".join(DEFAULT_PRESETS), show_default=True, callback=_parse_presets,
              help="Comma list of augmentation presets ('<preset>' or '<preset>+<policy>').")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repeats per row (median and min..max over these).")
@click.option("--epochs-per-repeat", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--workers", default=None, callback=_parse_workers,
              help="Comma list of torchvision DataLoader worker counts [default: 0..cores available].")
@click.option("--num-samples", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Size of the synthetic training split (one epoch).")
@output_options
def main(device: str, presets: list[str], batch_size: int, repeats: int, epochs_per_repeat: int,
         workers: list[int] | None, num_samples: int, json_path: str | None, plot_path: str | None,
         quiet: bool) -> None:
    """Measure augmentation throughput (images/s) of torchvision workers vs DALI CPU/GPU per preset."""
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    try:
        report = measure(presets, device=device, workers=workers, batch_size=batch_size, repeats=repeats,
                         epochs_per_repeat=epochs_per_repeat, num_samples=num_samples, progress=progress)
    except DaliTrainError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(format_header(report))
    click.echo("")
    click.echo(format_table(report))
    if json_path or plot_path:
        click.echo("")
    write_outputs(report, json_path=json_path, plot_path=plot_path, to_json=to_json, plot=plot)


if __name__ == "__main__":
    main()
