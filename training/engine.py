"""One training epoch and one evaluation: a single code path for CPU/GPU and AMP on/off.

The device and the autocast dtype are parameters; ``GradScaler(enabled=dtype is float16)`` is a no-op otherwise.
Running sums stay on the device; the host reads them only where a number is printed (every `log_every` steps on a
terminal, and at the end of the epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import soft_target_cross_entropy
from .mixing import Mixer, dominant_labels


@dataclass
class StepContext:
    """What the step needs besides the batch; built once per run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    mixer: Mixer
    device: torch.device
    amp_dtype: torch.dtype | None  # None: no autocast
    channels_last: bool


def _autocast(ctx_device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(ctx_device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _prepare(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, skip: int = 0,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_progress: Callable[[int, dict[str, float]], None] | None = None, log_every: int = 50) -> dict:
    """Train over `batches`; the first `skip` batches are drawn but not trained on (exact mid-epoch resume).

    Returns the epoch's figures and ``completed`` (batches trained, counting the skipped ones) — fewer than the
    epoch has when `should_stop()` turned true (SIGINT/SIGTERM): the step in flight finishes, the rest is left.
    Train accuracy is measured against the dominant label of each (possibly mixed) target.
    """
    model = ctx.model
    model.train()
    dev = ctx.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    nonfinite = torch.zeros((), device=dev, dtype=torch.int64)
    skipped_by_scaler = torch.zeros((), device=dev, dtype=torch.int64)
    seen = 0
    completed = 0
    data_time = 0.0
    start = time.perf_counter()
    fetch_start = start
    for images, labels in batches:
        completed += 1
        if completed <= skip:
            fetch_start = time.perf_counter()
            continue
        data_time += time.perf_counter() - fetch_start
        images, targets = ctx.mixer(_prepare(images, ctx.channels_last), labels)
        with _autocast(dev, ctx.amp_dtype):
            logits = model(images)
        loss = soft_target_cross_entropy(logits, targets)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        prev_scale = ctx.scaler._scale.clone() if ctx.scaler.is_enabled() else None
        ctx.scaler.step(ctx.optimizer)  # skips the update when fp16 gradients overflowed
        ctx.scaler.update()
        if prev_scale is not None:  # the scaler lowers its scale exactly when it skipped the step
            skipped_by_scaler += (ctx.scaler._scale < prev_scale).to(torch.int64)
        ctx.scheduler.step()
        n = labels.shape[0]
        seen += n
        detached = loss.detach()
        nonfinite += (~torch.isfinite(detached)).to(torch.int64)
        loss_sum += torch.nan_to_num(detached.double(), nan=0.0, posinf=0.0, neginf=0.0) * n
        correct += (logits.detach().argmax(1) == dominant_labels(labels, targets)).sum()
        if on_progress is not None and completed % log_every == 0:
            on_progress(completed, {"loss": (loss_sum / max(seen, 1)).item(), "acc": (correct / max(seen, 1)).item()})
        if should_stop():
            break
        fetch_start = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # before reading the clock
    elapsed = time.perf_counter() - start
    return {
        "train_loss": (loss_sum / max(seen, 1)).item(),
        "train_acc": (correct.double() / max(seen, 1)).item(),
        "nonfinite_losses": int(nonfinite.item()),
        "skipped_steps": int(skipped_by_scaler.item()),
        "images": seen,
        "completed": completed,
        "data_time_s": data_time,
        "epoch_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
    }


def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device,
             amp_dtype: torch.dtype | None, channels_last: bool, tta: bool = False) -> dict:
    """Accuracy and plain cross-entropy over every validation sample once; `tta` averages the flipped view."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    with torch.inference_mode(), _autocast(device, amp_dtype):
        for images, labels in batches:
            images = _prepare(images, channels_last)
            logits = model(images).float()
            if tta:
                logits = (logits.softmax(1) + model(images.flip(3)).float().softmax(1)).log()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.shape[0]
    return {"val_loss": (loss_sum / max(seen, 1)).item(), "val_acc": (correct.double() / max(seen, 1)).item(),
            "val_images": seen}
