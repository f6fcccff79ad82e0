"""`fit` and `resume`: build a run, train its epochs, finish it — read top to bottom.

build_run makes the loaders, model and step from the config (factory.py) in a run directory; Run saves and loads
itself (`checkpoint` / `load_state`, the progress in a TrainState); train_epochs and finish (epochs.py) do the rest.
What a command may do with a folder is its RunDir's verdict (rundir.py), asked once and carried out here.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dali_pipes import ConfigError, DaliTrainError
from dali_pipes.config import describe_augment
from dali_pipes.notices import skipped_to

from .. import distributed
from ..config import TrainConfig, absolute_paths
from ..outputs.run_log import LOG_FILE, RunLog
from ..outputs.skipped import SKIPPED_FILE, SkippedData, to_stderr
from ..recipe import build_model, create_loaders, kernel_settings, resolve_amp_dtype, resolve_device, resolved_config, \
    step_context
from ..recipe.pretrained import load_pretrained
from . import rundir
from .epochs import finish, train_epochs
from .folder import clear_outputs
from .rundir import RunDir, Verdict
from .signals import FinalEvaluationSignal, Interrupted, SecondSignal, StopSignal
from .state import Run
from .step_memory import available_memory, check_training_step


def build_run(cfg: TrainConfig, *, run_dir: Path | None = None,
              prepare_model: Callable[[torch.nn.Module], None] | None = None,
              memory: Callable[[torch.device], int | None] = available_memory, pretrained: bool = False) -> Run:
    """Loaders, model, optimizer, schedule, mixer for `cfg`, at the start of the run (a resume then loads its
    checkpoint with :meth:`Run.load_state`). A new run directory is made and locked unless `run_dir` is given.

    `prepare_model` may change the model in place before the optimizer and DDP see its parameters (dali-prune
    puts pruning masks on it there). A batch whose training step would not fit in `memory` (bytes free on the
    device, step_memory.available_memory) is refused before the run directory is made. `pretrained`: start from
    cfg.pretrained's weights (a run's start; a resume loads its checkpoint instead), loaded before `prepare_model`,
    the optimizer, the EMA and DDP see the model."""
    world, device = distributed.setup(resolve_device(cfg.device))
    cfg = resolved_config(cfg, device, world.size)  # what runs, and what config.yaml and the checkpoints keep
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train_loader, val_loader = create_loaders(cfg, device, world)
    classes = len(train_loader.classes)
    notes: list[str] = []

    def prepare(model: torch.nn.Module) -> None:
        if pretrained and cfg.pretrained:
            note = load_pretrained(model, cfg.pretrained, classes)
            notes.extend([note] if note else [])
        if prepare_model is not None:
            prepare_model(model)

    model = build_model(cfg, classes, device, world=world, prepare=prepare, image_size=train_loader.image_size[0])
    check_training_step(model, train_loader, requested=cfg.batch_size, model_name=cfg.model, device=device,
                        amp_dtype=resolve_amp_dtype(cfg, device), channels_last=cfg.channels_last,
                        available=memory)
    ctx = step_context(cfg, model, num_classes=classes, steps_per_epoch=len(train_loader), device=device,
                       world=world)
    lock = None
    if run_dir is None:
        run_dir, lock = rundir.new_run_dir(cfg, world)
    return Run(cfg, run_dir, device, world, ctx.amp_dtype, train_loader, val_loader, model, ctx, lock=lock,
               notes=notes)


def _train(cfg: TrainConfig, *, resume_state: dict | None, run_dir: Path | None, log, train: bool = True,
           stop: StopSignal | None = None, build: Callable[..., Run] = build_run) -> dict:
    started = time.time()
    with kernel_settings(deterministic=cfg.deterministic):  # before build: cuBLAS reads its workspace setting once
        return _train_with(cfg, resume_state=resume_state, run_dir=run_dir, log=log, train=train, stop=stop,
                           build=build, started=started)


def _train_with(cfg: TrainConfig, *, resume_state: dict | None, run_dir: Path | None, log, train: bool,
                stop: StopSignal | None, build: Callable[..., Run], started: float) -> dict:
    run, run_log = None, None
    # skipped data is printed as the loaders list it (rank 0) and listed in the run directory
    skipped = SkippedData(say=to_stderr if distributed.launched_rank() == 0 else lambda line: None)
    try:
        with skipped_to(skipped):  # the listing's notices, and JPEG damage found after an epoch (dali_pipes.damage)
            run = build(cfg, run_dir=run_dir, pretrained=resume_state is None)
            run.skipped, run.damaged, run.started = skipped.paths, skipped.damaged, started
            if resume_state is not None:
                run.load_state(resume_state)
            if run.world.is_main:
                RunDir(run.run_dir).write_config(run.cfg)  # resolved: what runs
                log = run_log = RunLog(run.run_dir / LOG_FILE, log)
                # shown as the loaders listed the data, before the folder was known; later notices as they come
                skipped.keep_in(run.run_dir, run_log.record)
                if train:  # summary.json marks a finished run: one from before these epochs would be stale
                    (run.run_dir / "summary.json").unlink(missing_ok=True)
                _announce(run, log, asked=cfg, resumed=resume_state is not None)
            with (stop if stop is not None else StopSignal()) as flag:
                if train:
                    train_epochs(run, flag, log)
                with FinalEvaluationSignal() as final:
                    try:
                        summary = finish(run, log)
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
    except DaliTrainError as e:  # the command's last line (cli.py prints it), in train.log too
        if run_log is not None:
            run_log.record(e.line() if isinstance(e, Interrupted) else f"error: {e}")
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
    checkpoint) starts over from that config. What is done is the folder's verdict (RunDir.verdict).

    Under torchrun, every rank reads the checkpoint (the run directory must be visible to all of them); rank 0
    alone holds the run directory's lock."""
    folder = RunDir(path)
    lock = folder.lock().acquire() if folder.path.is_dir() and distributed.launched_rank() == 0 else None
    try:
        return carry_out(folder, folder.verdict(epochs=epochs), log=log, stop=stop, build=build)
    finally:
        if lock is not None:
            lock.release()


