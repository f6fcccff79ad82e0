"""Labelled PNG grids of images: the one drawing behind `dali-preview` and a run's first_batch.png.

Tiles are uint8 NHWC arrays made from the loaders' float batches by :func:`to_uint8`, which undoes the recipe's
normalization, so a grid shows the pixels the loader (or the model) got, not a re-rendering.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dali_pipes import AugmentConfig


@dataclass(frozen=True)
class Row:
    label: str
    tiles: np.ndarray  # uint8 (N, H, W, 3)
    captions: tuple[str, ...] = ()  # one per tile, drawn above it; empty: none


def to_uint8(images: torch.Tensor, cfg: AugmentConfig) -> np.ndarray:
    """Normalized float NCHW -> uint8 NHWC, undoing the recipe's normalization."""
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    x = (images.float().cpu() * std + mean).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def write_grid(rows: list[Row], path: Path, title: str) -> None:
    """:func:`grid_figure` written to `path`."""
    import matplotlib.pyplot as plt

    fig = grid_figure(rows, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def grid_figure(rows: list[Row], title: str):
    """One figure: a row of tiles per Row, its label on the left; a row shorter than the first leaves blanks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].tiles.shape[0]
    captioned = any(row.captions for row in rows)
    height = 1.1 + (0.2 if captioned else 0.0)  # inches per row; captions need a line above each tile
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.8, height * len(rows) + 0.6), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= row.tiles.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(row.tiles[c], interpolation="nearest")
            if row.captions:
                ax.set_title(row.captions[c], fontsize=6, pad=2)
        axes[r][0].set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(12 * n + 20)), fontsize=8)
    return fig
