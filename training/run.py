"""`fit` and `resume`: build a run, train its epochs, finish it — read top to bottom.

build_run makes the loaders, model and step from the config (factory.py) in a run directory (rundir.py); Run
saves and loads itself (`checkpoint` / `load_state`, the progress in a TrainState); train_epochs trains, evaluates
and checkpoints each epoch, writing metrics.csv and curves.png (outputs.py), the same figures as TensorBoard events
(tensorboard_log.py) and, on a new run, first_batch.png (first_batch.py); finish reloads best.pth, evaluates it
and writes summary.json. last.pth is rewritten atomically after every epoch and when a run is interrupted (a
first SIGINT/SIGTERM, signals.py); an interrupted epoch resumes at the batch where it stopped, with the data,
augmentation and RNG streams of the uninterrupted run.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dali_pipes import DataError
from dali_pipes.config import describe_augment

from . import distributed, rundir
from .checkpoint import chosen_weights, load_checkpoint
from .config import TrainConfig, absolute_paths
from .ema import evaluate_ema
from .engine import evaluate, train_one_epoch
from .factory import build_model, create_loaders, kernel_settings, lr_factor, resolve_amp_dtype, resolve_device, \
    step_context
from .figures import divergence, epoch_totals, reduced
from .first_batch import MAX_TILES, FirstBatch
from .monitor import ResourceMonitor
from .outputs import EMA_FIELDS, METRIC_FIELDS, epoch_line, plot_curves, progress, read_metrics, write_config, \
    write_rows, write_summary
from .resume import find_checkpoint, read_resume_state, saved_config
from .rundir import RunDirLock
from .signals import Diverged, FinalEvaluationSignal, Interrupted, SecondSignal, StopSignal
from .state import Run, TrainState, cuda_rng_entry
from .step_memory import available_memory, check_training_step
from .tensorboard_log import FIRST_BATCH, EventLog, open_event_log

# What callers (prune, ablate, tests, benchmarks) import from here besides fit and resume.
__all__ = ["METRIC_FIELDS", "Diverged", "Interrupted", "Run", "SecondSignal", "StopSignal", "TrainState", "build_run",
           "cuda_rng_entry", "find_checkpoint", "finish", "fit", "lr_factor", "read_metrics", "resolve_amp_dtype",
           "resolve_device", "resume", "train_epochs", "write_rows"]


def build_run(cfg: TrainConfig, *, run_dir: Path | None = None,
              prepare_model: Callable[[torch.nn.Module], None] | None = None,
              memory: Callable[[torch.device], int | None] = available_memory) -> Run:
    """Loaders, model, optimizer, schedule, mixer for `cfg`, at the start of the run (a resume then loads its
    checkpoint with :meth:`Run.load_state`). A new run directory is made and locked unless `run_dir` is given.

    `prepare_model` may change the model in place before the optimizer and DDP see its parameters (dali-prune
    puts pruning masks on it there). A batch whose training step would not fit in `memory` (bytes free on the
    device, step_memory.available_memory) is refused before the run directory is made."""
    world, device = distributed.setup(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train_loader, val_loader = create_loaders(cfg, device, world)
    classes = len(train_loader.classes)
    model = build_model(cfg, classes, device, world=world, prepare=prepare_model,
                        image_size=train_loader.image_size[0])
    check_training_step(model, train_loader, requested=cfg.batch_size, model_name=cfg.model, device=device,
                        amp_dtype=resolve_amp_dtype(cfg, device), channels_last=cfg.channels_last,
                        available=memory)
    ctx = step_context(cfg, model, num_classes=classes, steps_per_epoch=len(train_loader), device=device,
                       world=world)
    lock = None
    if run_dir is None:
        run_dir, lock = rundir.new_run_dir(cfg, world)
    return Run(cfg, run_dir, device, world, ctx.amp_dtype, train_loader, val_loader, model, ctx, lock=lock)


def _stop_poll(stop: StopSignal, run: Run, every: int = 10):
    """The per-step "should we stop?" check. Under DDP the ranks must agree on the step they stop after, so they
    vote every `every` steps (a tiny all-reduce) instead of each reading its own signal flag."""
    calls = 0

    def poll() -> bool:
        nonlocal calls
        calls += 1
        if not run.world.distributed:
            return stop.is_set()
        return calls % every == 0 and distributed.any_rank(stop.is_set(), run.world, run.device)

    return poll


def train_epochs(run: Run, stop: StopSignal, log=print, *, log_every: int = 50, grid_tiles: int = MAX_TILES) -> None:
    """Train from where `run.state` stands to the last epoch (or early stopping), writing the run directory, and
    TensorBoard events beside metrics.csv (rank 0, cfg.tensorboard). `log_every`: steps between two reads of the
    running loss (progress bar, TensorBoard); `grid_tiles`: samples of a new run's first batch drawn into
    first_batch.png (0: none)."""
    events = open_event_log(run.run_dir, enabled=run.world.is_main and run.cfg.tensorboard,
                            resume_step=run.state.step, log=log)
    try:
        _train_epochs(run, stop, log, events, log_every=log_every, grid_tiles=grid_tiles)
    finally:
        events.close()


def _train_epochs(run: Run, stop: StopSignal, log, events: EventLog, *, log_every: int, grid_tiles: int) -> None:
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
        if state.batch == 0:
            run.loader_state = run.train_loader.state_dict()
            run.epoch_so_far = {"lr": run.ctx.lr_at(state.step)}  # the LR the epoch starts at
        else:  # resuming inside this epoch: loader state and figures so far are the checkpoint's (Run.load_state)
            log(f"resuming epoch {epoch + 1} at batch {state.batch + 1}/{len(run.train_loader)}")
        bar, update = progress(len(run.train_loader), epoch + 1, cfg) if main else (None, None)
        with monitor:
            stats = train_one_epoch(run.ctx, run.train_loader, step=state.step, skip=state.batch,
                                    should_stop=poll, on_progress=events.progress(state.step - state.batch, update),
                                    log_every=log_every, on_first_batch=first)
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
            raise Interrupted.at(f"stopped in epoch {epoch + 1} after batch {stats['position']}; last.pth saved. "
                                 f"Resume with: dali-train --resume {run.run_dir}", run_dir=run.run_dir,
                                 epoch=epoch + 1, batch=stats["position"], signum=stop.signum)
        distributed.sync_buffers(run.model, run.world)
        val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                       channels_last=cfg.channels_last)
        figures = reduced(totals, val, run.world, run.device)
        why = divergence(figures, len(run.train_loader.classes))
        if why is not None:  # the same verdict on every rank: the figures are sums over all of them
            raise Diverged.during(epoch + 1, why, lr=cfg.lr, clip_grad=cfg.clip_grad,
                                  float16=run.amp_dtype == torch.float16, run_dir=run.run_dir)
        del figures["train_steps"]
        lr = totals.get("lr", run.ctx.optimizer.param_groups[0]["lr"])  # absent in checkpoints without figures
        row = {k: v for k, v in totals.items() if k not in ("images", "loss_sum", "correct", "steps")}
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
            write_rows(metrics_path, rows, METRIC_FIELDS + (EMA_FIELDS if run.ctx.ema is not None else ()))
            plot_curves(rows, run.run_dir / "curves.png")
            events.epoch(state.step, row)
        if improved:
            run.save("best.pth", checkpoint)
        run.save("last.pth", checkpoint)
        if state.stopped_early:
            log(f"early stopping: val accuracy has not improved for {cfg.patience} epochs "
                f"(best {100 * state.best_acc:.2f}% at epoch {state.best_epoch})")
            break
        if distributed.any_rank(stop.is_set(), run.world, run.device):
            raise Interrupted.at(f"stopped after epoch {epoch + 1}; last.pth saved. Resume with: dali-train "
                                 f"--resume {run.run_dir}", run_dir=run.run_dir, epoch=epoch + 1, batch=None,
                                 signum=stop.signum)


def _reconcile_metrics(run: Run, log) -> None:
    """metrics.csv is an output, the checkpoint's history the truth: a resumed run whose metrics.csv was deleted,
    damaged or edited gets it rewritten from the history, with a line that says so. Rows beyond the checkpoint
    (an epoch written to metrics.csv just before a kill stopped its last.pth) are the epoch about to be retrained."""
    path, fields = run.run_dir / "metrics.csv", METRIC_FIELDS + (EMA_FIELDS if run.ctx.ema is not None else ())
    if not run.history and not path.exists():
        return
    try:
        found = [r for r in read_metrics(path) if r["epoch"] <= run.state.epoch]
        why = None if _same_rows(found, run.history) else \
            "missing" if not path.exists() else f"holds {len(found)} of its {len(run.history)} epochs or other values"
    except DataError as e:
        why = str(e).split(": ", 1)[-1]
    if why is None:
        return
    write_rows(path, run.history, fields)
    log(f"note: {path} was {why}; rewritten from the checkpoint's history ({len(run.history)} epochs)")


def _same_rows(found: list[dict], history: list[dict]) -> bool:
    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan

    return len(found) == len(history) and all(same(f.get(k), v) for f, h in zip(found, history)
                                              for k, v in h.items())


def _train(cfg: TrainConfig, *, resume_state: dict | None, run_dir: Path | None, log, train: bool = True,
           stop: StopSignal | None = None, build: Callable[..., Run] = build_run) -> dict:
    started = time.time()
    with kernel_settings(deterministic=cfg.deterministic):  # before build: cuBLAS reads its workspace setting once
        return _train_with(cfg, resume_state=resume_state, run_dir=run_dir, log=log, train=train, stop=stop,
                           build=build, started=started)


def _train_with(cfg: TrainConfig, *, resume_state: dict | None, run_dir: Path | None, log, train: bool,
                stop: StopSignal | None, build: Callable[..., Run], started: float) -> dict:
    run = None
    try:
        run = build(cfg, run_dir=run_dir)
        if resume_state is not None:
            run.load_state(resume_state)
        if run.world.is_main:
            write_config(run.run_dir, cfg)
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
                    raise Interrupted.at(f"aborted in the final evaluation; last.pth and best.pth hold the trained "
                                         f"run, summary.json is not written. Finish it with: dali-train --resume "
                                         f"{run.run_dir}", run_dir=run.run_dir, epoch=None, batch=None,
                                         signum=final.signum) from None
            if final.signum is not None:
                log(f"{signal.Signals(final.signum).name} arrived during the final evaluation, which completed: "
                    "the run is finished")
            return summary
    except SecondSignal as e:
        e.run_dir = run.run_dir if run is not None and (run.run_dir / "last.pth").is_file() else None
        raise
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        distributed.cleanup()


def fit(cfg: TrainConfig, *, log=print, stop: StopSignal | None = None,
        build: Callable[..., Run] = build_run) -> dict:
    """Start a new run from `cfg` and train it to the end (or to early stopping).

    `stop` is polled after every step (default: a StopSignal on SIGINT/SIGTERM); `build` makes the Run from the
    config (build_run; a caller may wrap it, to watch the run's loaders for instance)."""
    return _train(absolute_paths(cfg), resume_state=None, run_dir=None, log=log, stop=stop, build=build)


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
        kind = rundir.classify(path, "--resume") if path.is_dir() and not (path / "last.pth").exists() else None
        if kind == rundir.RESULTS_ONLY and not (path / "best.pth").is_file():
            raise DataError(f"--resume {path}: it holds a run's results ({rundir.results(path)}) but no last.pth or "
                            "best.pth to continue from; nothing was changed. Restore last.pth, or start a new run "
                            "with another --output")
        if kind not in (None, rundir.RESULTS_ONLY):
            if kind != rundir.UNSTARTED:
                held = ", it is empty" if kind == rundir.EMPTY else f"; it holds {rundir.listing(path)}"
                raise DataError(f"--resume {path}: not a dali-train run (no last.pth or config.yaml{held}); pass a "
                                "run directory or a .pth file written by dali-train")
            cfg = saved_config(path, epochs)
            log(f"{path}: stopped before its first checkpoint (config.yaml, no last.pth); starting it over from "
                "its config.yaml")
            if distributed.launched_rank() == 0:
                rundir.clear_outputs(path, keep=("config.yaml",))
            return _train(cfg, resume_state=None, run_dir=path, log=log, stop=stop, build=build)
        ckpt_path = find_checkpoint(path)
        cfg, state, finish_only = read_resume_state(ckpt_path, epochs)
        if ckpt_path.name != "last.pth":
            log(f"note: continuing {ckpt_path.parent} from {ckpt_path.name} (epoch {int(state['epoch'])}, the "
                "latest its folder holds)")
        return _train(cfg, resume_state=state, run_dir=ckpt_path.parent, log=log, train=not finish_only,
                      stop=stop, build=build)
    finally:
        if lock is not None:
            lock.release()


def finish(run: Run, started: float, log=print) -> dict:
    """Reload best.pth's best weights (raw or EMA; rank 0 reads them, every rank gets them), evaluate them, write
    summary.json."""
    main = run.world.is_main
    path = run.run_dir / "best.pth"
    state = load_checkpoint(path) if main else None
    best = distributed.broadcast(state[chosen_weights(state, path)] if main else None, run.world)
    run.model.load_state_dict(best)
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    loss_sum, correct, seen = distributed.all_sum([val["val_loss"] * val["val_images"],
                                                   val["val_acc"] * val["val_images"], val["val_images"]],
                                                  run.world, run.device)
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
    write_summary(run.run_dir, summary)
    which = " (EMA weights)" if run.state.best_weights == "ema" else ""
    log(f"best model (epoch {run.state.best_epoch}){which} reloaded: val acc {100 * val['val_acc']:.2f}% — "
        f"run directory {run.run_dir}")
    return summary


def _announce(run: Run, log) -> None:
    cfg = run.cfg
    where = (f"CUDA device {torch.cuda.get_device_name(run.device)}" if run.device.type == "cuda" else
             "the CPU (no CUDA device; DALI runs its CPU operators)" if cfg.backend == "dali" else "the CPU")
    amp = f"AMP {str(run.amp_dtype).replace('torch.', '')}" if run.amp_dtype else "FP32"
    params = sum(p.numel() for p in run.model.parameters())
    log(f"dali-train: {cfg.model} ({params / 1e6:.2f}M params) on {cfg.dataset}, {cfg.epochs} epochs, training on "
        f"{where}, {amp}, backend {cfg.backend}, augment {describe_augment(cfg.augment)}, "
        f"run directory {run.run_dir}")
    held = run.train_loader.shard_size
    if cfg.batch_size > held:  # the loaders size their buffers by the samples a batch can hold, not the option
        log(f"note: --batch-size {cfg.batch_size} exceeds the {held} training images "
            f"{'of this process' if run.world.distributed else 'there are'}: each epoch is one step of {held}")
    if run.device.type == "cpu" and cfg.amp and cfg.amp_dtype == "float16":
        log("note: autocast on the CPU uses bfloat16 (float16 is for CUDA)")
