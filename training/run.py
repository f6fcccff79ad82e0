"""`fit`: a whole run — loaders, model, schedule, epochs, checkpoints, early stopping, outputs, resume, signals.

Run directory (DESIGN.md): config.yaml, metrics.csv, last.pth, best.pth, curves.png, summary.json. last.pth is
rewritten atomically after every epoch and when a run is interrupted; an interrupted epoch resumes at the batch
where it stopped, with the data, augmentation and RNG streams of the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dali_pipes import ConfigError, DaliTrainError, DataError, create_loader
from dali_pipes.config import describe_augment
from dali_pipes.plan import derive_seed

from . import distributed, rundir
from .checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import World
from .engine import StepContext, evaluate, train_one_epoch
from .mixing import MixConfig, Mixer
from .models import create_model
from .monitor import ResourceMonitor
from .rundir import RunDirLock

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_images", "images_per_s",
                 "data_time_s",
                 "epoch_time_s", "nonfinite_losses", "skipped_steps", "max_mem_allocated_mib",
                 "max_mem_reserved_mib", "gpu_util_mean_pct", "gpu_mem_used_max_mib", "gpu_mem_process_max_mib",
                 "host_rss_peak_mib")


class Interrupted(DaliTrainError):
    """SIGINT/SIGTERM stopped the run after last.pth was written; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SecondSignal(KeyboardInterrupt):
    """A second SIGINT/SIGTERM while a StopSignal is installed: stop at once, without saving."""


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop polls after each step; a second one aborts at once."""

    note = "finishing the current step, then saving last.pth (send it again to abort without saving)"

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise SecondSignal
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: {self.note}", file=sys.stderr, flush=True)

    def is_set(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class FinalEvaluationSignal(StopSignal):
    """Around the final evaluation a first SIGINT/SIGTERM is noted, not obeyed: what is left is one validation
    pass and summary.json, and a run with all its epochs in last.pth but no summary.json only waits for them.
    A second signal aborts; `dali-train --resume` then does the final evaluation alone."""

    note = ("finishing the final evaluation and summary.json first (send it again to abort; dali-train --resume "
            "then finishes the run)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but no CUDA device is visible; use --device cpu (or auto)")
    return torch.device(name)


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None when AMP is off. On the CPU, autocast runs in bfloat16 (float16 CPU kernels are few and slow)."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16
    return torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 0 over `warmup_steps`, then cosine from 1 to 0 at `total_steps` (a pure function)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cuda_rng_entry(saved: Any, index: int) -> torch.Tensor | None:
    """The CUDA RNG state to restore on device `index` from a checkpoint's: one state (that of the rank's device),
    or, in older checkpoints, a list of every visible device's (entry `index`, else the first); None: nothing."""
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, (list, tuple)) and saved:
        return saved[index] if index < len(saved) else saved[0]
    return None


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
    start_epoch: int = 0
    step: int = 0  # optimizer steps taken (the LR schedule's position)
    skip_batches: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    lock: RunDirLock | None = None  # held from the creation of a new run directory (rank 0)
    loader_state: dict = field(default_factory=dict)  # the train loader's state at the start of the epoch in progress
    epoch_so_far: dict = field(default_factory=dict)  # this rank's figures of the epoch in progress (_epoch_totals)

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

    def load_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`state` (and of :meth:`rank_state` for this rank): every key is read back here."""
        mine = state["ranks"][self.world.rank]
        try:
            self.model.load_state_dict(state["model"])
            self.ctx.optimizer.load_state_dict(state["optimizer"])
            self.ctx.scaler.load_state_dict(state["scaler"])
            self.ctx.mixer.load_state_dict(mine["mixer"])
            self.train_loader.load_state_dict(mine["loader"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise DataError(f"{self.run_dir}: the checkpoint does not match its own config ({str(e)[:160]}); "
                            "it was edited or written by another version — start a new run") from None
        # A mid-epoch checkpoint holds the loader state of its epoch's start: the next save of this epoch needs it.
        self.loader_state = mine["loader"]
        self.epoch_so_far = dict(mine.get("epoch_so_far") or {})
        # The LR is a pure function of the step (ctx.lr_at), so the step is all there is to restore; checkpoints
        # that also hold a "scheduler" entry (a LambdaLR's state) are read the same way, that entry ignored.
        self.step = int(state["step"])
        self.start_epoch, self.skip_batches = int(state["epoch"]), int(state["batch"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.bad_epochs, self.stopped_early = int(state["bad_epochs"]), bool(state["stopped_early"])
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            cuda_rng = cuda_rng_entry(mine["cuda_rng"], index)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)

    def state(self, *, epoch: int, batch: int) -> dict[str, Any]:
        """The checkpoint; a collective under DDP (every rank's streams are gathered for rank 0 to save)."""
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.ctx.optimizer.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            "epoch": epoch,  # the epoch to run next (0-based); `batch` of it already trained
            "batch": batch,
            "step": self.step,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "ranks": distributed.gather(self.rank_state(), self.world),
        }

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.world.is_main:
            save_checkpoint(state, self.run_dir / name)


