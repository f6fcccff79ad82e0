"""In-memory descriptions of the datasets the loaders read; no pipeline code lives here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """A dataset held in host memory: CIFAR or synthetic.

    images: uint8, shape (N, H, W, 3), C-contiguous (HWC per sample: what DALI and torchvision v2 both take).
    labels: int64, shape (N,), each in [0, len(classes)).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FolderDataset:
    """An image-folder split: the files to decode and their labels (index of the class folder, sorted by name)."""

    name: str
    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)
