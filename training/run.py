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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dali_pipes import ConfigError, DataError, DaliTrainError, create_loader
from dali_pipes.loader import cpu_count

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .engine import StepContext, evaluate, train_one_epoch
from .mixing import MixConfig, Mixer
from .models import create_model
from .monitor import ResourceMonitor

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "data_time_s",
                 "epoch_time_s", "nonfinite_losses", "skipped_steps", "max_mem_allocated_mib",
                 "max_mem_reserved_mib", "gpu_util_mean_pct", "gpu_mem_used_max_mib", "host_rss_peak_mib")


class Interrupted(DaliTrainError):
    """SIGINT/SIGTERM stopped the run after last.pth was written; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop polls after each step; a second one aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step, then saving last.pth "
              "(send it again to abort without saving)", file=sys.stderr, flush=True)

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


@dataclass
class Run:
    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    train_loader: Any
    val_loader: Any
    model: torch.nn.Module  # the module whose state is saved (never the compiled wrapper)
    ctx: StepContext
    start_epoch: int = 0
    skip_batches: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    loader_state: dict = field(default_factory=dict)

    def state(self, *, epoch: int, batch: int) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.ctx.optimizer.state_dict(),
            "scheduler": self.ctx.scheduler.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            "mixer": self.ctx.mixer.state_dict(),
            "epoch": epoch,  # the epoch to run next (0-based); `batch` of it already trained
            "batch": batch,
            "step": self.ctx.scheduler.last_epoch,
            "loader": self.loader_state,  # the train loader's state at the start of `epoch`
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }


def _new_run_dir(cfg: TrainConfig) -> Path:
    run_dir = Path(cfg.output) if cfg.output else Path("runs") / (
        time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.model}-{cfg.dataset}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"--output {run_dir} already holds a run; choose another --output, or continue it with "
                          f"--resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _loaders(cfg: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    threads = cfg.num_threads or cpu_count()
    common = dict(dataset=cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, backend=cfg.backend,
                  device=device, augment=cfg.augment, seed=cfg.seed, num_threads=threads, num_workers=threads)
    train_n = cfg.num_samples or None
    val_n = max(1, cfg.num_samples // 5) if cfg.num_samples else None
    train = create_loader(split="train", num_samples=train_n, **common)
    val = create_loader(split="val", num_samples=val_n, **common)
    return train, val


def build_run(cfg: TrainConfig, *, resume: dict | None = None, run_dir: Path | None = None) -> Run:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_loader, val_loader = _loaders(cfg, device)
    model = create_model(cfg.model, num_classes=len(train_loader.classes), drop_path=cfg.drop_path).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    # A short run (a smoke test with the default 5 warmup epochs) warms up over half of it at most.
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=total, warmup_steps=warmup))
    amp_dtype = resolve_amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    mixer = Mixer(MixConfig(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                            switch_prob=cfg.switch_prob, mode=cfg.mix_mode, label_smoothing=cfg.label_smoothing,
                            num_classes=len(train_loader.classes)),
                  generator=torch.Generator().manual_seed(cfg.seed))
    net = torch.compile(model) if cfg.compile else model
    ctx = StepContext(net, optimizer, scheduler, scaler, mixer, device, amp_dtype, cfg.channels_last)
    run = Run(cfg, run_dir or _new_run_dir(cfg), device, amp_dtype, train_loader, val_loader, model, ctx)
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scaler.load_state_dict(resume["scaler"])
            mixer.load_state_dict(resume["mixer"])
            train_loader.load_state_dict(resume["loader"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise DataError(f"{run.run_dir}: the checkpoint does not match its own config ({str(e)[:160]}); "
                            "it was edited or written by another version — start a new run") from None
        # The schedule is a pure function of the step; rebuilt for the (possibly extended) epochs, then advanced.
        scheduler.last_epoch = int(resume["step"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * lr_factor(scheduler.last_epoch, total_steps=total, warmup_steps=warmup)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        run.start_epoch, run.skip_batches = int(resume["epoch"]), int(resume["batch"])
        run.best_acc, run.best_epoch = float(resume["best_acc"]), int(resume["best_epoch"])
        run.bad_epochs = int(resume["bad_epochs"])
        torch.set_rng_state(resume["torch_rng"])
        if device.type == "cuda" and resume["cuda_rng"]:
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
    return run


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
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
        parts.append(f"gpu {row['gpu_util_mean_pct']:.0f}% used {row['gpu_mem_used_max_mib']:.0f} MiB")
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


def train_epochs(run: Run, stop: StopSignal, log=print) -> None:
    cfg, metrics_path = run.cfg, run.run_dir / "metrics.csv"
    rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= run.start_epoch]
    monitor = ResourceMonitor(run.device)
    for epoch in range(run.start_epoch, cfg.epochs):
        run.train_loader.set_epoch(epoch)
        if run.skip_batches == 0:
            run.loader_state = run.train_loader.state_dict()
        else:  # resuming inside this epoch: the loader state is the one saved at its start
            log(f"resuming epoch {epoch + 1} at batch {run.skip_batches + 1}/{len(run.train_loader)}")
        bar, update = _progress(len(run.train_loader), epoch + 1, cfg)
        lr = run.ctx.optimizer.param_groups[0]["lr"]
        with monitor:
            stats = train_one_epoch(run.ctx, run.train_loader, skip=run.skip_batches, should_stop=stop.is_set,
                                    on_progress=update)
        if bar is not None:
            bar.close()
        if stats["completed"] < len(run.train_loader):
            save_checkpoint(run.state(epoch=epoch, batch=stats["completed"]), run.run_dir / "last.pth")
            raise Interrupted(f"stopped in epoch {epoch + 1} after batch {stats['completed']}; last.pth saved. "
                              f"Resume with: dali-train --resume {run.run_dir}", 128 + (stop.signum or 2))
        run.skip_batches = 0
        if stats["images"] and stats["nonfinite_losses"] == stats["completed"]:
            raise DaliTrainError(f"training diverged in epoch {epoch + 1} (every loss was inf/nan); lower --lr or "
                                 "use --amp-dtype bfloat16")
        val = evaluate(run.ctx.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                       channels_last=cfg.channels_last)
        row = {"epoch": epoch + 1, "lr": lr, **stats, **val, **monitor.figures()}
        rows.append(row)
        log(_epoch_line(cfg, row))
        improved = val["val_acc"] > run.best_acc
        if improved:
            run.best_acc, run.best_epoch, run.bad_epochs = val["val_acc"], epoch + 1, 0
        else:
            run.bad_epochs += 1
        run.stopped_early = cfg.patience > 0 and run.bad_epochs >= cfg.patience
        run.loader_state = run.train_loader.state_dict()
        state = run.state(epoch=epoch + 1, batch=0)
        if improved:
            save_checkpoint(state, run.run_dir / "best.pth")
        save_checkpoint(state, run.run_dir / "last.pth")
        _write_metrics(metrics_path, rows)
        plot_curves(rows, run.run_dir / "curves.png")
        if run.stopped_early:
            log(f"early stopping: val accuracy has not improved for {cfg.patience} epochs "
                f"(best {100 * run.best_acc:.2f}% at epoch {run.best_epoch})")
            break
        if stop.is_set():
            raise Interrupted(f"stopped after epoch {epoch + 1}; last.pth saved. Resume with: dali-train --resume "
                              f"{run.run_dir}", 128 + (stop.signum or 2))


def finish(run: Run, started: float, log=print) -> dict:
    """Reload best.pth, evaluate it, write summary.json."""
    rows = read_metrics(run.run_dir / "metrics.csv")
    best = load_checkpoint(run.run_dir / "best.pth")
    run.model.load_state_dict(best["model"])
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    summary = {
        "epochs_run": int(rows[-1]["epoch"]) if rows else 0,
        "epochs_planned": run.cfg.epochs,
        "stopped_early": run.stopped_early,
        "final_epoch_val_acc": rows[-1]["val_acc"] if rows else None,
        "best_val_acc": run.best_acc,
        "best_epoch": run.best_epoch,
        "best_reloaded_val_acc": val["val_acc"],
        "best_reloaded_val_loss": val["val_loss"],
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "amp_dtype": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else None,
        "backend": run.cfg.backend,
        "wall_time_s": time.time() - started,
        "torch": torch.__version__,
    }
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"best model (epoch {run.best_epoch}) reloaded: val acc {100 * val['val_acc']:.2f}% — "
        f"run directory {run.run_dir}")
    return summary


def fit(cfg: TrainConfig, *, log=print) -> dict:
    """Start a new run from `cfg` and train it to the end (or to early stopping)."""
    started = time.time()
    run = build_run(cfg)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _announce(run, log)
    with StopSignal() as stop:
        train_epochs(run, stop, log)
    return finish(run, started, log)


def find_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    return path / "last.pth" if path.is_dir() else path


def resume(path: str | Path, *, epochs: int | None = None, log=print) -> dict:
    """Continue a run in place from its last.pth (or a given checkpoint), with its saved config."""
    started = time.time()
    ckpt_path = find_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    try:
        cfg = TrainConfig.from_dict(state["config"], source=str(ckpt_path))
    except TypeError as e:
        raise DataError(f"{ckpt_path}: its saved config is unreadable ({e}); start a new run") from None
    if epochs is not None:
        if epochs < int(state["epoch"]) + (1 if state.get("batch") else 0):
            raise ConfigError(f"--epochs={epochs} is invalid: the run already trained {state['epoch']} epochs")
        cfg = cfg.replace(epochs=epochs)
    if state.get("stopped_early") or (int(state["epoch"]) >= cfg.epochs and not state.get("batch")):
        why = "stopped early" if state.get("stopped_early") else f"finished its {cfg.epochs} epochs"
        raise ConfigError(f"{ckpt_path}: this run {why}; pass --epochs larger than {state['epoch']} "
                          "to extend it, or start a new run")
    run = build_run(cfg, resume=state, run_dir=ckpt_path.parent)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _announce(run, log)
    with StopSignal() as stop:
        train_epochs(run, stop, log)
    return finish(run, started, log)


def _announce(run: Run, log) -> None:
    cfg = run.cfg
    where = (f"CUDA device {torch.cuda.get_device_name(run.device)}" if run.device.type == "cuda" else
             "the CPU (no CUDA device; DALI runs its CPU operators)" if cfg.backend == "dali" else "the CPU")
    amp = f"AMP {str(run.amp_dtype).replace('torch.', '')}" if run.amp_dtype else "FP32"
    params = sum(p.numel() for p in run.model.parameters())
    log(f"dali-train: {cfg.model} ({params / 1e6:.2f}M params) on {cfg.dataset}, {cfg.epochs} epochs, training on "
        f"{where}, {amp}, backend {cfg.backend}, augment {cfg.augment}, run directory {run.run_dir}")
    if run.device.type == "cpu" and cfg.amp and cfg.amp_dtype == "float16":
        log("note: autocast on the CPU uses bfloat16 (float16 is for CUDA)")
