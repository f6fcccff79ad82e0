"""A run's state and its checkpoint: `TrainState` (where the run stands) and `Run` (what it trains with), each
saved and loaded in one place.

A checkpoint keeps TrainState's keys at its top level (``epoch``, ``batch``, ``step``, ``best_acc``, ...), beside the
model, optimizer and scaler states and each rank's streams; `Run.checkpoint` writes it, `Run.load_state` reads every
key of it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dali_pipes import ConfigError, DataError

from .. import distributed
from ..config import TrainConfig
from ..distributed import World
from ..recipe import StepContext
from ..choices import model_spec
from .checkpoint import save_checkpoint
from .lock import RunDirLock
from .progress import TrainState


@dataclass
class Run:
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    world: World
    amp_dtype: torch.dtype | None
    train_loader: Any
    val_loader: Any
    model: torch.nn.Module  # the module whose state is saved (never the compiled wrapper)
    ctx: StepContext
    state: TrainState = field(default_factory=TrainState)  # where the run stands: epoch, batch, step, best...
    lock: RunDirLock | None = None  # held from the creation of a new run directory (rank 0)
    loader_state: dict = field(default_factory=dict)  # the train loader's state at the start of the epoch in progress
    epoch_so_far: dict = field(default_factory=dict)  # this rank's figures of the epoch in progress (_epoch_totals)
    # metrics.csv's rows, one per finished epoch: the checkpoint carries them, so the history a resume continues is
    # the checkpoint's, whatever happened to metrics.csv (an output, rewritten from this)
    history: list[dict[str, int | float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines rank 0 logs at the run's start (--pretrained's head note)
    skipped: list[str] = field(default_factory=list)  # the data files the listing left out (outputs/skipped.py)
    damaged: list[str] = field(default_factory=list)  # JPEG files decoded with damage filled in (dali_pipes.damage)
    started: float = field(default_factory=time.time)  # when this process started the run (time.time())

    def rank_state(self) -> dict[str, Any]:
        """What differs between data-parallel ranks: their data shard's stream, their random streams, and their
        share of the interrupted epoch's figures."""
        return {
            "mixer": self.ctx.mixer.state_dict(),
            "loader": self.loader_state,
            "epoch_so_far": self.epoch_so_far,
            "torch_rng": torch.get_rng_state(),
            # the device this rank uses, not every visible one: a resume may see fewer GPUs
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def data_identity(self) -> dict[str, Any]:
        """The data this run trains and validates on (sources.fingerprint of each split)."""
        return {"train": self.train_loader.fingerprint(), "val": self.val_loader.fingerprint()}

    def _check_data(self, saved: Any) -> None:
        """Refuse a resume whose data is not the data the run started on (moved, replaced or edited since)."""
        now = self.data_identity()
        for split in ("train", "val"):
            was, found = (saved or {}).get(split) or {}, now[split]
            if was == found:
                continue
            what = (f"{was.get('samples')} samples then, {found['samples']} now"
                    if was.get("samples") != found["samples"] else
                    f"classes {was.get('classes')} then, {found['classes']} now"
                    if was.get("classes") != found["classes"] else "the same size and classes, other contents")
            raise DataError(f"{self.run_dir}: the {split} data at {self.cfg.data_dir} is not the data this run "
                            f"trained on ({what}); put the run's data back there, or start a new run")

    def load_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`checkpoint` (and of :meth:`rank_state` for this rank): every key is read back
        here. The LR is a pure function of the step (ctx.lr_at), so the step is all there is of the schedule."""
        if len(state["ranks"]) != self.world.size:
            raise ConfigError(f"the checkpoint was written by {len(state['ranks'])} process(es) and this run has "
                              f"{self.world.size}; resume with the same number (torchrun --nproc_per_node / "
                              "--nnodes)")
        mine = state["ranks"][self.world.rank]
        self._check_data(state.get("data"))
        try:
            self.model.load_state_dict(state["model"])
            self.ctx.optimizer.load_state_dict(state["optimizer"])
            self.ctx.scaler.load_state_dict(state["scaler"])
            self.ctx.mixer.load_state_dict(mine["mixer"])
            if self.ctx.ema is not None:  # a run with --ema-decay wrote "ema" into every checkpoint
                self.ctx.ema.load_state_dict(state["ema"])
            self.train_loader.load_state_dict(mine["loader"])
            history = [dict(row) for row in state["history"]]
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise DataError(f"{self.run_dir}: the checkpoint does not match its own config ({str(e)[:160]}); "
                            "it was edited or written by another version — start a new run") from None
        # A mid-epoch checkpoint holds the loader state of its epoch's start: the next save of this epoch needs it.
        self.loader_state = mine["loader"]
        self.epoch_so_far = dict(mine.get("epoch_so_far") or {})
        self.state = TrainState.from_dict(state)
        self.history = history
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda":
            if mine["cuda_rng"] is not None:  # None: the run was saved on the CPU
                torch.cuda.set_rng_state(mine["cuda_rng"], self.device)

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint; a collective under DDP (every rank's streams are gathered for rank 0 to save)."""
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "model_spec": model_spec(self.cfg.model, len(self.train_loader.classes)),
            "optimizer": self.ctx.optimizer.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            **({"ema": self.ctx.ema.state_dict()} if self.ctx.ema is not None else {}),
            **self.state.to_dict(),
            "wall_time_s": self.wall_time_s(),
            "data": self.data_identity(),
            # plain numbers only: a checkpoint is read with weights_only, which refuses numpy scalars
            "history": [{k: v if isinstance(v, int) else float(v) for k, v in row.items()} for row in self.history],
            "ranks": distributed.gather(self.rank_state(), self.world),
        }

    def wall_time_s(self) -> float:
        """Seconds of this run so far: the earlier processes' (as the checkpoint resumed from counted them) and
        this one's since it started."""
        return self.state.wall_time_s + time.time() - self.started

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.world.is_main:
            save_checkpoint(state, self.run_dir / name)
