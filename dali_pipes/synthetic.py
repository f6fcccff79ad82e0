"""A CIFAR-shaped synthetic dataset that a network can learn: each class has its own smooth colour pattern.

Class prototypes depend only on the seed (so train and val share them); per-image noise, brightness and a small
shift depend on (seed, split). The signal survives crop, flip and colour jitter, so smoke runs show learning.
"""

from __future__ import annotations

import functools

import numpy as np

from .sources import ArrayDataset

DEFAULT_SIZES = {"train": 50_000, "val": 10_000}  # CIFAR-10's split sizes, so benchmarks see realistic epochs
_CHUNK = 4096  # images generated at a time: bounds the float32 temporaries to ~50 MB


def _prototypes(rng: np.random.Generator, num_classes: int, size: int) -> np.ndarray:
    """(K, size, size, 3) float32 patterns: a coarse 4x4 colour grid upsampled to the image size, in [40, 215]."""
    coarse = rng.uniform(40.0, 215.0, size=(num_classes, 4, 4, 3)).astype(np.float32)
    reps = -(-size // 4)
    fine = coarse.repeat(reps, axis=1).repeat(reps, axis=2)[:, :size, :size]
    return np.ascontiguousarray(fine)


@functools.lru_cache(maxsize=4)  # generating 50k images takes seconds; loaders of one run share the arrays
def make_synthetic(split: str, *, seed: int = 0, num_samples: int | None = None, num_classes: int = 10,
                   size: int = 32) -> ArrayDataset:
    """Generate the split deterministically from `seed`. Labels are balanced (i % num_classes) then shuffled."""
    n = DEFAULT_SIZES[split] if num_samples is None else int(num_samples)
    protos = _prototypes(np.random.default_rng([seed, 1]), num_classes, size)
    rng = np.random.default_rng([seed, 2, 0 if split == "train" else 1])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        x = protos[lab]
        shift = rng.integers(-2, 3, size=2)  # a shared small translation per chunk: cheap, breaks pixel identity
        x = np.roll(x, tuple(int(s) for s in shift), axis=(1, 2))
        x = x * rng.uniform(0.8, 1.2, size=(len(lab), 1, 1, 1)).astype(np.float32)
        x += rng.standard_normal(size=x.shape, dtype=np.float32) * np.float32(20.0)
        images[start:start + _CHUNK] = np.clip(x, 0, 255).astype(np.uint8)
    images.flags.writeable = False  # shared through the cache: nobody may change it in place
    labels.flags.writeable = False
    classes = tuple(f"class_{k}" for k in range(num_classes))
    return ArrayDataset(name="synthetic", images=images, labels=labels, classes=classes)
