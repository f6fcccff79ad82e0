"""An epoch's figures: this rank's parts added up (an interrupted epoch resumes with what it had trained), then
summed over data-parallel ranks (every training image and validation sample counted once)."""

from __future__ import annotations

import math

import torch

from . import distributed
from .distributed import World


def epoch_totals(before: dict, stats: dict, resources: dict[str, float]) -> dict:
    """This rank's figures for the epoch so far: `before` (its part trained before an interruption, or {} at the
    epoch's start) plus `stats` of the part just trained. Sums, not means, so parts add up to the straight epoch."""
    n = stats["images"]
    out = dict(before)
    out["images"] = before.get("images", 0) + n
    out["loss_sum"] = before.get("loss_sum", 0.0) + stats["loss_sum"]
    out["correct"] = before.get("correct", 0) + stats["correct"]
    out["steps"] = before.get("steps", before.get("completed", 0)) + stats["steps"]  # "completed": older checkpoints
    out.pop("completed", None)
    for key in ("nonfinite_losses", "skipped_steps", "data_time_s", "epoch_time_s"):
        out[key] = before.get(key, 0) + stats[key]
    for key, value in resources.items():
        if key.endswith("_mean_pct"):  # a mean over time: weighted by each part's duration
            t0, t1 = before.get("epoch_time_s", 0.0), stats["epoch_time_s"]
            out[key] = (before.get(key, 0.0) * t0 + value * t1) / max(t0 + t1, 1e-9) if key in before else value
        else:  # peaks
            out[key] = max(before.get(key, value), value)
    return out


def reduced(totals: dict, val: dict, world: World, device: torch.device) -> dict:
    """Epoch figures summed over ranks: every training image and every validation sample counted once."""
    n, vn = totals["images"], val["val_images"]
    keys = ("train_loss", "train_acc", "nonfinite_losses", "skipped_steps", "val_loss", "val_acc")
    sums = distributed.all_sum([totals["loss_sum"], totals["correct"], totals["nonfinite_losses"],
                                totals["skipped_steps"], val["val_loss"] * vn, val["val_acc"] * vn, n, vn,
                                totals["steps"]], world, device)
    total_n, total_vn = max(sums[6], 1), max(sums[7], 1)
    out = dict(zip(keys, (sums[0] / total_n, sums[1] / total_n, int(sums[2]), int(sums[3]), sums[4] / total_vn,
                          sums[5] / total_vn)))
    out["train_images"] = int(sums[6])
    out["images_per_s"] = sums[6] / totals["epoch_time_s"] if totals["epoch_time_s"] > 0 else math.nan
    out["all_steps_nonfinite"] = sums[2] >= sums[8] > 0
    return out
