"""`dali-eval`: accuracy and loss of a checkpoint on the validation split (optionally with flip TTA)."""

from __future__ import annotations

from pathlib import Path

import torch

from dali_pipes import DataError, create_loader
from dali_pipes.loader import cpu_count

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .engine import evaluate
from .models import create_model
from .run import resolve_amp_dtype, resolve_device


def evaluate_checkpoint(path: Path, *, dataset: str | None = None, data_dir: str | None = None,
                        backend: str | None = None, device: str = "auto", batch_size: int = 256,
                        num_samples: int | None = None, tta: bool = False) -> dict:
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"], source=str(path))
    cfg = cfg.replace(dataset=dataset or cfg.dataset, data_dir=data_dir or cfg.data_dir,
                      backend=backend or cfg.backend, device=device, batch_size=batch_size,
                      num_samples=cfg.num_samples if num_samples is None else num_samples)
    dev = resolve_device(cfg.device)
    loader = create_loader(cfg.dataset, cfg.data_dir, "val", batch_size=cfg.batch_size, backend=cfg.backend,
                           device=dev, augment=cfg.augment, num_threads=cpu_count(), num_workers=cpu_count(),
                           num_samples=max(1, cfg.num_samples // 5) if cfg.num_samples else None)
    model = create_model(cfg.model, num_classes=len(loader.classes)).to(dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not fit model {cfg.model} with {len(loader.classes)} classes "
                        f"({str(e).splitlines()[0][:160]}); evaluate it on the dataset it was trained on") from None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader, device=dev, amp_dtype=resolve_amp_dtype(cfg, dev),
                      channels_last=cfg.channels_last, tta=tta)
    return {"checkpoint": str(path), "epoch": int(state["epoch"]), "dataset": cfg.dataset, "tta": tta, **result}
