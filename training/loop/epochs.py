"""The epochs of a run and its end: `train_epochs` trains, evaluates and checkpoints each epoch, writing
metrics.csv and curves.png (outputs.py), the same figures as TensorBoard events (tensorboard_log.py) and, on a new
run, first_batch.png (first_batch.py); `finish` reloads best.pth, evaluates it and writes summary.json. last.pth is
rewritten atomically after every epoch and when a run is interrupted (a first SIGINT/SIGTERM, signals.py); an
interrupted epoch resumes at the batch where it stopped, with the data, augmentation and RNG streams of the
uninterrupted run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TextIO

import torch

from dali_pipes import DataError

from .. import distributed
from ..outputs import FIRST_BATCH, MAX_TILES, EventLog, FirstBatch, ProgressDisplay, ResourceMonitor, divergence, \
    epoch_line, epoch_totals, metric_fields, open_event_log, plot_curves, read_metrics, reduced, write_rows, \
    write_summary
from ..recipe import TOP_K, evaluate, evaluate_ema, train_one_epoch
from .checkpoint import best_epoch_name, best_epochs, chosen_weights, keep_best, load_checkpoint
from .signals import Diverged, Interrupted, StopSignal
from .state import Run


def _stop_poll(stop: StopSignal, run: Run, every: int = 10):
    """The per-step "should we stop?" check. Under DDP the ranks must agree on the step they stop after, so they
    vote every `every` steps (a tiny all-reduce) instead of each reading its own signal flag. A vote is read at the
    next vote, `every` steps after it was cast (distributed.any_rank_later), so no step waits for the device to
    drain: a stop is taken `every` to 2 * `every` steps after the signal, on every rank at the same step."""
    calls = 0
    pending: distributed.Vote | None = None

    def poll() -> bool:
        nonlocal calls, pending
        calls += 1
        if not run.world.distributed:
            return stop.is_set()
        if calls % every:
            return False
        stopping = pending is not None and pending.result()
        pending = distributed.any_rank_later(stop.is_set(), run.world, run.device)
        return stopping

    return poll


def train_epochs(run: Run, stop: StopSignal, log=print, *, log_every: int = 50, grid_tiles: int = MAX_TILES,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> None:
    """Train from where `run.state` stands to the last epoch (or early stopping), writing the run directory, and
    TensorBoard events beside metrics.csv (rank 0, cfg.tensorboard). `log_every`: steps between two TensorBoard
    points of the running loss; `grid_tiles`: samples of a new run's first batch drawn into first_batch.png (0:
    none). The progress of each epoch and its validation goes to `stream` (stderr), refreshed by `clock`'s seconds
    (progress_display.py)."""
    events = open_event_log(run.run_dir, enabled=run.world.is_main and run.cfg.tensorboard,
                            resume_step=run.state.step, log=log)
    try:
        _train_epochs(run, stop, log, events, log_every=log_every, grid_tiles=grid_tiles,
                      display=functools.partial(ProgressDisplay, clock=clock, stream=stream))
    finally:
        events.close()


def _train_epochs(run: Run, stop: StopSignal, log, events: EventLog, *, log_every: int, grid_tiles: int,
                  display: Callable[..., ProgressDisplay]) -> None:
    cfg, metrics_path, main = run.cfg, run.run_dir / "metrics.csv", run.world.is_main
    log = log if main else (lambda *_: None)
    state = run.state
    rows = run.history
    if main:
        _reconcile_metrics(run, log)
    monitor = ResourceMonitor(run.device)
    poll = _stop_poll(stop, run)
    new_run = state.step == 0 and state.batch == 0
    first = FirstBatch(label_smoothing=run.ctx.mixer.cfg.label_smoothing, max_tiles=grid_tiles) \
        if main and grid_tiles > 0 and new_run else None
    for epoch in range(state.epoch, cfg.epochs):
        run.train_loader.set_epoch(epoch)
        first_step = state.step - state.batch  # the epoch's first optimizer step: one step per batch
        if state.batch == 0:
            run.loader_state = run.train_loader.state_dict()
            run.epoch_so_far = {}
        else:  # resuming inside this epoch: loader state and figures so far are the checkpoint's (Run.load_state)
            log(f"resuming epoch {epoch + 1} at batch {state.batch + 1}/{len(run.train_loader)}")
        bar = display(len(run.train_loader), f"epoch {epoch + 1}/{cfg.epochs}") if main else None

        def due(position: int, bar: ProgressDisplay | None = bar) -> bool:  # a refresh, or a TensorBoard point
            shown = bar is not None and bar.due()
            return shown or (events.writes_steps and position % log_every == 0)

        with monitor:
            stats = train_one_epoch(run.ctx, run.train_loader, step=state.step, skip=state.batch,
                                    should_stop=poll, report_due=due, on_first_batch=first,
                                    on_progress=events.progress(state.step - state.batch,
                                                                bar.update if bar is not None else None,
                                                                every=log_every))
        state.step += stats["steps"]
        if bar is not None:
            bar.close()
        if first is not None and first.captured:  # drawn once, outside the epoch's timing
            events.image(FIRST_BATCH, first.write(run.run_dir / "first_batch.png", run.train_loader, cfg), step=0)
            first = None
        totals = epoch_totals(run.epoch_so_far, stats, monitor.figures())
        if stats["position"] < len(run.train_loader):
            run.epoch_so_far = totals
            state.epoch, state.batch = epoch, stats["position"]
            run.save("last.pth", run.checkpoint())
            raise Interrupted.saved(run_dir=run.run_dir, epoch=epoch + 1, batch=stats["position"],
                                    signum=stop.signum)
        distributed.sync_buffers(run.model, run.world)
        val_bar = display(len(run.val_loader), f"epoch {epoch + 1}/{cfg.epochs} val") if main else None
        val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                       channels_last=cfg.channels_last,
                       on_batch=(lambda done, bar=val_bar: bar.due() and bar.update(done)) if val_bar else None)
        if val_bar is not None:
            val_bar.close()
        figures = reduced(totals, val, run.world, run.device)
        why = divergence(figures, len(run.train_loader.classes))
        if why is not None:  # the same verdict on every rank: the figures are sums over all of them
            raise Diverged.during(epoch + 1, why, lr=cfg.lr, clip_grad=cfg.clip_grad,
                                  float16=run.amp_dtype == torch.float16, run_dir=run.run_dir)
        del figures["train_steps"]
        # the epoch's peak LR (a pure function of the step): its last step in a warmup, its first after it
        lr = max((run.ctx.lr_at(s) for s in range(first_step, state.step)), default=run.ctx.lr_at(first_step))
        row = {k: v for k, v in totals.items() if k not in ("images", "loss_sum", "correct", "correct5", "steps")}
        row.update(val, epoch=epoch + 1, lr=lr, **figures)
        if run.ctx.ema is not None:
            row.update(evaluate_ema(run.ctx.ema, run.val_loader, world=run.world, device=run.device,
                                    amp_dtype=run.amp_dtype, channels_last=cfg.channels_last))
        rows.append(row)
        log(epoch_line(cfg, row))
        # the same reduced values on every rank: the same decision; best.pth is scored by the better weights
        ema_acc = row.get("ema_val_acc", -1.0)
        acc, weights = (ema_acc, "ema") if ema_acc > row["val_acc"] else (row["val_acc"], "model")
        improved = state.record(acc, epoch + 1, cfg.patience, weights)
        run.loader_state = run.train_loader.state_dict()
        run.epoch_so_far = {}
        checkpoint = run.checkpoint()
        if main:  # metrics before last.pth: a crash between the two must not leave an epoch without its row
            write_rows(metrics_path, rows, _metric_fields(run))
            plot_curves(rows, run.run_dir / "curves.png", title=curves_title(run))
            events.epoch(state.step, row)
        if main:  # best.pth, and with --keep-best K > 1 the K best epochs' files
            keep_best(run.run_dir, checkpoint, rows, keep=cfg.keep_best, improved=improved, save=run.save)
        run.save("last.pth", checkpoint)
        if state.stopped_early:
            log(f"early stopping: val accuracy has not improved for {cfg.patience} epochs "
                f"(best {100 * state.best_acc:.2f}% at epoch {state.best_epoch})")
            break
        if distributed.any_rank(stop.is_set(), run.world, run.device):
            raise Interrupted.saved(run_dir=run.run_dir, epoch=epoch + 1, batch=None, signum=stop.signum)


def _metric_fields(run: Run) -> tuple[str, ...]:
    """metrics.csv's columns: top-5 accuracy's for more than 5 classes, the EMA's last when the run keeps one."""
    return metric_fields(top5=len(run.train_loader.classes) > TOP_K, ema=run.ctx.ema is not None)