def _new_run_dir(cfg: TrainConfig, world: World) -> tuple[Path, RunDirLock | None]:
    """Rank 0 creates the run directory and locks it; every rank learns its path, or the reason it was refused."""
    run_dir, lock, error = None, None, None
    if world.is_main:
        run_dir = Path(cfg.output) if cfg.output else Path("runs") / (
            time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.model}-{cfg.dataset}")
        try:
            rundir.classify(run_dir)  # a file in the way is refused before anything is created
            rundir.make(run_dir)
            lock = RunDirLock(run_dir).acquire()  # before looking inside: a run starting there now is seen
            kind = rundir.classify(run_dir)
            if kind == rundir.RUN:
                raise ConfigError(f"--output {run_dir} already holds a run; continue it with --resume {run_dir}, "
                                  "or choose another --output")
            if kind == rundir.UNSTARTED:
                raise ConfigError(f"--output {run_dir} holds a run stopped before its first checkpoint "
                                  f"(config.yaml, no last.pth); start it over from its saved config with "
                                  f"--resume {run_dir}, or choose another --output")
            if kind == rundir.LEFTOVERS:
                raise ConfigError(f"--output {run_dir} holds leftovers of a dali-train run ({rundir.listing(run_dir)})"
                                  " but no last.pth or config.yaml to resume or restart it from; move them away, or "
                                  "choose another --output")
            if kind == rundir.FOREIGN:
                raise ConfigError(f"--output {run_dir} is not a dali-train run and not empty (it holds "
                                  f"{rundir.listing(run_dir)}); choose another --output, or an empty folder")
        except (DaliTrainError, OSError) as e:  # every rank raises it, not rank 0 alone (the others would wait)
            if lock is not None:
                lock.release()
            error = e if isinstance(e, DaliTrainError) else ConfigError(
                f"--output {run_dir}: cannot use it ({e.strerror or e}); give a folder this user may write")
    run_dir, error = distributed.broadcast((run_dir, error), world)
    if error:
        raise error
    return Path(run_dir), lock


