"""`dali-eval`, and what every tool that starts from a trained checkpoint shares (dali-prune, dali-quantize):
the checkpoint's config with data options overridden, its weights loaded into the model its config names, and
the validation loader of that config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dali_pipes import DataError, create_loader

from .checkpoint import checkpoint_config, load_checkpoint
from .config import TrainConfig
from .engine import evaluate
from .models import create_model
from .run import resolve_amp_dtype, resolve_device


def data_loader(cfg: TrainConfig, device: torch.device, split: str = "val", *, augment: str | None = None) -> Any:
    """`split` of the config's dataset. Synthetic sizes follow the run's (val is a fifth of --num-samples)."""
    n = cfg.num_samples or None
    if n and split == "val":
        n = max(1, n // 5)
    threads = cfg.num_threads or None  # None: create_loader's default, the cores shared among local ranks
    return create_loader(cfg.dataset, cfg.data_dir, split, batch_size=cfg.batch_size, backend=cfg.backend,
                         device=device, augment=augment or cfg.augment, seed=cfg.seed, num_threads=threads,
                         num_workers=threads, num_samples=n, dali_batch_size=cfg.dali_batch_size or None)


def model_from_checkpoint(state: dict[str, Any], path: Path, cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The model the config names, with the checkpoint's weights; a checkpoint of another shape is refused."""
    model = create_model(cfg.model, num_classes=num_classes)
    load_weights(model, state["model"], path, f"model {cfg.model} with {num_classes} classes")
    return model


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path, what: str) -> None:
    """`model.load_state_dict(weights)`; weights of another shape are a one-line DataError naming `path`."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not fit {what} ({str(e).splitlines()[0][:160]}); use a checkpoint of "
                        "that architecture trained on this dataset") from None


def evaluate_checkpoint(path: Path, *, dataset: str | None = None, data_dir: str | None = None,
                        backend: str | None = None, device: str = "auto", batch_size: int = 256,
                        num_samples: int | None = None, num_threads: int | None = None, tta: bool = False) -> dict:
    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path, dataset=dataset, data_dir=data_dir, backend=backend, device=device,
                            batch_size=batch_size, num_samples=num_samples,
                            num_threads=num_threads if num_threads is not None else 0)
    dev = resolve_device(cfg.device)
    loader = data_loader(cfg, dev)
    model = model_from_checkpoint(state, path, cfg, len(loader.classes)).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader, device=dev, amp_dtype=resolve_amp_dtype(cfg, dev),
                      channels_last=cfg.channels_last, tta=tta)
    return {"checkpoint": str(path), "epoch": int(state["epoch"]), "dataset": cfg.dataset, "tta": tta, **result}
