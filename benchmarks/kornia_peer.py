"""The other peer a knowledgeable user reaches for: kornia's batched GPU augmentation (``kornia.augmentation``),
the recipe's crop, flip, colour jitter and erasing as one ``AugmentationSequential`` over whole batches, with
kornia's own per-sample draws (torch's generator, seeded per epoch). Benchmark only, and optional: kornia is not a
dependency of dali-train (``pip install kornia`` adds the row).

What differs from the DALI graph, so this row measures a user's kornia pipeline rather than an image-for-image
twin: kornia's ColorJitter follows torchvision's (random order of the four, HSV hue), its crop pads with the
recipe's fill, its erasing draws torchvision's way; the recipe's ranges are the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from dali_pipes import resolve_augment
from dali_pipes.loader import dataset_stats, load_source
from dali_pipes.plan import num_batches, shard_indices, split_batches

from .batched_torch import _intra_op_threads, supports


def available() -> bool:
    try:
        import kornia.augmentation  # noqa: F401
    except ImportError:
        return False
    return True


def pipeline(cfg, size: tuple[int, int]):
    """The recipe `cfg` (crop, flip, jitter, erasing; :func:`benchmarks.batched_torch.supports`) as kornia modules
    on float images in [0, 1], NCHW; the output normalised as the loaders' is."""
    import kornia.augmentation as K

    steps = []
    if cfg.crop_padding > 0:
        mode = "constant" if cfg.pad_mode == "constant" else "reflect"
        steps.append(K.RandomCrop(size, padding=cfg.crop_padding, fill=cfg.pad_fill / 255.0, padding_mode=mode))
    if cfg.flip_p > 0:
        steps.append(K.RandomHorizontalFlip(p=cfg.flip_p))
    if cfg.has_color_jitter:
        steps.append(K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation,
                                   hue=cfg.hue, p=1.0))
    steps.append(K.Normalize(mean=torch.tensor(cfg.mean), std=torch.tensor(cfg.std)))
    if cfg.erase_p > 0:
        steps.append(K.RandomErasing(scale=tuple(cfg.erase_scale), ratio=tuple(cfg.erase_ratio),
                                     value=float(cfg.erase_value), p=cfg.erase_p))
    return K.AugmentationSequential(*steps)


class KorniaLoader:
    """A loader-shaped kornia peer over the synthetic training split: ``set_epoch``, ``shard_size``, iteration."""

    def __init__(self, *, augment: str, batch_size: int, device: str, num_samples: int, seed: int = 0,
                 num_threads: int | None = None):
        data = load_source("synthetic", "unused", "train", num_samples=num_samples)
        mean, std = dataset_stats("synthetic")
        self.cfg = resolve_augment(augment, mean=mean, std=std)
        reason = supports(self.cfg)
        if reason:
            raise ValueError(f"{augment}: {reason.replace('batched-torch', 'kornia')}")
        self.device = torch.device(device)
        self.images = torch.from_numpy(data.images.copy()).to(self.device)  # uint8 NHWC, the split on the device
        self.labels = torch.from_numpy(np.array(data.labels, dtype=np.int64)).to(self.device)
        self.augment = pipeline(self.cfg, tuple(data.images.shape[1:3])).to(self.device)
        self.batch_size, self.seed, self.epoch, self.num_threads = batch_size, seed, 0, num_threads

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
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)  # kornia draws from torch's default generators
        for index in split_batches(order, self.batch_size, False):
            gather = torch.from_numpy(index).to(self.device)
            with _intra_op_threads(self.num_threads), torch.no_grad():
                x = self.images[gather].permute(0, 3, 1, 2).float().div_(255.0)
                yield self.augment(x), self.labels[gather]
