"""`dali-eval`: a checkpoint's validation accuracy and loss, with the data options overridden where given."""

from __future__ import annotations

from pathlib import Path

from ..loop import TrainState, chosen_weights
from .checkpoint_tools import ValModel, read_checkpoint


def evaluate_checkpoint(path: Path, *, dataset: str | None = None, data_dir: str | None = None,
                        backend: str | None = None, device: str = "auto", batch_size: int = 256,
                        num_samples: int | None = None, num_threads: int | None = None, tta: bool = False,
                        weights: str | None = None) -> dict:
    """`weights`: "model" or "ema"; None: the ones that scored the run's best accuracy in best.pth, else "model"."""
    state, cfg = read_checkpoint(path, dataset=dataset, data_dir=data_dir, backend=backend, device=device,
                                 batch_size=batch_size, num_samples=num_samples,
                                 num_threads=num_threads if num_threads is not None else 0)
    weights = chosen_weights(state, path, weights)
    result = ValModel.from_checkpoint(state, path, cfg, weights=weights).evaluate(tta=tta)
    return {"checkpoint": str(path), "epoch": TrainState.from_dict(state).epoch, "dataset": cfg.dataset, "tta": tta,
            "weights": weights, **result}
