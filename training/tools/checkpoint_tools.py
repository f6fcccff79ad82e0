"""What the tools that start from a checkpoint share (dali-eval, dali-prune, dali-quantize): their refusals, and a
checkpoint's model with the validation loader that measures it, built through training.factory.

Refusals come before any work and say what to do: these tools run in one process, and write only into an
--output that is new (or, for dali-prune, one of its own unfinished runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipes import ConfigError, DataError

from ..config import TrainConfig
from ..loop import checkpoint_config, load_checkpoint, model_from_checkpoint, nonfinite_tensors
from ..recipe import build_model, data_loader, evaluate, resolve_amp_dtype, resolve_device


def refuse_distributed(tool: str) -> None:
    """A ConfigError under torchrun: pruning and quantizing a checkpoint is one process's work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{tool} runs in one process; start it without torchrun")


def is_occupied(output: Path) -> bool:
    """`output` is a file, or a directory with something in it."""
    return output.exists() and (not output.is_dir() or any(output.iterdir()))


def refuse_occupied(output: Path, what: str) -> None:
    """A ConfigError naming --output when it is occupied; `what` says why that matters ("is not empty")."""
    if is_occupied(output):
        raise ConfigError(f"--output {output} already exists and {what}; choose another --output")


def read_checkpoint(path: Path, **overrides: Any) -> tuple[dict[str, Any], TrainConfig]:
    """The checkpoint's state and its run config with every override that is not None applied; a missing, corrupt
    or foreign file, or a bad override, is a one-line error naming it."""
    state = load_checkpoint(path)
    return state, checkpoint_config(state, path, **overrides)


def finite_weights(state: dict[str, Any], path: Path, weights: str) -> dict[str, Any]:
    """``state[weights]``, refused with a one-line DataError naming `path` when a float tensor (weights or norm
    statistics) holds nan or inf.

    Such a model answers every image with nan logits: dali-eval would report chance accuracy and a nan loss as if
    measured, dali-quantize's observers fail on nan ranges, and dali-prune cannot rank nan magnitudes nor fine-tune
    them back (nan spreads through every forward pass). So all three refuse and point to an earlier checkpoint."""
    tensors = state[weights]
    bad = nonfinite_tensors(tensors)
    if bad:
        label = "EMA weights" if weights == "ema" else "weights"
        raise DataError(f"{path}: its {label} are not finite (nan/inf in {len(bad)} of {len(tensors)} tensors, e.g. "
                        f"{bad[0]}): the run diverged before this checkpoint was written; use a checkpoint from "
                        "before (its best.pth, or an earlier run)")
    return tensors


@dataclass
class ValModel:
    """A model, the validation loader that measures it and how it is evaluated: what dali-eval, dali-quantize and
    dali-prune's first and last steps need (no optimizer, no training loader, no run directory)."""

    cfg: TrainConfig
    model: nn.Module
    val_loader: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def build(cls, cfg: TrainConfig, prepare: Callable[[nn.Module], None]) -> ValModel:
        """The model dali-train builds for `cfg` (factory.build_model: the config's device, memory format, input
        side of the validation loader), changed in place by `prepare` (dali-prune: masks, then weights)."""
        device = resolve_device(cfg.device)
        val_loader = data_loader(cfg, device, "val")
        model = build_model(cfg, len(val_loader.classes), device, prepare=prepare,
                            image_size=val_loader.image_size[0])
        return cls(cfg, model, val_loader, device, resolve_amp_dtype(cfg, device), cfg.channels_last)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], path: Path, cfg: TrainConfig, *, weights: str = "model",
                        float32: bool = False) -> ValModel:
        """The checkpoint's model on the config's device with its `weights` ("model" or "ema"). `float32`:
        evaluated without autocast, in the default memory format (dali-quantize compares its int8 model with
        exactly that)."""
        finite_weights(state, path, weights)
        device = resolve_device(cfg.device)
        val_loader = data_loader(cfg, device, "val")
        model = model_from_checkpoint(state, path, cfg, len(val_loader.classes), weights=weights,
                                      image_size=val_loader.image_size[0]).to(device)
        channels_last = cfg.channels_last and not float32
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        amp_dtype = None if float32 else resolve_amp_dtype(cfg, device)
        return cls(cfg, model.eval(), val_loader, device, amp_dtype, channels_last)

    @property
    def num_classes(self) -> int:
        return len(self.val_loader.classes)

    @property
    def image_size(self) -> int:
        return self.val_loader.image_size[0]

    def evaluate(self, model: nn.Module | None = None, *, tta: bool = False) -> dict[str, Any]:
        """Validation loss and accuracy of `model` (default: this one) over every validation image once."""
        return evaluate(self.model if model is None else model, self.val_loader, device=self.device,
                        amp_dtype=self.amp_dtype, channels_last=self.channels_last, tta=tta)