def _loaders(cfg: TrainConfig, device: torch.device, world: World) -> tuple[Any, Any]:
    """This rank's shards: training shards of equal size (ranks step in lockstep), validation every sample once."""
    threads = cfg.num_threads or None  # None: create_loader's default, the cores shared among local ranks
    common = dict(dataset=cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, backend=cfg.backend,
                  device=device, augment=cfg.augment, seed=cfg.seed, num_threads=threads, num_workers=threads,
                  dali_batch_size=cfg.dali_batch_size or None,
                  shard_id=world.rank, num_shards=world.size)
    train_n = cfg.num_samples or None
    val_n = max(1, cfg.num_samples // 5) if cfg.num_samples else None
    if world.enabled and not world.is_main:  # let rank 0 download CIFAR alone before the others read it
        distributed.any_rank(False, world, device)
    try:
        train = create_loader(split="train", num_samples=train_n, even_shards=world.enabled, **common)
    finally:
        if world.enabled and world.is_main:
            distributed.any_rank(False, world, device)
    val = create_loader(split="val", num_samples=val_n, **common)
    return train, val


def build_run(cfg: TrainConfig, *, resume: dict | None = None, run_dir: Path | None = None,
              prepare_model: Callable[[torch.nn.Module], None] | None = None) -> Run:
    """Loaders, model, optimizer, schedule, mixer for `cfg` (and the state of `resume`, when given).

    `prepare_model` may change the model in place before the optimizer and DDP see its parameters (dali-prune
    puts pruning masks on it there); a resumed state is loaded after it."""
    world, device = distributed.setup(resolve_device(cfg.device))
    if resume is not None and len(resume["ranks"]) != world.size:
        raise ConfigError(f"the checkpoint was written by {len(resume['ranks'])} process(es) and this run has "
                          f"{world.size}; resume with the same number (torchrun --nproc_per_node / --nnodes)")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train_loader, val_loader = _loaders(cfg, device, world)
    model = create_model(cfg.model, num_classes=len(train_loader.classes), drop_path=cfg.drop_path).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if prepare_model is not None:
        prepare_model(model)
    if world.enabled and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    torch.manual_seed(derive_seed(cfg.seed, world.rank, 1))  # drop path: a stream of its own per rank
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    # A run shorter than twice its warmup (a smoke test) warms up over half of it at most.
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 2)

    def lr_at(step: int) -> float:
        return cfg.lr * lr_factor(step, total_steps=total, warmup_steps=warmup)

    amp_dtype = resolve_amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    mixer = Mixer(MixConfig(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                            switch_prob=cfg.switch_prob, mode=cfg.mix_mode, label_smoothing=cfg.label_smoothing,
                            num_classes=len(train_loader.classes)),
                  generator=torch.Generator().manual_seed(derive_seed(cfg.seed, world.rank, 2)))
    net = model
    if world.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if cfg.compile:
        net = torch.compile(net)
    ctx = StepContext(net, optimizer, lr_at, scaler, mixer, device, amp_dtype, cfg.channels_last,
                      clip_grad=cfg.clip_grad)
    lock = None
    if run_dir is None:
        run_dir, lock = _new_run_dir(cfg, world)
    run = Run(cfg, run_dir, device, world, amp_dtype, train_loader, val_loader, model, ctx, lock=lock)
    if resume is not None:
        run.load_state(resume)
    return run


