"""`TrainState`: where a run stands, the progress keys at a checkpoint's top level, parsed in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    epoch: int = 0  # the epoch to run next (0-based)
    batch: int = 0  # batches of `epoch` already trained (a mid-epoch checkpoint resumes after them)
    step: int = 0  # optimizer steps taken: the LR schedule's position
    best_acc: float = -1.0  # best validation accuracy so far (-1: no epoch finished yet)
    best_epoch: int = 0  # 1-based epoch of best_acc
    bad_epochs: int = 0  # epochs in a row without a better val accuracy (early stopping counts them)
    stopped_early: bool = False
    best_weights: str = "model"  # which weights of best.pth scored best_acc: "model" (raw) or "ema"
    wall_time_s: float = 0.0  # seconds the processes of this run took up to this checkpoint (resumes summed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        """The progress keys of a checkpoint (any other key is ignored; a missing optional one takes its default)."""
        types = {"epoch": int, "batch": int, "step": int, "best_acc": float, "best_epoch": int, "bad_epochs": int,
                 "stopped_early": bool, "best_weights": str, "wall_time_s": float}
        return cls(**{f.name: types[f.name](state[f.name]) for f in fields(cls) if state.get(f.name) is not None})

    def is_finished(self, epochs: int) -> bool:
        """Whether nothing is left to train for a run of `epochs` epochs: it stopped early, or it trained them all."""
        return self.stopped_early or (self.epoch >= epochs and self.batch == 0)

    def record(self, val_acc: float, epoch: int, patience: int, weights: str = "model") -> bool:
        """Count finished epoch `epoch` (1-based) with `val_acc`, scored by `weights` ("model" or "ema"); returns
        whether it is the best so far."""
        improved = val_acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.bad_epochs, self.best_weights = val_acc, epoch, 0, weights
        else:
            self.bad_epochs += 1
        self.stopped_early = patience > 0 and self.bad_epochs >= patience
        self.epoch, self.batch = epoch, 0
        return improved
