"""`dali-eval`: a checkpoint's validation accuracy and loss, with the data options overridden where given."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import checkpoint_config, chosen_weights, load_checkpoint, model_from_checkpoint
from .engine import evaluate
from .factory import data_loader, resolve_amp_dtype, resolve_device


def evaluate_checkpoint(path: Path, *, dataset: str | None = None, data_dir: str | None = None,
                        backend: str | None = None, device: str = "auto", batch_size: int = 256,
                        num_samples: int | None = None, num_threads: int | None = None, tta: bool = False,
                        weights: str | None = None) -> dict:
    """`weights`: "model" or "ema"; None: the ones that scored the run's best accuracy in best.pth, else "model"."""
    state = load_checkpoint(path)
    weights = chosen_weights(state, path, weights)
    cfg = checkpoint_config(state, path, dataset=dataset, data_dir=data_dir, backend=backend, device=device,
                            batch_size=batch_size, num_samples=num_samples,
                            num_threads=num_threads if num_threads is not None else 0)
    dev = resolve_device(cfg.device)
    loader = data_loader(cfg, dev)
    model = model_from_checkpoint(state, path, cfg, len(loader.classes), weights=weights).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader, device=dev, amp_dtype=resolve_amp_dtype(cfg, dev),
                      channels_last=cfg.channels_last, tta=tta)
    return {"checkpoint": str(path), "epoch": int(state["epoch"]), "dataset": cfg.dataset, "tta": tta,
            "weights": weights, **result}