def write_rows(path: Path, rows: list[dict], fields: tuple[str, ...] = METRIC_FIELDS) -> None:
    """A CSV of `rows` (the `fields` columns), replaced atomically: readers see the old file or the new one."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()} for row in
                csv.DictReader(f)]


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train (mixed targets)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], label="train (dominant label)")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], label="val")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _epoch_line(cfg: TrainConfig, row: dict) -> str:
    parts = [f"epoch {int(row['epoch'])}/{cfg.epochs}", f"lr {row['lr']:.4f}",
             f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% (dominant label)",
             f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%",
             f"{row['images_per_s']:,.0f} img/s, data wait {row['data_time_s']:.1f}s, epoch {row['epoch_time_s']:.1f}s"]
    if "max_mem_allocated_mib" in row:
        parts.append(f"cuda peak alloc {row['max_mem_allocated_mib']:.0f} MiB reserved "
                     f"{row['max_mem_reserved_mib']:.0f} MiB")
    if "gpu_util_mean_pct" in row:
        parts.append(f"gpu {row['gpu_util_mean_pct']:.0f}%")
    if "gpu_mem_used_max_mib" in row:  # the whole device, every process
        parts.append(f"device used {row['gpu_mem_used_max_mib']:.0f} MiB")
    if "gpu_mem_process_max_mib" in row:  # this process: CUDA context, torch and DALI
        parts.append(f"process {row['gpu_mem_process_max_mib']:.0f} MiB")
    parts.append(f"host rss {row['host_rss_peak_mib']:.0f} MiB")
    if row["nonfinite_losses"] or row["skipped_steps"]:
        parts.append(f"non-finite losses {row['nonfinite_losses']}, skipped steps {row['skipped_steps']}")
    return " | ".join(parts)


def _progress(total: int, epoch: int, cfg: TrainConfig):
    """A tqdm bar on a terminal; nothing otherwise (the epoch line is printed either way)."""
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True)

    def update(done: int, stats: dict[str, float]) -> None:
        bar.n = done
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{100 * stats['acc']:.1f}%")

    return bar, update


def _stop_poll(stop: StopSignal, run: Run, every: int = 10):
    """The per-step "should we stop?" check. Under DDP the ranks must agree on the step they stop after, so they
    vote every `every` steps (a tiny all-reduce) instead of each reading its own signal flag."""
    calls = 0

    def poll() -> bool:
        nonlocal calls
        calls += 1
        if not run.world.enabled:
            return stop.is_set()
        return calls % every == 0 and distributed.any_rank(stop.is_set(), run.world, run.device)

    return poll


def _epoch_totals(before: dict, stats: dict, resources: dict[str, float]) -> dict:
    """This rank's figures for the epoch so far: `before` (its part trained before an interruption, or {} at the
    epoch's start) plus `stats` of the part just trained. Sums, not means, so parts add up to the straight epoch."""
    n = stats["images"]
    out = dict(before)
    out["images"] = before.get("images", 0) + n
    out["loss_sum"] = before.get("loss_sum", 0.0) + stats["loss_sum"]
    out["correct"] = before.get("correct", 0) + stats["correct"]
    out["steps"] = before.get("steps", before.get("completed", 0)) + stats["steps"]  # "completed": older checkpoints
    out.pop("completed", None)
    for key in ("nonfinite_losses", "skipped_steps", "data_time_s", "epoch_time_s"):
        out[key] = before.get(key, 0) + stats[key]
    for key, value in resources.items():
        if key.endswith("_mean_pct"):  # a mean over time: weighted by each part's duration
            t0, t1 = before.get("epoch_time_s", 0.0), stats["epoch_time_s"]
            out[key] = (before.get(key, 0.0) * t0 + value * t1) / max(t0 + t1, 1e-9) if key in before else value
        else:  # peaks
            out[key] = max(before.get(key, value), value)
    return out


def _reduced(totals: dict, val: dict, run: Run) -> dict:
    """Epoch figures summed over ranks: every training image and every validation sample counted once."""
    n, vn = totals["images"], val["val_images"]
    keys = ("train_loss", "train_acc", "nonfinite_losses", "skipped_steps", "val_loss", "val_acc")
    sums = distributed.all_sum([totals["loss_sum"], totals["correct"], totals["nonfinite_losses"],
                                totals["skipped_steps"], val["val_loss"] * vn, val["val_acc"] * vn, n, vn,
                                totals["steps"]], run.world, run.device)
    total_n, total_vn = max(sums[6], 1), max(sums[7], 1)
    out = dict(zip(keys, (sums[0] / total_n, sums[1] / total_n, int(sums[2]), int(sums[3]), sums[4] / total_vn,
                          sums[5] / total_vn)))
    out["train_images"] = int(sums[6])
    out["images_per_s"] = sums[6] / totals["epoch_time_s"] if totals["epoch_time_s"] > 0 else math.nan
    out["all_steps_nonfinite"] = sums[2] >= sums[8] > 0
    return out


