"""Shared test setup: GPU tests skip with a reason where no CUDA device is visible, and run wherever one is."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_image_folder(root, *, classes: tuple[str, ...], per_class: int, shape: tuple[int, int], ext: str,
                       seed: int = 0) -> None:
    """`root/{train,val}/<class>/<k>.<ext>` filled with random RGB images of `shape` (height, width)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
                options = {"quality": 95} if ext == "jpg" else {}
                Image.fromarray(pixels).save(root / split / cls / f"{k}.{ext}", **options)
