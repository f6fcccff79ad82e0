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
    val = ValModel.from_checkpoint(state, path, cfg, weights=weights)
    result = val.evaluate(tta=tta)
    # the precision the figures are measured in (the run's autocast, as its summary.json): dali-quantize's float32
    # figure for the same checkpoint may differ by a few images near a decision boundary
    amp = str(val.amp_dtype).replace("torch.", "") if val.amp_dtype is not None else None
    return {"checkpoint": str(path), "epoch": TrainState.from_dict(state).epoch, "dataset": cfg.dataset, "tta": tta,
            "weights": weights, "amp_dtype": amp, **result}