def train_epochs(run: Run, stop: StopSignal, log=print) -> None:
    cfg, metrics_path, main = run.cfg, run.run_dir / "metrics.csv", run.world.is_main
    log = log if main else (lambda *_: None)
    rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= run.start_epoch] if main else []
    monitor = ResourceMonitor(run.device)
    poll = _stop_poll(stop, run)
    for epoch in range(run.start_epoch, cfg.epochs):
        run.train_loader.set_epoch(epoch)
        if run.skip_batches == 0:
            run.loader_state = run.train_loader.state_dict()
            run.epoch_so_far = {"lr": run.ctx.lr_at(run.step)}  # the LR the epoch starts at
        else:  # resuming inside this epoch: loader state and figures so far are the checkpoint's (Run.load_state)
            log(f"resuming epoch {epoch + 1} at batch {run.skip_batches + 1}/{len(run.train_loader)}")
        bar, update = _progress(len(run.train_loader), epoch + 1, cfg) if main else (None, None)
        with monitor:
            stats = train_one_epoch(run.ctx, run.train_loader, step=run.step, skip=run.skip_batches,
                                    should_stop=poll, on_progress=update)
        run.step += stats["steps"]
        if bar is not None:
            bar.close()
        totals = _epoch_totals(run.epoch_so_far, stats, monitor.figures())
        if stats["position"] < len(run.train_loader):
            run.epoch_so_far = totals
            run.save("last.pth", run.state(epoch=epoch, batch=stats["position"]))
            raise Interrupted(f"stopped in epoch {epoch + 1} after batch {stats['position']}; last.pth saved. "
                              f"Resume with: dali-train --resume {run.run_dir}", 128 + (stop.signum or 2))
        run.skip_batches = 0
        distributed.sync_buffers(run.model, run.world)
        val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                       channels_last=cfg.channels_last)
        figures = _reduced(totals, val, run)
        if figures.pop("all_steps_nonfinite"):
            raise DaliTrainError(f"training diverged in epoch {epoch + 1} (every loss was inf/nan); lower --lr or "
                                 "use --amp-dtype bfloat16")
        lr = totals.get("lr", run.ctx.optimizer.param_groups[0]["lr"])  # absent in checkpoints without figures
        row = {k: v for k, v in totals.items() if k not in ("images", "loss_sum", "correct", "steps")}
        row.update(val, epoch=epoch + 1, lr=lr, **figures)
        rows.append(row)
        log(_epoch_line(cfg, row))
        improved = row["val_acc"] > run.best_acc  # the same reduced value on every rank: the same decision
        if improved:
            run.best_acc, run.best_epoch, run.bad_epochs = row["val_acc"], epoch + 1, 0
        else:
            run.bad_epochs += 1
        run.stopped_early = cfg.patience > 0 and run.bad_epochs >= cfg.patience
        run.loader_state = run.train_loader.state_dict()
        run.epoch_so_far = {}
        state = run.state(epoch=epoch + 1, batch=0)
        if main:  # metrics before last.pth: a crash between the two must not leave an epoch without its row
            write_rows(metrics_path, rows)
            plot_curves(rows, run.run_dir / "curves.png")
        if improved:
            run.save("best.pth", state)
        run.save("last.pth", state)
        if run.stopped_early:
            log(f"early stopping: val accuracy has not improved for {cfg.patience} epochs "
                f"(best {100 * run.best_acc:.2f}% at epoch {run.best_epoch})")
            break
        if distributed.any_rank(stop.is_set(), run.world, run.device):
            raise Interrupted(f"stopped after epoch {epoch + 1}; last.pth saved. Resume with: dali-train --resume "
                              f"{run.run_dir}", 128 + (stop.signum or 2))


