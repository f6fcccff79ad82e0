"""Losses for soft targets (Mixup / CutMix / label smoothing)."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets[:, k] * log_softmax(logits)[:, k]``; ``logits`` and ``targets`` (N, K).

    With smoothed one-hot targets this is ``F.cross_entropy(logits, y, label_smoothing=eps)``.

    Computed in (at least) float32 even under autocast: the logits of an fp16/bf16 forward pass are upcast before
    the log-softmax, so the exp/log-sum-exp over K classes, the products with small target shares (eps/K, 1 - lam)
    and the batch reduction keep float32 precision and range; in fp16 the log-probabilities of unlikely classes
    overflow towards -inf / lose their low bits, and bf16 keeps only ~3 significant digits of the loss. Upcasting
    K logits per sample costs nothing next to the model. float64 inputs stay float64.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"soft_target_cross_entropy expects logits and targets of the same (N, K) shape, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
    return -(targets.to(dtype) * log_probs).sum(dim=-1).mean()
