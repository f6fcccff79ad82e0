"""first_batch.png: a run's first training batch as the model sees it (after Mixup/CutMix, un-normalized to
pixels), each tile captioned with its dominant label and, where the sample is mixed, that label's weight in the
target.

The engine hands the batch to a :class:`FirstBatch` (``train_one_epoch(on_first_batch=...)``) at the run's first
step. The capture only reads it: no random draw, nothing written back, one device-to-host copy of at most
`max_tiles` samples, so training is the same with or without it. Drawing the PNG happens after the epoch, outside
its timing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dali_pipes import AugmentConfig
from dali_pipes.config import describe_augment

from ..config import TrainConfig
from ..recipe import dominant_labels
from .files import write_error
from .grid import Row, to_uint8, write_grid

MAX_TILES = 32  # enough to see the recipe and the mixing at work, small enough to read the captions
PER_ROW = 8


class FirstBatch:
    """``capture(images, labels, targets)`` keeps host copies of the first `max_tiles` samples of that batch: the
    images, the dominant labels and those labels' weights with the smoothing `label_smoothing` taken out."""

    def __init__(self, *, label_smoothing: float, max_tiles: int = MAX_TILES):
        self.label_smoothing, self.max_tiles = label_smoothing, max_tiles
        self.images: torch.Tensor | None = None  # float32 NCHW, normalized, on the host
        self.labels: torch.Tensor | None = None  # int64 (n,): the dominant label of each sample
        self.weights: torch.Tensor | None = None  # float32 (n,): its weight in the target, 1 where not mixed
        self.batch_size = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        n = min(self.max_tiles, images.shape[0])
        dominant = dominant_labels(labels, targets)  # needs the whole batch: sample i's partner is N-1-i
        mass = targets.gather(1, dominant.unsqueeze(1)).squeeze(1)
        self.images = images[:n].detach().float().cpu()  # the one host copy (and sync) of the run
        self.labels = dominant[:n].cpu()
        self.weights = label_weights(mass[:n].float().cpu(), self.label_smoothing, targets.shape[1])
        self.batch_size = images.shape[0]

    @property
    def captured(self) -> bool:
        return self.images is not None

    def write(self, path: Path, loader, cfg: TrainConfig) -> Path:
        """The PNG of the captured tiles; `loader` (the training loader) has the recipe whose normalization is
        undone and the class names. A failed write is a one-line DaliTrainError naming the file."""
        mixing = (f"Mixup alpha {cfg.mixup_alpha}, CutMix alpha {cfg.cutmix_alpha}, mixed with probability "
                  f"{cfg.mix_prob}" if cfg.mix_prob > 0 and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0)
                  else "no mixing")
        title = (f"{cfg.dataset}, first training batch as the model sees it: {self.images.shape[0]} of "
                 f"{self.batch_size} images, augment {describe_augment(cfg.augment, loader.cfg)}, {mixing}. Caption: the "
                 "dominant label, with its weight in the target where the sample is mixed")
        try:
            write_grid(tile_rows(self.images, self.labels, self.weights, loader.cfg, loader.classes), path, title)
        except OSError as e:
            raise write_error(path, e) from None
        return path


def label_weights(mass: torch.Tensor, label_smoothing: float, num_classes: int) -> torch.Tensor:
    """A label's target mass with the smoothing taken out: 1 for an unmixed sample, the mixing weight (lambda or
    1 - lambda) for a mixed one. A sample mixed with one of its own class keeps weight 1: its target is all that
    class."""
    off = label_smoothing / num_classes  # what smoothing gives every class
    return ((mass - off) / (1.0 - label_smoothing)).clamp(0.0, 1.0)


def caption(name: str, weight: float) -> str:
    return name if weight > 0.995 else f"{name} {weight:.2f}"


def tile_rows(images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, cfg: AugmentConfig,
              classes: tuple[str, ...], per_row: int = PER_ROW) -> list[Row]:
    """The grid's rows: `per_row` tiles each, in batch order, captioned with the label and its weight."""
    tiles = to_uint8(images, cfg)
    captions = [caption(classes[int(k)], float(w)) for k, w in zip(labels, weights)]
    n = tiles.shape[0]
    return [Row(f"{i + 1}-{min(i + per_row, n)}", np.ascontiguousarray(tiles[i:i + per_row]),
                tuple(captions[i:i + per_row])) for i in range(0, n, per_row)]
