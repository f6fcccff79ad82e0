"""Pruning masks: which weights a method prunes, raising their sparsity to a cumulative amount, and measuring it.

Masks are torch's `torch.nn.utils.prune` reparametrization (weight = weight_orig * weight_mask): while they are on,
pruned weights cannot grow back during fine-tuning; `make_permanent` turns them into plain weights with exact zeros.

Methods and what they prune (the "prunable weights" that sparsity is measured over):
* ``l1-unstructured``: each Conv2d/Linear weight loses the same fraction of its smallest-|w| entries.
* ``l1-global``: the smallest-|w| entries over all Conv2d/Linear weights together (layers end up unequal).
* ``ln-structured``: whole output channels (filters) of each Conv2d, by L2 norm; the classifier is left whole
  (pruning its rows would delete classes). Channel counts per layer are chosen so the total hits the amount.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from ..choices import PRUNE_METHODS

METHODS = PRUNE_METHODS


def prunable(model: nn.Module, method: str) -> list[tuple[nn.Module, str]]:
    """(module, "weight") pairs the method prunes, in model order."""
    kinds = (nn.Conv2d,) if method == "ln-structured" else (nn.Conv2d, nn.Linear)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass uses (orig * mask while pruning is on; `module.weight` is only refreshed by
    the next forward call, so it can be stale right after a state dict was loaded)."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig").detach() * getattr(module, name + "_mask")
    return getattr(module, name).detach()


def sparsity(targets: list[tuple[nn.Module, str]]) -> tuple[float, int]:
    """Fraction of the prunable weights that are zero, and how many weights that is out of."""
    zeros = sum(int((effective_weight(m, n) == 0).sum()) for m, n in targets)
    total = sum(effective_weight(m, n).numel() for m, n in targets)
    return zeros / max(total, 1), total


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """Nonzero and total parameters of the whole model, counting pruned weights as they act in the forward pass."""
    nonzero = total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            w = effective_weight(module, name[:-5]) if name.endswith("_orig") else p.detach()
            nonzero += int((w != 0).sum())
            total += w.numel()
    return nonzero, total


def add_masks(targets: list[tuple[nn.Module, str]]) -> None:
    """All-ones masks (weight -> weight_orig * weight_mask) where none is yet: a pruned state dict then loads."""
    for m, n in targets:
        if not prune.is_pruned(m) or not hasattr(m, n + "_mask"):
            prune.identity(m, n)


def _pruned_channels(module: nn.Module, name: str) -> int:
    mask = getattr(module, name + "_mask")
    return int((mask.flatten(1).sum(1) == 0).sum())


def _channel_counts(targets: list[tuple[nn.Module, str]], amount: float) -> list[int]:
    """Output channels to have pruned per layer so that the pruned weights are `amount` of all of them: each layer
    gets floor(amount * channels), then single channels go to the layers with the largest remainders while that
    brings the total closer (per-layer rounding alone misses by up to a channel's worth in every layer)."""
    sizes = [getattr(m, n + "_orig").shape for m, n in targets]
    channels = [s[0] for s in sizes]
    per_channel = [math.prod(s[1:]) for s in sizes]
    goal = amount * sum(c * w for c, w in zip(channels, per_channel))
    counts = [math.floor(amount * c) for c in channels]
    order = sorted(range(len(counts)), key=lambda i: amount * channels[i] - counts[i], reverse=True)
    have = sum(k * w for k, w in zip(counts, per_channel))
    for i in order:
        if counts[i] < channels[i] - 1 and abs(have + per_channel[i] - goal) < abs(have - goal):
            counts[i] += 1
            have += per_channel[i]
    return counts


def prune_to(targets: list[tuple[nn.Module, str]], method: str, amount: float) -> None:
    """Raise the sparsity of `targets` to `amount` (cumulative), pruning only weights still present.

    torch's pruning methods given an integer amount prune that many more among the unpruned entries (channels, for
    structured pruning), so each call asks for the difference between the goal and what is pruned already."""
    add_masks(targets)
    if method == "l1-global":
        # prune.global_unstructured flattens weights with .view(-1), which channels-last weights refuse; the same
        # selection by hand: the `more` smallest |w| among the weights still present, over all layers at once.
        masks = [getattr(m, n + "_mask") for m, n in targets]
        scores = torch.cat([effective_weight(m, n).abs().flatten().masked_fill(mask.flatten() == 0, math.inf)
                            for (m, n), mask in zip(targets, masks)])
        more = max(0, round(amount * scores.numel()) - sum(int((mask == 0).sum()) for mask in masks))
        keep = torch.ones_like(scores)
        keep[torch.topk(scores, more, largest=False).indices] = 0
        for (m, n), piece, mask in zip(targets, keep.split([mask.numel() for mask in masks]), masks):
            prune.custom_from_mask(m, n, mask=piece.reshape(mask.shape) * mask)
    elif method == "l1-unstructured":
        for m, n in targets:
            mask = getattr(m, n + "_mask")
            more = max(0, round(amount * mask.numel()) - int((mask == 0).sum()))
            prune.l1_unstructured(m, n, amount=more)
    else:
        for (m, n), count in zip(targets, _channel_counts(targets, amount)):
            more = max(0, count - _pruned_channels(m, n))
            prune.ln_structured(m, n, amount=more, n=2, dim=0)


def make_permanent(targets: list[tuple[nn.Module, str]]) -> None:
    for m, n in targets:
        if hasattr(m, n + "_mask"):
            prune.remove(m, n)