def finish(run: Run, started: float, log=print) -> dict:
    """Reload best.pth (rank 0 reads it, every rank gets its weights), evaluate it, write summary.json."""
    main = run.world.is_main
    best = distributed.broadcast(load_checkpoint(run.run_dir / "best.pth")["model"] if main else None, run.world)
    run.model.load_state_dict(best)
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    loss_sum, correct, seen = distributed.all_sum([val["val_loss"] * val["val_images"],
                                                   val["val_acc"] * val["val_images"], val["val_images"]],
                                                  run.world, run.device)
    val = {"val_loss": loss_sum / max(seen, 1), "val_acc": correct / max(seen, 1)}
    rows = read_metrics(run.run_dir / "metrics.csv") if main else []
    # One number per rank that any difference in weights would change: data-parallel ranks must agree exactly.
    checksums = distributed.gather(sum(float(p.detach().double().sum()) for p in run.model.parameters()),
                                   run.world)
    summary = {
        "epochs_run": int(rows[-1]["epoch"]) if rows else 0,
        "epochs_planned": run.cfg.epochs,
        "stopped_early": run.stopped_early,
        "final_epoch_val_acc": rows[-1]["val_acc"] if rows else None,
        "best_val_acc": run.best_acc,
        "best_epoch": run.best_epoch,
        "best_reloaded_val_acc": val["val_acc"],
        "best_reloaded_val_loss": val["val_loss"],
        "world_size": run.world.size,
        "weights_identical_across_ranks": len(set(checksums)) == 1,
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "amp_dtype": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else None,
        "backend": run.cfg.backend,
        "wall_time_s": time.time() - started,
        "torch": torch.__version__,
    }
    if not main:
        return summary
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"best model (epoch {run.best_epoch}) reloaded: val acc {100 * val['val_acc']:.2f}% — "
        f"run directory {run.run_dir}")
    return summary


def _train(cfg: TrainConfig, *, resume_state: dict | None, run_dir: Path | None, log, train: bool = True,
           stop: StopSignal | None = None, build: Callable[..., Run] = build_run) -> dict:
    started = time.time()
    run = None
    try:
        run = build(cfg, resume=resume_state, run_dir=run_dir)
        if run.world.is_main:
            (run.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if train:  # summary.json marks a finished run: one from before these epochs would be stale
                (run.run_dir / "summary.json").unlink(missing_ok=True)
            _announce(run, log)
        with (stop if stop is not None else StopSignal()) as flag:
            if train:
                train_epochs(run, flag, log)
            with FinalEvaluationSignal() as final:
                try:
                    summary = finish(run, started, log)
                except KeyboardInterrupt:
                    raise Interrupted(f"aborted in the final evaluation; last.pth and best.pth hold the trained run, "
                                      f"summary.json is not written. Finish it with: dali-train --resume "
                                      f"{run.run_dir}", 128 + (final.signum or signal.SIGINT)) from None
            if final.signum is not None:
                log(f"{signal.Signals(final.signum).name} arrived during the final evaluation, which completed: "
                    "the run is finished")
            return summary
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        distributed.cleanup()


def fit(cfg: TrainConfig, *, log=print, stop: StopSignal | None = None,
        build: Callable[..., Run] = build_run) -> dict:
    """Start a new run from `cfg` and train it to the end (or to early stopping).

    `stop` is polled after every step (default: a StopSignal on SIGINT/SIGTERM); `build` makes the Run from the
    config (build_run; a caller may wrap it, to watch the run's loaders for instance)."""
    return _train(cfg, resume_state=None, run_dir=None, log=log, stop=stop, build=build)


def find_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    return path / "last.pth" if path.is_dir() else path


def _read_resume_state(ckpt_path: Path, epochs: int | None) -> tuple[TrainConfig, dict, bool]:
    """The run's config and checkpoint, and whether only the final evaluation is left to do."""
    state = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(state, ckpt_path)
    if "ranks" not in state:
        raise DataError(f"{ckpt_path}: not a resumable dali-train checkpoint (no per-rank state); start a new run")
    if epochs is not None:
        if epochs < int(state["epoch"]) + (1 if state.get("batch") else 0):
            raise ConfigError(f"--epochs={epochs} is invalid: the run already trained {state['epoch']} epochs")
        cfg = cfg.replace(epochs=epochs)
    done = state.get("stopped_early") or (int(state["epoch"]) >= cfg.epochs and not state.get("batch"))
    if done and not _summary_matches(ckpt_path.parent / "summary.json", state):
        return cfg, state, True  # interrupted during the final evaluation: finish it
    if done:
        why = "stopped early" if state.get("stopped_early") else f"finished its {cfg.epochs} epochs"
        raise ConfigError(f"{ckpt_path}: this run {why}; pass --epochs larger than {state['epoch']} "
                          "to extend it, or start a new run")
    return cfg, state, False


def _summary_matches(path: Path, state: dict) -> bool:
    """Whether summary.json exists and reports the epochs `state` holds (one from a shorter run is stale)."""
    try:
        summary = json.loads(path.read_text())
        return int(summary["epochs_run"]) == int(state["epoch"])
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _saved_config(run_dir: Path, epochs: int | None) -> TrainConfig:
    """The config.yaml of a run stopped before its first checkpoint (with --epochs applied, when given)."""
    path = run_dir / "config.yaml"
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise DataError(f"{path}: unreadable ({reason}); start a new run with another --output") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: not a dali-train config (a mapping of options); start a new run with another "
                        "--output")
    cfg = TrainConfig.from_dict(values, source=str(path))
    return cfg if epochs is None else cfg.replace(epochs=epochs)