def carry_out(folder: RunDir, verdict: Verdict, *, log=print, stop: StopSignal | None = None,
              build: Callable[..., Run] = build_run) -> dict:
    """Do what `verdict` allows in `folder`, whose lock the caller holds (rank 0): start, restart, resume or finish
    the run; DONE and REFUSED raise their error."""
    if verdict.error is not None:
        raise verdict.error
    if verdict.kind != rundir.NEW and verdict.cfg.device == "cuda" and not torch.cuda.is_available():
        # config.yaml keeps the device "auto" chose; --resume takes no --device to change it
        raise ConfigError(f"{folder.path}: its run uses a CUDA device (device: cuda in its config) and none is "
                          "visible here; continue it on a machine with one")
    if verdict.kind == rundir.NEW:
        folder.make()
        return _train(absolute_paths(verdict.cfg), resume_state=None, run_dir=folder.path, log=log, stop=stop,
                      build=build)
    if verdict.kind == rundir.RESTART:
        log(f"{folder.path}: {verdict.reason}")
        if distributed.launched_rank() == 0:
            clear_outputs(folder.path, keep=("config.yaml", LOG_FILE))  # train.log: the record of the earlier try
        return _train(verdict.cfg, resume_state=None, run_dir=folder.path, log=log, stop=stop, build=build)
    ckpt = verdict.checkpoint
    if ckpt.name != "last.pth":
        log(f"note: continuing {ckpt.parent} from {ckpt.name} (epoch {verdict.progress.epoch}, the latest its folder "
            "holds)")
    return _train(verdict.cfg, resume_state=verdict.state, run_dir=ckpt.parent, log=log,
                  train=verdict.kind == rundir.RESUME, stop=stop, build=build)


def _validation_notes(run: Run) -> list[str]:
    """What the validation split cannot measure: classes of the training split it has no image of, or fewer
    images than classes (a typo'd or half-copied val folder trains without complaint otherwise)."""
    classes = run.train_loader.classes
    labels = np.asarray(run.val_loader.data.labels)
    notes = []
    missing = [classes[k] for k in sorted(set(range(len(classes))) - set(labels.tolist()))]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        notes.append(f"note: the val split has no image of {len(missing)} of the {len(classes)} training classes "
                     f"({shown}): validation accuracy does not measure them")
    if len(labels) < len(classes):
        notes.append(f"note: the val split holds {len(labels)} images for {len(classes)} classes: its accuracy is "
                      "a coarse estimate")
    return notes


def _announce(run: Run, log, *, asked: TrainConfig, resumed: bool = False) -> None:
    cfg = run.cfg
    where = (f"CUDA device {torch.cuda.get_device_name(run.device)}" if run.device.type == "cuda" else
             "the CPU (no CUDA device; DALI runs its CPU operators)" if cfg.backend == "dali" else "the CPU")
    amp = f"AMP {str(run.amp_dtype).replace('torch.', '')}" if run.amp_dtype else "FP32"
    params = sum(p.numel() for p in run.model.parameters())
    world = run.world.size
    lr_rule = (f"--lr-base {cfg.lr_base:g} per 128 images, {'linear' if cfg.opt == 'sgd' else 'square-root'} rule"
               if asked.lr is None else "as the run started" if resumed else "--lr as given")
    log(f"dali-train: {cfg.model} ({params / 1e6:.2f}M params) on {cfg.dataset}, {cfg.epochs} epochs, training on "
        f"{where}, {amp}, backend {cfg.backend}, augment {describe_augment(cfg.augment, run.train_loader.cfg)}, "
        f"{world} process(es) x batch {cfg.batch_size} = global batch {world * cfg.batch_size}, peak lr {cfg.lr:g} "
        f"({lr_rule}), run directory {run.run_dir}"
        + (f", {len(run.skipped)} files skipped (listed in {SKIPPED_FILE})" if run.skipped else ""))
    for note in run.notes:
        log(note)
    for note in _validation_notes(run):
        log(note)
    held = run.train_loader.shard_size
    if cfg.batch_size > held:  # the loaders size their buffers by the samples a batch can hold, not the option
        log(f"note: --batch-size {cfg.batch_size} exceeds the {held} training images "
            f"{'of this process' if run.world.distributed else 'there are'}: each epoch is one step of {held}")
    if run.device.type == "cpu" and asked.amp and asked.amp_dtype == "float16":
        log("note: autocast on the CPU uses bfloat16 (float16 is for CUDA)")
