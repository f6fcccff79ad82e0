"""The torchvision reference: the same recipe with ``torchvision.transforms.v2`` and a ``DataLoader``.

It is the CPU fallback backend and the oracle the DALI graph is tested against. Each sample is transformed under its
own torch seed derived from (seed, epoch, dataset index), so batches do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from .config import AugmentConfig
from .errors import DataError
from .plan import derive_seed
from .sources import ArrayDataset, FolderDataset


def build_transform(cfg: AugmentConfig, size: tuple[int, int], *, resize: bool = False) -> v2.Compose:
    """uint8 CHW tensor -> normalized float32 CHW tensor, in the order documented in :mod:`dali_pipes.config`.

    `resize` (image folders): the recipe's crop brings each image to `size` first ("resized": RandomResizedCrop;
    "centre": Resize of the shorter side + CenterCrop; "pad": a squash Resize), bilinear and antialiased.
    """
    steps: list[Callable] = []
    bilinear = dict(interpolation=InterpolationMode.BILINEAR, antialias=True)
    if resize and cfg.crop == "resized":
        steps.append(v2.RandomResizedCrop(list(size), scale=cfg.rrc_scale, ratio=cfg.rrc_ratio, **bilinear))
    elif resize and cfg.crop == "centre":
        steps += [v2.Resize(int(size[0] / cfg.crop_ratio), **bilinear), v2.CenterCrop(list(size))]
    elif resize:
        steps.append(v2.Resize(list(size), **bilinear))
    if cfg.crop_padding > 0:
        steps.append(v2.RandomCrop(list(size), padding=cfg.crop_padding, padding_mode=cfg.pad_mode,
                                   fill=cfg.pad_fill))
    if cfg.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.flip_p))
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation, interpolation=InterpolationMode.NEAREST, fill=cfg.pad_fill))
    if cfg.has_affine:
        affine = v2.RandomAffine(cfg.affine_degrees, translate=(cfg.affine_translate, cfg.affine_translate),
                                 scale=cfg.affine_scale, shear=cfg.affine_shear or None,
                                 interpolation=InterpolationMode.NEAREST, fill=cfg.pad_fill)
        steps.append(v2.RandomApply([affine], p=cfg.affine_p))
    if cfg.has_color_jitter:
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    if cfg.has_blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    elif cfg.policy == "randaugment":
        steps.append(v2.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m, num_magnitude_bins=31))
    elif cfg.policy == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(num_magnitude_bins=31))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    if cfg.erase_p > 0:
        steps.append(v2.RandomErasing(cfg.erase_p, scale=cfg.erase_scale, ratio=cfg.erase_ratio,
                                      value=cfg.erase_value))
    return v2.Compose(steps)


def worker_error(exc: DataError) -> DataError:
    """``exc`` as one line: a DataLoader re-raises a worker's error with the worker's traceback as its message.

    The message then reads "Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...", ending with
    "dali_pipes.errors.DataError: <the original message>"; that last part is what the user needs.
    """
    lines = str(exc).splitlines()
    if len(lines) <= 1:
        return exc
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    original = next((line[len(prefix):] for line in reversed(lines) if line.startswith(prefix)), lines[0])
    return type(exc)(original)


class ReferenceDataset(Dataset):
    """(epoch, dataset index) -> (normalized image, index); the epoch travels with the index to the workers."""

    def __init__(self, data: ArrayDataset | FolderDataset, cfg: AugmentConfig, size: tuple[int, int], seed: int):
        self.data = data
        self.is_folder = isinstance(data, FolderDataset)
        self.transform = build_transform(cfg, size, resize=self.is_folder)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def _read(self, index: int) -> torch.Tensor:
        if self.is_folder:
            from .folder import decode_image_rgb  # the folder module pulls in file I/O helpers only when needed

            return decode_image_rgb(self.data.files[index])
        return torch.from_numpy(np.array(self.data.images[index])).permute(2, 0, 1)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = item
        image = self._read(index)
        # fork_rng keeps the caller's global RNG untouched (workers=0 runs this in the training process)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, index))
            return self.transform(image), index
