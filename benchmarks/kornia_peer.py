"""The other peer a knowledgeable user reaches for: kornia's batched GPU augmentation (``kornia.augmentation``),
the recipe's crop, flip, colour jitter and erasing as one ``AugmentationSequential`` over whole batches, with
kornia's own per-sample draws (torch's generator, seeded per epoch). Benchmark only, and optional: kornia is not a
dependency of dali-train (``pip install kornia`` adds the row).

What differs from the DALI graph, so this row measures a user's kornia pipeline rather than an image-for-image
twin: kornia's ColorJitter follows torchvision's (random order of the four, HSV hue), its crop pads with the
recipe's fill, its erasing draws torchvision's way; the recipe's ranges are the same.
"""

from __future__ import annotations

import torch

from .batched_torch import BatchedTorchLoader


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


class KorniaLoader(BatchedTorchLoader):
    """The kornia peer: the batched peer's split, plan and threads, with kornia's augmentation and its draws."""

    name = "kornia"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pipeline = pipeline(self.cfg, self.size).to(self.device)

    def start_epoch(self) -> None:
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)  # kornia draws from torch's default generators

    def augment(self, images: torch.Tensor, index) -> torch.Tensor:
        return self.pipeline(images.permute(0, 3, 1, 2).float().div_(255.0))