def resume(path: str | Path, *, epochs: int | None = None, log=print, stop: StopSignal | None = None,
           build: Callable[..., Run] = build_run) -> dict:
    """Continue a run in place from its last.pth (or a given checkpoint), with its saved config; `stop` and
    `build` as for :func:`fit`. A run directory with config.yaml but no last.pth (stopped before its first
    checkpoint) starts over from that config.

    Under torchrun, every rank reads the checkpoint (the run directory must be visible to all of them); rank 0
    alone holds the run directory's lock."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent if path.is_file() else None
    lock = RunDirLock(run_dir).acquire() if run_dir is not None and distributed.launched_rank() == 0 else None
    try:
        if path.is_dir() and not (path / "last.pth").exists():
            kind = rundir.classify(path, "--resume")
            if kind != rundir.UNSTARTED:
                held = ", it is empty" if kind == rundir.EMPTY else f"; it holds {rundir.listing(path)}"
                raise DataError(f"--resume {path}: not a dali-train run (no last.pth or config.yaml{held}); pass a "
                                "run directory or a .pth file written by dali-train")
            cfg = _saved_config(path, epochs)
            log(f"{path}: stopped before its first checkpoint (config.yaml, no last.pth); starting it over from "
                "its config.yaml")
            if distributed.launched_rank() == 0:
                rundir.clear_outputs(path, keep=("config.yaml",))
            return _train(cfg, resume_state=None, run_dir=path, log=log, stop=stop, build=build)
        ckpt_path = find_checkpoint(path)
        cfg, state, finish_only = _read_resume_state(ckpt_path, epochs)
        return _train(cfg, resume_state=state, run_dir=ckpt_path.parent, log=log, train=not finish_only,
                      stop=stop, build=build)
    finally:
        if lock is not None:
            lock.release()


def _announce(run: Run, log) -> None:
    cfg = run.cfg
    where = (f"CUDA device {torch.cuda.get_device_name(run.device)}" if run.device.type == "cuda" else
             "the CPU (no CUDA device; DALI runs its CPU operators)" if cfg.backend == "dali" else "the CPU")
    amp = f"AMP {str(run.amp_dtype).replace('torch.', '')}" if run.amp_dtype else "FP32"
    params = sum(p.numel() for p in run.model.parameters())
    log(f"dali-train: {cfg.model} ({params / 1e6:.2f}M params) on {cfg.dataset}, {cfg.epochs} epochs, training on "
        f"{where}, {amp}, backend {cfg.backend}, augment {describe_augment(cfg.augment)}, "
        f"run directory {run.run_dir}")
    if run.device.type == "cpu" and cfg.amp and cfg.amp_dtype == "float16":
        log("note: autocast on the CPU uses bfloat16 (float16 is for CUDA)")
