"""An epoch's figures: this rank's parts added up (an interrupted epoch resumes with what it had trained), then
summed over data-parallel ranks (every training image and validation sample counted once)."""

from __future__ import annotations

import math

import torch

from .. import distributed
from ..distributed import World


def epoch_totals(before: dict, stats: dict, resources: dict[str, float]) -> dict:
    """This rank's figures for the epoch so far: `before` (its part trained before an interruption, or {} at the
    epoch's start) plus `stats` of the part just trained. Sums, not means, so parts add up to the straight epoch."""
    n = stats["images"]
    out = dict(before)
    out["images"] = before.get("images", 0) + n
    out["loss_sum"] = before.get("loss_sum", 0.0) + stats["loss_sum"]
    out["correct"] = before.get("correct", 0) + stats["correct"]
    out["correct5"] = before.get("correct5", 0) + stats["correct5"]
    out["steps"] = before.get("steps", 0) + stats["steps"]
    for key in ("nonfinite_losses", "nonfinite_images", "skipped_steps", "data_time_s", "epoch_time_s"):
        out[key] = before.get(key, 0) + stats[key]
    for key, value in resources.items():
        if key.endswith("_mean_pct"):  # a mean over time: weighted by each part's duration
            t0, t1 = before.get("epoch_time_s", 0.0), stats["epoch_time_s"]
            out[key] = (before.get(key, 0.0) * t0 + value * t1) / max(t0 + t1, 1e-9) if key in before else value
        else:  # peaks
            out[key] = max(before.get(key, value), value)
    return out


def reduced(totals: dict, val: dict, world: World, device: torch.device) -> dict:
    """Epoch figures summed over ranks: every training image and every validation sample counted once. The train
    loss is the mean over the samples of steps whose loss was finite (nan when none was); ``nonfinite_losses``
    says how many steps it leaves out, and ``train_steps`` (for :func:`divergence`, not a metrics column) of how
    many. Top-5 accuracy (``train_acc5``, ``val_acc5``) where the validation measured it (more than 5 classes)."""
    n, vn = totals["images"], val["val_images"]
    sums = distributed.all_sum([totals["loss_sum"], totals["correct"], totals["nonfinite_losses"],
                                totals["skipped_steps"], val["val_loss"] * vn, val["val_acc"] * vn, n, vn,
                                totals["steps"], totals.get("nonfinite_images", 0), totals["correct5"],
                                val.get("val_acc5", 0.0) * vn], world, device)
    total_n, total_vn, finite_n = max(sums[6], 1), max(sums[7], 1), sums[6] - sums[9]
    top5 = {"train_acc5": sums[10] / total_n, "val_acc5": sums[11] / total_vn} if "val_acc5" in val else {}
    return {"train_loss": sums[0] / finite_n if finite_n > 0 else math.nan, "train_acc": sums[1] / total_n,
            "nonfinite_losses": int(sums[2]), "skipped_steps": int(sums[3]), "val_loss": sums[4] / total_vn,
            "val_acc": sums[5] / total_vn, **top5, "train_images": int(sums[6]),
            "images_per_s": sums[6] / totals["epoch_time_s"] if totals["epoch_time_s"] > 0 else math.nan,
            "train_steps": int(sums[8])}


# The cross-entropy of a uniform guess is ln(classes), and a model that learns stays near or below it; an unstable
# first epoch of a large model on few classes can average ~20x it (tv_resnet18, 2 classes, lr 0.1: 13.8 against
# 0.69) and still recover. An epoch averaging 100x predicts wrong classes with logits in the hundreds: its weights
# blew up.
DIVERGED_LOSS_FACTOR = 100.0


def divergence(figures: dict, num_classes: int) -> str | None:
    """Why an epoch's figures (from :func:`reduced`) show a diverged run, in words; None when they do not.
    Every rank reaches the same verdict: the figures are sums over all of them."""
    steps, bad = figures["train_steps"], figures["nonfinite_losses"]
    if steps and 2 * bad >= steps:
        return f"{bad} of its {steps} training losses were inf/nan"
    if not math.isfinite(figures["val_loss"]):
        return f"the validation loss is {figures['val_loss']}"
    chance = math.log(max(num_classes, 2))
    if figures["train_loss"] > DIVERGED_LOSS_FACTOR * chance:
        return (f"the mean training loss {figures['train_loss']:.3g} is over {DIVERGED_LOSS_FACTOR:g}x that of a "
                f"uniform guess ({chance:.2f})")
    return None
