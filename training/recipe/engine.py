"""One training epoch and one evaluation: a single code path for CPU/GPU and AMP on/off.

The device and the autocast dtype are parameters; ``GradScaler(enabled=dtype is float16)`` is a no-op otherwise.
The LR is a pure function of the optimizer step (``StepContext.lr_at``), written into the param groups before each
step: no scheduler object, nothing to save or re-sync on resume. Running sums stay on the device; the host reads
them only where a number is printed (when the progress display or TensorBoard asks, and at the end of the epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .losses import soft_target_cross_entropy
from .mixing import Mixer, dominant_labels

TOP_K = 5  # top-5 accuracy is measured where there are more classes than this (with fewer it is 100% by definition)


def _in_top_k(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many of `labels` are among their row's TOP_K largest logits (a device tensor)."""
    return (logits.topk(TOP_K, dim=1).indices == labels.unsqueeze(1)).any(1).sum()

if TYPE_CHECKING:
    from .ema import ModelEma


@dataclass
class StepContext:
    """What the step needs besides the batch; built once per run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]  # the LR of optimizer step k (0-based), a pure function of k
    scaler: torch.amp.GradScaler
    mixer: Mixer
    device: torch.device
    amp_dtype: torch.dtype | None  # None: no autocast
    channels_last: bool
    clip_grad: float = 0.0  # max global grad norm (L2); 0: no clipping
    ema: ModelEma | None = None  # the EMA of the weights, updated after every optimizer step it asks for
    params: list[torch.nn.Parameter] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group (the optimizer reads it at its next step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def scaler_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                params: list[torch.nn.Parameter], clip_grad: float = 0.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """scale -> backward -> unscale -> clip (when `clip_grad` > 0) -> step -> update, through GradScaler's public API.

    Returns the global grad norm before clipping (a device tensor; None when not clipping, so that no norm is
    computed for nothing) and whether the scaler skipped the step (fp16 gradients with inf/nan), as a 0-dim bool
    tensor on the device: the caller sums it and reads the sum once per epoch.

    No host read happens here when the optimizer implements AMP scaling itself (``fused=True``,
    factory.create_optimizer): GradScaler then hands it the device tensor ``found_inf`` instead of reading it with
    ``.item()`` to decide whether to call ``step``. A skipped step is told by the scale on the device: the scaler
    lowers it exactly when it skips, and ``scaler.scale(one)`` is the current scale as a device tensor (the public
    route; ``get_scale()`` would read it on the host). With the scaler disabled (bfloat16, FP32) both are ``one``
    and nothing is skipped.
    """
    scaler.scale(loss).backward()
    norm = None
    if clip_grad > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
    one = loss.new_ones((), dtype=torch.float32)
    before = scaler.scale(one)
    scaler.step(optimizer)  # skips the update when fp16 gradients overflowed; optimizer.step() when disabled
    scaler.update()
    return norm, scaler.scale(one) < before


def _autocast(ctx_device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(ctx_device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _prepare(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, step: int = 0,
                    skip: int = 0, should_stop: Callable[[], bool] = lambda: False,
                    on_progress: Callable[[int, dict[str, float]], None] | None = None, log_every: int = 50,
                    report_due: Callable[[int], bool] | None = None,
                    on_first_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> dict:
    """Train over `batches`, the first optimizer step being step `step` of the run (it sets the LR); the first
    `skip` batches are drawn but not trained on (exact mid-epoch resume).

    Returns sums, not means, so that the parts of an interrupted epoch add up to the straight epoch: ``loss_sum``
    (per-sample loss summed over the steps whose loss was finite; ``nonfinite_losses`` counts the other steps and
    ``nonfinite_images`` their samples), ``correct``, ``images``, ``steps`` (optimizer steps taken, skipped ones
    included) and ``position`` (the batch position reached in the epoch, the `skip` batches drawn included) —
    fewer than the epoch has when `should_stop()` turned true (SIGINT/SIGTERM): the step in flight finishes, the
    rest is left. A stop asked at the epoch's last batch lets the iteration end by itself: a loader records its
    end-of-epoch state (DALI's draws carry on into the next epoch) only when its iterator is exhausted, not when it
    is abandoned after its last batch.
    Train accuracy counts the dominant label of each (possibly mixed) target, and so does ``correct5``, the samples
    whose dominant label is among the 5 largest logits (0 for a model of 5 classes or fewer). `on_progress(position, stats)` gets
    the running means of this call every `log_every` batches, or at each position for which `report_due(position)`
    is true when it is given (``loss``, ``acc``, and ``images``, the count the loss is a mean over; one host read);
    `on_first_batch(images, labels, targets)` sees the first batch trained here as the model gets it (after
    mixing); it must only read them.
    """
    model = ctx.model
    model.train()
    dev = ctx.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    correct5 = torch.zeros((), device=dev, dtype=torch.int64)
    nonfinite = torch.zeros((), device=dev, dtype=torch.int64)
    nonfinite_images = torch.zeros((), device=dev, dtype=torch.int64)  # samples of the steps whose loss was inf/nan
    skipped_by_scaler = torch.zeros((), device=dev, dtype=torch.int64)  # read once, at the end of the epoch
    seen = 0
    position = 0
    steps = 0
    data_time = 0.0
    start = time.perf_counter()
    fetch_start = start
    total = len(batches) if hasattr(batches, "__len__") else None
    for images, labels in batches:
        position += 1
        if position <= skip:
            fetch_start = time.perf_counter()
            continue
        data_time += time.perf_counter() - fetch_start
        images, targets = ctx.mixer(_prepare(images, ctx.channels_last), labels)
        if on_first_batch is not None and steps == 0:
            on_first_batch(images, labels, targets)
        with _autocast(dev, ctx.amp_dtype):
            logits = model(images)
        loss = soft_target_cross_entropy(logits, targets)
        ctx.optimizer.zero_grad(set_to_none=True)
        set_lr(ctx.optimizer, ctx.lr_at(step + steps))
        _, skipped = scaler_step(loss, ctx.optimizer, ctx.scaler, params=ctx.params, clip_grad=ctx.clip_grad)
        skipped_by_scaler += skipped
        steps += 1
        if ctx.ema is not None:
            ctx.ema.update(step + steps)
        n = labels.shape[0]
        seen += n
        detached = loss.detach()
        bad = (~torch.isfinite(detached)).to(torch.int64)
        nonfinite += bad
        nonfinite_images += bad * n
        loss_sum += torch.nan_to_num(detached.double(), nan=0.0, posinf=0.0, neginf=0.0) * n
        dominant, scores = dominant_labels(labels, targets), logits.detach()
        correct += (scores.argmax(1) == dominant).sum()
        if scores.shape[1] > TOP_K:
            correct5 += _in_top_k(scores, dominant)
        if on_progress is not None and (report_due(position) if report_due is not None else
                                        position % log_every == 0):
            # one device-to-host copy for the three sums; the loss is a mean over the steps whose loss was finite
            summed, right, bad_images = torch.stack([loss_sum, correct.double(), nonfinite_images.double()]).tolist()
            finite = seen - int(bad_images)
            on_progress(position, {"loss": summed / max(finite, 1), "acc": right / max(seen, 1), "images": finite})
        if should_stop() and position != total:
            break
        fetch_start = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # before reading the clock
    elapsed = time.perf_counter() - start
    return {
        "loss_sum": float(loss_sum.item()),
        "correct": int(correct.item()),
        "correct5": int(correct5.item()),
        "nonfinite_losses": int(nonfinite.item()),
        "nonfinite_images": int(nonfinite_images.item()),
        "skipped_steps": int(skipped_by_scaler.item()),
        "images": seen,
        "steps": steps,
        "position": position,
        "data_time_s": data_time,
        "epoch_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
    }


def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device,
             amp_dtype: torch.dtype | None, channels_last: bool, tta: bool = False,
             on_batch: Callable[[int], None] | None = None) -> dict:
    """Accuracy and plain cross-entropy over every validation sample once, and ``val_acc5`` (top-5 accuracy) where
    the model has more than 5 classes; `tta` averages the flipped view. `on_batch(done)` is told the batches done
    after each one (a count: no host read)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    seen, classes = 0, 0
    with torch.inference_mode(), _autocast(device, amp_dtype):
        for done, (images, labels) in enumerate(batches, 1):
            images = _prepare(images, channels_last)
            logits = model(images).float()
            if tta:
                logits = (logits.softmax(1) + model(images.flip(3)).float().softmax(1)).log()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            classes = logits.shape[1]
            if classes > TOP_K:
                correct5 += _in_top_k(logits, labels)
            seen += labels.shape[0]
            if on_batch is not None:
                on_batch(done)
    top5 = {"val_acc5": (correct5.double() / max(seen, 1)).item()} if classes > TOP_K else {}
    return {"val_loss": (loss_sum / max(seen, 1)).item(), "val_acc": (correct.double() / max(seen, 1)).item(),
            **top5, "val_images": seen}