def _reconcile_metrics(run: Run, log) -> None:
    """metrics.csv is an output, the checkpoint's history the truth: a resumed run whose metrics.csv was deleted,
    damaged or edited gets it rewritten from the history, with a line that says so. Rows beyond the checkpoint
    (an epoch written to metrics.csv just before a kill stopped its last.pth) are the epoch about to be retrained."""
    path = run.run_dir / "metrics.csv"
    if not run.history and not path.exists():
        return
    try:
        found = [r for r in read_metrics(path) if r["epoch"] <= run.state.epoch]
        why = None if _same_rows(found, run.history, _metric_fields(run)) else \
            "missing" if not path.exists() else \
            f"found holding {len(found)} of its {len(run.history)} epochs or other values"
    except DataError as e:
        why = str(e).split(": ", 1)[-1]
    if why is None:
        return
    write_rows(path, run.history, _metric_fields(run))
    log(f"note: {path} was {why}; rewritten from the checkpoint's history ({len(run.history)} epochs)")


def _same_rows(found: list[dict], history: list[dict], columns: tuple[str, ...]) -> bool:
    """metrics.csv's rows say what the history says, in the columns it has (the history keeps more: the counts
    that weigh the epoch's figures across ranks)."""
    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan

    return len(found) == len(history) and all(same(f.get(k), h[k]) for f, h in zip(found, history)
                                              for k in columns if k in h)


