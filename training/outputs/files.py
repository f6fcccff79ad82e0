"""Run outputs: metrics.csv (atomic), curves.png, the console's epoch line, summary.json.

Every write here that can fail for want of disk (a full disk, a quota) is a one-line DaliTrainError naming the file,
like a failed checkpoint write, not an OSError traceback.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from dali_pipes import DaliTrainError, DataError

from ..atomic import to_json, write_text_atomic


METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_images", "images_per_s",
                 "data_time_s",
                 "epoch_time_s", "nonfinite_losses", "skipped_steps", "max_mem_allocated_mib",
                 "max_mem_reserved_mib", "gpu_util_mean_pct", "gpu_mem_used_max_mib", "gpu_mem_process_max_mib",
                 "host_rss_peak_mib")
# Top-5 accuracy: only for data of more than 5 classes (with 5 or fewer it is 100% by definition), after the
# columns every run has; for training, whether the dominant label of the (mixed) target is among the 5 largest logits.
TOP5_FIELDS = ("train_acc5", "val_acc5")
EMA_FIELDS = ("ema_val_loss", "ema_val_acc")  # metrics.csv's last columns in a run with --ema-decay
EMA_TOP5_FIELDS = ("ema_val_acc5",)  # both


def metric_fields(*, top5: bool, ema: bool) -> tuple[str, ...]:
    """metrics.csv's columns for a run with more than 5 classes (`top5`) and with an EMA of its weights (`ema`)."""
    return (METRIC_FIELDS + (TOP5_FIELDS if top5 else ()) + (EMA_FIELDS if ema else ())
            + (EMA_TOP5_FIELDS if top5 and ema else ()))


def write_error(path: Path, e: OSError) -> DaliTrainError:
    """A one-line error for a failed write of `path`."""
    return DaliTrainError(f"{path}: cannot write it ({e.strerror or e}); free space (or fix the folder) and "
                          "resume the run")


def write_rows(path: Path, rows: list[dict], fields: tuple[str, ...] = METRIC_FIELDS) -> None:
    """A CSV of `rows` (the `fields` columns), replaced atomically: readers see the old file or the new one.
    A failed write leaves the old file and no temp file behind, and is a one-line DaliTrainError."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def write_text(path: Path, text: str) -> None:
    """`path` replaced atomically by `text`; a failed write is a one-line DaliTrainError, the old file intact."""
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise write_error(path, e) from None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_text(run_dir / "summary.json", to_json(summary) + "\n")


def _cell(text: str | None) -> int | float:
    """A metrics.csv cell as written: an integer column stays an int (a resume rewrites the earlier rows, which
    must read as the uninterrupted run wrote them), an empty cell (a figure this device lacks) is nan."""
    if text in ("", None):
        return math.nan
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_metrics(path: Path, key: str = "epoch") -> list[dict]:
    """The rows of a metrics CSV written by write_rows ([] when there is none), one per `key` (its first column); a
    damaged one (not text, no `key` column, a cell that is not a number, a row of another width) is a one-line
    DataError naming the file."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows, reader = [], csv.DictReader(f)
            if reader.fieldnames is not None and key not in reader.fieldnames:
                raise ValueError(f"no {key} column")
            for row in reader:
                if None in row or None in row.values():  # more cells than the header names, or fewer
                    raise ValueError(f"row {len(rows) + 1} does not fit the header")
                rows.append({k: _cell(v) for k, v in row.items()})
            return rows
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise DataError(f"{path}: unreadable ({reason})") from None


def curves_figure(rows: list[dict], title: str = ""):
    """The run's curves: loss, accuracy (%, top-5 dashed where measured) and the epoch's peak LR against whole epochs, titled with `title`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train (mixed targets)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], label="train (dominant label)")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], label="val")
    if all("val_acc5" in r for r in rows):  # more than 5 classes
        ax_acc.plot(epochs, [100 * r["val_acc5"] for r in rows], linestyle="--", label="val top-5")
    if all("ema_val_acc" in r for r in rows):
        ax_loss.plot(epochs, [r["ema_val_loss"] for r in rows], label="val (EMA weights)")
        ax_acc.plot(epochs, [100 * r["ema_val_acc"] for r in rows], label="val (EMA weights)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_lr.plot(epochs, [r["lr"] for r in rows], marker="o", label="peak LR of the epoch")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 ticks
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """:func:`curves_figure` written to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(rows, title)
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        plt.close(fig)


def epoch_line(cfg: TrainConfig, row: dict) -> str:
    parts = [f"epoch {int(row['epoch'])}/{cfg.epochs}", f"lr {row['lr']:.4f}",
             f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% (dominant label)",
             f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%"
             + (f" top-5 {100 * row['val_acc5']:.2f}%" if "val_acc5" in row else ""),
             *([f"EMA val loss {row['ema_val_loss']:.4f} acc {100 * row['ema_val_acc']:.2f}%"]
               if "ema_val_acc" in row else []),
             f"{row['images_per_s']:,.0f} img/s, data wait {row['data_time_s']:.1f}s, epoch {row['epoch_time_s']:.1f}s"]
    if "max_mem_allocated_mib" in row:
        parts.append(f"cuda peak alloc {row['max_mem_allocated_mib']:.0f} MiB reserved "
                     f"{row['max_mem_reserved_mib']:.0f} MiB")
    if "gpu_util_mean_pct" in row:
        parts.append(f"gpu {row['gpu_util_mean_pct']:.0f}%")
    if "gpu_mem_used_max_mib" in row:  # the whole device, every process
        parts.append(f"device used {row['gpu_mem_used_max_mib']:.0f} MiB")
    if "gpu_mem_process_max_mib" in row:  # this process: CUDA context, torch and DALI
        parts.append(f"process {row['gpu_mem_process_max_mib']:.0f} MiB")
    parts.append(f"host rss {row['host_rss_peak_mib']:.0f} MiB")
    if row["nonfinite_losses"] or row["skipped_steps"]:
        parts.append(f"non-finite losses {row['nonfinite_losses']}, skipped steps {row['skipped_steps']}")
    return " | ".join(parts)
