"""An exponential moving average (EMA) of the model's weights, kept on the model's device.

Anchors: timm's ModelEmaV3 (one fused lerp, ``torch_private.foreach_lerp_``, over the floating-point state, integer buffers copied) and
torchvision's references (``--model-ema-steps``: update every N optimizer steps). The EMA is a pure function of the
optimizer step: the update after step n (n steps taken) happens when n is a multiple of `every`, with the decay
`decay_at(n) ** every`, so its time constant in steps does not depend on `every`; the checkpoint holds the EMA
tensors and the step, which is all a resume needs to continue bit-identically. The decay is computed on the host
from the step (a Python int), so an update never waits for the device.

BatchNorm running statistics are averaged like the weights (timm's and torchvision's default): statistics copied
from the raw model would describe the raw weights' activations, not the averaged ones'.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .. import distributed
from ..distributed import World
from .engine import evaluate
from .torch_private import foreach_lerp_


def warmup_decay(decay: float, steps: int) -> float:
    """min(decay, (1 + steps) / (10 + steps)): early on the average follows the fast-moving weights, then it
    settles to `decay` (reached after 9 * decay / (1 - decay) - 1 steps: 44,990 for 0.9998)."""
    return min(decay, (1 + steps) / (10 + steps))


class ModelEma:
    """The EMA of `model` (the raw module, not a DDP/compile wrapper), a copy of it on the same device, memory
    format and dtype: `update(steps)` after each optimizer step, `module` to evaluate, `state_dict` /
    `load_state_dict` for checkpoints. It starts as a copy of the model."""

    def __init__(self, model: torch.nn.Module, *, decay: float, every: int = 1, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0 or every < 1:
            raise ValueError(f"EMA decay {decay} must be in (0, 1) and every {every} >= 1")
        self.decay, self.every, self.warmup = decay, every, warmup
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, steps: int) -> float:
        """The per-step decay after `steps` optimizer steps."""
        return warmup_decay(self.decay, steps) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, steps: int) -> bool:
        """Fold the model's current weights into the average if `steps` (optimizer steps taken) is a multiple of
        `every`; returns whether it did."""
        if steps % self.every:
            return False
        weight = 1.0 - self.decay_at(steps) ** self.every  # the share of the current weights
        averaged, current = [], []
        for mine, theirs in zip(self.module.state_dict().values(), self.source.state_dict().values()):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs)
            else:  # BatchNorm's num_batches_tracked
                mine.copy_(theirs)
        foreach_lerp_(averaged, current, weight)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


def evaluate_ema(ema: ModelEma, batches: Any, *, world: World, device: torch.device,
                 amp_dtype: torch.dtype | None, channels_last: bool) -> dict[str, float]:
    """`ema_val_loss`, `ema_val_acc` (and `ema_val_acc5` for more than 5 classes) over every validation sample once
    (summed over data-parallel ranks).

    Under DDP every rank's EMA weights are equal (they average equal weights); its BatchNorm statistics average
    each rank's own, so rank 0's are copied to every rank first, as for the raw model (distributed.sync_buffers)."""
    distributed.sync_buffers(ema.module, world)
    val = evaluate(ema.module, batches, device=device, amp_dtype=amp_dtype, channels_last=channels_last)
    n = val["val_images"]
    top5 = "val_acc5" in val
    loss_sum, correct, seen, correct5 = distributed.all_sum(
        [val["val_loss"] * n, val["val_acc"] * n, n, val.get("val_acc5", 0.0) * n], world, device)
    return {"ema_val_loss": loss_sum / max(seen, 1), "ema_val_acc": correct / max(seen, 1),
            **({"ema_val_acc5": correct5 / max(seen, 1)} if top5 else {})}
