"""The peer a knowledgeable user would write instead of a loader: the recipe as batched torch ops (airbench style).

The whole split sits in one uint8 tensor on the device; each batch is gathered, then cropped, flipped, jittered,
normalized and erased as whole-batch tensor ops with per-sample parameters, each one or two passes over the batch
(:func:`augment_batch`), on as many torch threads as the DALI row it is compared with. The parameters are the DALI
graph's (dali_pipes.draws, one vectorised call per batch), so the peer pays the same host drawing cost and applies
the same crops, flips, factors and boxes. Saturation and hue use the same linear RGB approximation as DALI's ``hsv``
(a 3x3 matrix per sample in YIQ space). Benchmark only: it serves the throughput comparison, not training.

Implements the recipe's crop, flip, colour jitter and erasing (the presets ``none``, ``weak``, ``standard``);
:func:`supports` says whether a recipe is covered.
"""

from __future__ import annotations

import contextlib
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
    """uint8 NHWC -> normalized float32 NCHW with the drawn parameters `p` (dali_pipes.draws.draw).

    Each step is one or two whole-batch passes: the crop and the flip are one uint8 gather through a per-sample index, contrast and brightness one multiply-add per sample,
    saturation and hue one 3x3 matrix per sample (bmm), normalization one multiply-add, erasing one masked fill.
    """
    dev = images.device
    n, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2)  # a view: the gather below reads NHWC memory as NCHW
    if cfg.crop_padding > 0 or cfg.flip_p > 0:
        # Crop and flip as one gather on uint8 (4x less memory traffic than on float): output pixel (r, c) of
        # sample i reads padded pixel (y_i + r, x_i + c), or (y_i + r, x_i + w - 1 - c) when i is flipped.
        pad = cfg.crop_padding
        if pad > 0:
            mode = "constant" if cfg.pad_mode == "constant" else "reflect"
            x = F.pad(x, (pad, pad, pad, pad), mode=mode, **({"value": cfg.pad_fill} if mode == "constant" else {}))
        start = (torch.from_numpy(p["crop"]).to(dev, torch.long) + pad if pad > 0
                 else torch.zeros(n, 2, dtype=torch.long, device=dev))
        rows = start[:, :1] + torch.arange(h, device=dev)  # (N, H) rows of the padded image
        cols = start[:, 1:] + torch.arange(w, device=dev)  # (N, W)
        if cfg.flip_p > 0:
            flip = torch.from_numpy(p["flip"]).to(dev, torch.bool)[:, None]
            cols = torch.where(flip, cols.flip(1), cols)
        pixel = (rows[:, :, None] * x.shape[3] + cols[:, None, :]).view(n, 1, h * w).expand(n, 3, h * w)
        x = x.reshape(n, 3, -1).gather(2, pixel).view(n, 3, h, w)
    x = x.float()  # uint8 -> float once
    if cfg.contrast > 0 or cfg.brightness > 0:
        # brightness * (pivot + contrast * (x - pivot)) = scale * x + offset, per sample: one pass
        scale = torch.ones(n, device=dev)
        offset = torch.zeros(n, device=dev)
        if cfg.contrast > 0:
            c = torch.from_numpy(p["contrast"]).to(dev)
            scale, offset = c, (1 - c) * (x.mean((2, 3)) @ _GREY.to(dev))  # pivot: the image's mean grey level
        if cfg.brightness > 0:
            b = torch.from_numpy(p["brightness"]).to(dev)
            scale, offset = b * scale, b * offset
        x = torch.addcmul(offset.view(n, 1, 1, 1), x, scale.view(n, 1, 1, 1)).clamp_(0, 255).round_()  # uint8
    if cfg.saturation > 0 or cfg.hue > 0:
        sat = torch.from_numpy(p["saturation"]).to(dev) if cfg.saturation > 0 else torch.ones(n, device=dev)
        hue = torch.from_numpy(p["hue_degrees"]).to(dev) if cfg.hue > 0 else torch.zeros(n, device=dev)
        x = torch.bmm(colour_matrices(sat, hue), x.view(n, 3, h * w)).view(n, 3, h, w).clamp_(0, 255).round_()
    inv_std = 1.0 / (torch.tensor(cfg.std, device=dev) * 255)
    shift = -torch.tensor(cfg.mean, device=dev) * 255 * inv_std
    x = torch.addcmul(shift.view(1, 3, 1, 1), x, inv_std.view(1, 3, 1, 1))  # (x - mean) / std
    if cfg.erase_p > 0:
        # the box as the outer product of a row range and a column range, per sample (empty when not erased)
        anchor = torch.from_numpy(p["erase_anchor"]).to(dev)
        end = anchor + torch.from_numpy(p["erase_shape"]).to(dev)
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        inside_y = (ys >= anchor[:, :1]) & (ys < end[:, :1])  # (N, H)
        inside_x = (xs >= anchor[:, 1:]) & (xs < end[:, 1:])  # (N, W)
        x.masked_fill_((inside_y[:, :, None] & inside_x[:, None, :])[:, None], float(cfg.erase_value))
    return x


class BatchedTorchLoader:
    """A loader-shaped peer over the synthetic training split: ``set_epoch``, ``shard_size``, iteration. Subclasses
    (benchmarks.kornia_peer) replace :meth:`augment` and :meth:`start_epoch` and keep the split, plan and threads."""

    name = "batched-torch"  # in the refusal of a recipe the peer does not implement

    def __init__(self, *, augment: str, batch_size: int, device: str, num_samples: int, seed: int = 0,
                 num_threads: int | None = None):
        data = load_source("synthetic", "unused", "train", num_samples=num_samples)
        mean, std = dataset_stats("synthetic")
        self.cfg = resolve_augment(augment, mean=mean, std=std)
        reason = supports(self.cfg)
        if reason:
            raise ValueError(f"{augment}: {reason.replace('batched-torch', self.name)}")
        self.device = torch.device(device)
        self.images = torch.from_numpy(data.images.copy()).to(self.device)  # the source array is read-only
        self.labels = torch.from_numpy(np.array(data.labels, dtype=np.int64)).to(self.device)  # a writable copy
        self.size = tuple(data.images.shape[1:3])
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        # torch's intra-op threads while a batch is augmented (None: as set): the benchmark gives the peer the
        # cores the DALI row gets. Set per batch and restored, since the setting is process-wide.
        self.num_threads = num_threads

    @property
    def shard_size(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        return num_batches(self.shard_size, self.batch_size, False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_epoch(self) -> None:
        """Called before an epoch's first batch (this peer's draws are functions of (seed, epoch, index))."""

    def augment(self, images: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """uint8 NHWC `images` of dataset indices `index` -> the normalized float NCHW batch."""
        return augment_batch(images, self.cfg, draw(self.cfg, self.size, self.seed, self.epoch, index))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = shard_indices(self.shard_size, shuffle=True, seed=self.seed, epoch=self.epoch, shard_id=0,
                              num_shards=1)
        self.start_epoch()
        for index in split_batches(order, self.batch_size, False):
            gather = torch.from_numpy(index).to(self.device)
            with _intra_op_threads(self.num_threads), torch.no_grad():
                images = self.augment(self.images[gather], index)
            yield images, self.labels[gather]


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
