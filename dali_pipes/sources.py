"""In-memory descriptions of the datasets the loaders read; no pipeline code lives here."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

# Images of an array dataset that its fingerprint hashes (evenly spaced): enough to tell two datasets of one size
# apart, cheap at any size (64 CIFAR images are 200 KB).
_FINGERPRINT_IMAGES = 64


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


def fingerprint(data: ArrayDataset | FolderDataset) -> dict[str, object]:
    """What identifies a dataset split cheaply: its sample count, its classes, and a digest of its labels and of
    evenly spaced images (arrays) or of its file names relative to the split's folder (image folders: no file is
    read beyond what the listing already read). A resume compares it with the one its checkpoint saved."""
    if hasattr(data, "digest"):  # a shard split: its packing's identity (listing, seed, size) and the split
        return {"samples": len(data), "classes": list(data.classes), "digest": data.digest}
    digest = hashlib.blake2b(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes(), digest_size=16)
    if isinstance(data, ArrayDataset):
        step = max(1, len(data) // _FINGERPRINT_IMAGES)
        digest.update(np.ascontiguousarray(data.images[::step]).tobytes())
    else:
        digest.update("\n".join(os.path.relpath(f, data.root) for f in data.files).encode("utf-8", "surrogateescape"))
    return {"samples": len(data), "classes": list(data.classes), "digest": digest.hexdigest()}