def finish(run: Run, log=print) -> dict:
    """Reload best.pth's best weights (raw or EMA; rank 0 reads them, every rank gets them), evaluate them, write
    summary.json."""
    main = run.world.is_main
    path = run.run_dir / "best.pth"
    state = load_checkpoint(path) if main else None
    best = distributed.broadcast(state[chosen_weights(state, path)] if main else None, run.world)
    run.model.load_state_dict(best)
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    n = val["val_images"]
    loss_sum, correct, seen, correct5 = distributed.all_sum(
        [val["val_loss"] * n, val["val_acc"] * n, n, val.get("val_acc5", 0.0) * n], run.world, run.device)
    top5 = {"best_reloaded_val_acc5": correct5 / max(seen, 1)} if "val_acc5" in val else {}
    val = {"val_loss": loss_sum / max(seen, 1), "val_acc": correct / max(seen, 1)}
    rows = run.history
    # One number per rank that any difference in weights would change: data-parallel ranks must agree exactly.
    checksums = distributed.gather(sum(float(p.detach().double().sum()) for p in run.model.parameters()),
                                   run.world)
    summary = {
        "epochs_run": int(rows[-1]["epoch"]) if rows else 0,
        "epochs_planned": run.cfg.epochs,
        "stopped_early": run.state.stopped_early,
        "final_epoch_val_acc": rows[-1]["val_acc"] if rows else None,
        "best_val_acc": run.state.best_acc,
        "best_epoch": run.state.best_epoch,
        "best_weights": run.state.best_weights,  # "ema": the EMA weights scored best_val_acc and were reloaded
        **({"best_checkpoints": [best_epoch_name(e) for e in best_epochs(rows, run.cfg.keep_best)]}
           if run.cfg.keep_best > 1 else {}),  # --keep-best: the K best epochs' files, best first
        "best_reloaded_val_acc": val["val_acc"],
        **top5,  # more than 5 classes only
        "best_reloaded_val_loss": val["val_loss"],
        "world_size": run.world.size,
        "weights_identical_across_ranks": len(set(checksums)) == 1,
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "amp_dtype": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else None,
        "backend": run.cfg.backend,
        "skipped_files": len(run.skipped),  # listed in skipped.txt
        "damaged_files": len(run.damaged),  # listed in damaged.txt
        "wall_time_s": run.wall_time_s(),  # every process of the run, resumes included
        "torch": torch.__version__,
    }
    if not main:
        return summary
    write_summary(run.run_dir, summary)
    which = " (EMA weights)" if run.state.best_weights == "ema" else ""
    log(f"best model (epoch {run.state.best_epoch}){which} reloaded: val acc {100 * val['val_acc']:.2f}% — "
        f"run directory {run.run_dir}")
    return summary


def curves_title(run) -> str:
    """curves.png's title: what was trained on what, with which recipe, and where it is."""
    from dali_pipes.config import describe_augment

    cfg = run.cfg
    return (f"{cfg.model} on {cfg.dataset}, augment {describe_augment(cfg.augment, run.train_loader.cfg)}, {cfg.opt} peak lr {cfg.lr:g}, "
            f"{cfg.epochs} epochs — {run.run_dir.name}")
