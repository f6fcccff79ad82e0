"""The peer a knowledgeable user would write instead of a loader: the recipe as batched torch ops (airbench style).

The whole split sits in one uint8 tensor on the device; each batch is gathered, then cropped, flipped, jittered,
normalized and erased as whole-batch tensor ops with per-sample parameters. The parameters are the DALI graph's
(dali_pipes.draws, one vectorised call per batch), so the peer pays the same host drawing cost and applies the
same crops, flips, factors and boxes. Saturation and hue use the same linear RGB approximation as DALI's ``hsv``
(a 3x3 matrix per sample in YIQ space). Benchmark only: it serves the throughput comparison, not training.

Implements the recipe's crop, flip, colour jitter and erasing (the presets ``none``, ``weak``, ``standard``);
:func:`supports` says whether a recipe is covered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dali_pipes import resolve_augment
from dali_pipes.config import AugmentConfig
from dali_pipes.draws import draw
from dali_pipes.loader import dataset_stats, load_source
from dali_pipes.plan import num_batches, shard_indices, split_batches

_GREY = torch.tensor([0.2989, 0.587, 0.114])  # the DALI graph's contrast pivot weights
# RGB -> YIQ (NTSC), the space DALI's hsv operator rotates hue and scales chroma in
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])


def supports(cfg: AugmentConfig) -> str | None:
    """None when the peer implements `cfg`, else why not (one line)."""
    if cfg.rotation > 0 or cfg.has_affine or cfg.has_blur or cfg.policy != "none":
        return "the batched-torch peer implements crop, flip, colour jitter and erasing only"
    return None


def colour_matrices(saturation: torch.Tensor, hue_degrees: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3): scale chroma by `saturation` and rotate it by `hue_degrees` about the grey axis, in YIQ."""
    yiq = _YIQ.to(saturation.device)
    h = -hue_degrees * (math.pi / 180.0)  # DALI's sign: with it the peer's `standard` is within 2 levels of DALI's
    cos, sin = torch.cos(h) * saturation, torch.sin(h) * saturation
    one, zero = torch.ones_like(h), torch.zeros_like(h)
    inner = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                         torch.stack([zero, sin, cos], -1)], -2)
    return torch.linalg.inv(yiq) @ inner @ yiq


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, p: dict[str, np.ndarray]) -> torch.Tensor:
    """uint8 NHWC -> normalized float32 NCHW with the drawn parameters `p` (dali_pipes.draws.draw)."""
    dev = images.device
    n, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()
    if cfg.crop_padding > 0:
        pad = cfg.crop_padding
        mode = "constant" if cfg.pad_mode == "constant" else "reflect"
        padded = F.pad(x, (pad, pad, pad, pad), mode=mode, **({"value": float(cfg.pad_fill)} if mode == "constant"
                                                             else {}))
        start = torch.from_numpy(p["crop"]).to(dev, torch.long) + pad  # (N, 2): y, x in the padded image
        rows = start[:, 0, None] + torch.arange(h, device=dev)
        cols = start[:, 1, None] + torch.arange(w, device=dev)
        x = padded[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if cfg.flip_p > 0:
        flip = torch.from_numpy(p["flip"]).to(dev, torch.bool)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    if cfg.contrast > 0 or cfg.brightness > 0:
        if cfg.contrast > 0:
            pivot = (x.mean((2, 3)) @ _GREY.to(dev))[:, None, None, None]
            c = torch.from_numpy(p["contrast"]).to(dev)[:, None, None, None]
            x = pivot + c * (x - pivot)
        if cfg.brightness > 0:
            x = torch.from_numpy(p["brightness"]).to(dev)[:, None, None, None] * x
        x = x.round().clamp_(0, 255)  # uint8 between operations, as the DALI graph's cast
    if cfg.saturation > 0 or cfg.hue > 0:
        sat = torch.from_numpy(p["saturation"]).to(dev) if cfg.saturation > 0 else torch.ones(n, device=dev)
        hue = torch.from_numpy(p["hue_degrees"]).to(dev) if cfg.hue > 0 else torch.zeros(n, device=dev)
        x = torch.einsum("nij,njhw->nihw", colour_matrices(sat, hue), x).round().clamp_(0, 255)
    mean = torch.tensor(cfg.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, device=dev).view(1, 3, 1, 1) * 255
    x = (x - mean) / std
    if cfg.erase_p > 0:
        anchor = torch.from_numpy(p["erase_anchor"]).to(dev)
        size = torch.from_numpy(p["erase_shape"]).to(dev)
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        inside_y = (ys >= anchor[:, :1]) & (ys < anchor[:, :1] + size[:, :1])  # (N, H)
        inside_x = (xs >= anchor[:, 1:]) & (xs < anchor[:, 1:] + size[:, 1:])  # (N, W)
        mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
        x = torch.where(mask, torch.tensor(float(cfg.erase_value), device=dev), x)
    return x


class BatchedTorchLoader:
    """A loader-shaped peer over the synthetic training split: ``set_epoch``, ``shard_size``, iteration."""

    def __init__(self, *, augment: str, batch_size: int, device: str, num_samples: int, seed: int = 0):
        data = load_source("synthetic", "unused", "train", num_samples=num_samples)
        mean, std = dataset_stats("synthetic")
        self.cfg = resolve_augment(augment, mean=mean, std=std)
        reason = supports(self.cfg)
        if reason:
            raise ValueError(f"{augment}: {reason}")
        self.device = torch.device(device)
        self.images = torch.from_numpy(data.images.copy()).to(self.device)  # the source array is read-only
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(self.device)
        self.size = tuple(data.images.shape[1:3])
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    @property
    def shard_size(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        return num_batches(self.shard_size, self.batch_size, False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = shard_indices(self.shard_size, shuffle=True, seed=self.seed, epoch=self.epoch, shard_id=0,
                              num_shards=1)
        for index in split_batches(order, self.batch_size, False):
            params = draw(self.cfg, self.size, self.seed, self.epoch, index)
            gather = torch.from_numpy(index).to(self.device)
            yield augment_batch(self.images[gather], self.cfg, params), self.labels[gather]
