"""`dali-prune`: gradual magnitude pruning with fine-tuning after each step, and the sparsity/accuracy trade-off.

Each stage raises the sparsity of the prunable weights to the next requested amount and fine-tunes with the very
training step, loader, recipe and checkpointing of `dali-train` (`run.build_run` + `run.train_epochs`, one run
directory per stage), then keeps the stage's best weights by validation accuracy, as dali-train does. Masks stay on
(`torch.nn.utils.prune` reparametrization: weight = weight_orig * weight_mask) until the last stage, so pruned
weights cannot grow back during fine-tuning; then they are made permanent and `pruned.pth` is a plain dali-train
checkpoint (`dali-eval` and `dali-quantize` take it).

Methods, masks and sparsity: training/prune_masks.py.

Amounts are cumulative targets (0.1,0.2,0.3,0.5: 10% of the prunable weights, then 20%, ...), as in the seed
chapter's exercise 5. An interrupted `dali-prune` continues where it stopped when run again with the same options.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipes import ConfigError, DataError

from ..atomic import write_json
from dali_pipes.checks import check_choice, check_int, check_number
from ..loop import Interrupted, StopSignal, TrainState, build_run, chosen_weights, load_checkpoint, load_weights, \
    save_checkpoint, train_epochs
from ..outputs import RunLog, read_metrics, write_rows
from ..recipe import evaluate
from .checkpoint_tools import ValModel, finite_weights, is_occupied, read_checkpoint, refuse_distributed
from .prune_masks import METHODS, add_masks, make_permanent, nonzero_params, prunable, prune_to, sparsity

CSV_FIELDS = ("stage", "amount", "sparsity", "nonzero_params", "total_params", "val_acc", "val_loss",
              "val_acc_before_finetune", "val_loss_before_finetune", "finetune_epochs", "finetune_time_s")


def _spec(state: dict) -> dict:
    """The source checkpoint's model_spec (what rebuilds its architecture), for the checkpoints made from it."""
    return {"model_spec": state["model_spec"]} if "model_spec" in state else {}


def parse_amounts(text: str) -> tuple[float, ...]:
    """'0.1,0.2,0.3,0.5' -> (0.1, 0.2, 0.3, 0.5): fractions in (0, 1), strictly increasing."""
    rule = "expected comma-separated fractions in (0, 1), increasing, e.g. 0.1,0.2,0.3,0.5"
    try:
        amounts = tuple(float(a) for a in str(text).split(","))
    except ValueError:
        raise ConfigError(f"--amount={text!r} is invalid: {rule}") from None
    for a in amounts:
        if not math.isfinite(a) or not 0.0 < a < 1.0:
            raise ConfigError(f"--amount={text!r} is invalid: {a:g} is not in (0, 1) (0 prunes nothing, 1 prunes "
                              f"every weight); {rule}")
    if any(b <= a for a, b in itertools.pairwise(amounts)):
        raise ConfigError(f"--amount={text!r} is invalid: pruning is gradual, each amount must exceed the one "
                          f"before; {rule}")
    return amounts


@dataclass(frozen=True)
class PruneConfig:
    amounts: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    method: str = "l1-unstructured"
    finetune_epochs: int = 5  # per stage (exercise 5 of the seed chapter)
    finetune_lr: float = 0.01  # peak LR of each stage's cosine schedule (a tenth of dali-train's 0.1)

    def __post_init__(self) -> None:
        check_choice("--method", self.method, METHODS)
        parse_amounts(",".join(repr(a) for a in self.amounts))
        check_int("--finetune-epochs", self.finetune_epochs, 0, note="(0: prune only)")
        check_number("--finetune-lr", self.finetune_lr, 0.0, lo_open=True, rule="expected a number > 0")


# ---------------------------------------------------------------------------------------------------------------
# Stages


def plot(rows: list[dict], path: Path, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r["sparsity"] for r in rows]
    ax.plot(xs, [100 * r["val_acc"] for r in rows], "o-", label="after fine-tuning")
    ax.plot(xs[1:], [100 * r["val_acc_before_finetune"] for r in rows[1:]], "x--", alpha=0.7,
            label="right after pruning")
    ax.set(xlabel="sparsity of prunable weights (%)", ylabel="val accuracy (%)", title=f"dali-prune: {method}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LOG_FILE_NAME = "prune.log"


def _settings(checkpoint: Path, pcfg: PruneConfig, data: dict[str, Any]) -> dict[str, Any]:
    return {"checkpoint": str(checkpoint.resolve()), **asdict(pcfg), "amounts": list(pcfg.amounts),
            "data": {k: v for k, v in sorted(data.items())}}


def _open_output(output: Path, settings: dict[str, Any]) -> None:
    """A new output directory, or one holding an unfinished dali-prune of exactly these settings (continued)."""
    record = output / "prune.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != settings:
            raise ConfigError(f"--output {output} holds a dali-prune run with other settings ({record}); "
                              "choose another --output, or repeat that run's options to continue it")
        if (output / "pruned.pth").is_file():
            raise ConfigError(f"--output {output} holds a finished dali-prune run; choose another --output")
        return
    if is_occupied(output):
        raise ConfigError(f"--output {output} already exists and is not a dali-prune run; choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)


def _measure(run: Any, method: str) -> dict[str, Any]:
    """Sparsity, parameter counts and validation figures of a Run or a ValModel."""
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    s, _ = sparsity(prunable(run.model, method))
    nonzero, total = nonzero_params(run.model)
    return {"sparsity": s, "nonzero_params": nonzero, "total_params": total, "val_acc": val["val_acc"],
            "val_loss": val["val_loss"]}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def run_prune(checkpoint: Path, output: Path, pcfg: PruneConfig, *, device: str = "auto", log=print,
              stop: StopSignal | None = None, **data: Any) -> list[dict]:
    """Every stage of `pcfg` on the model of `checkpoint`; returns prune.csv's rows (stage 0: the input model).

    `stop` is polled after every fine-tuning step, as by run.fit (default: a StopSignal on SIGINT/SIGTERM around
    each stage's fine-tuning); when it is set, the stage saves last.pth and Interrupted says how to continue."""
    refuse_distributed("dali-prune")
    state, base_cfg = read_checkpoint(checkpoint, device=device, **data)
    finite_weights(state, checkpoint, chosen_weights(state, checkpoint))  # before --output is made
    _open_output(output, _settings(checkpoint, pcfg, {**data, "device": device}))
    # prune.log: the lines shown here (each stage's epochs included), appended to by a continued run, as train.log
    log = RunLog(output / LOG_FILE_NAME, log)
    # Each stage is a short dali-train run: the checkpoint's recipe and data, its own LR schedule, no warmup
    # (the weights are trained already), no early stopping, no compile (pruning hooks rewrite weights per call),
    # no EMA (each stage's best.pth must hold its best weights under "model", the pruned ones), best.pth alone.
    stage_cfg = base_cfg.replace(epochs=max(pcfg.finetune_epochs, 1), lr=pcfg.finetune_lr, warmup_epochs=0.0,
                                 patience=0, compile=False, output="", ema_decay=0.0, keep_best=1)
    csv_path = output / "prune.csv"
    rows = read_metrics(csv_path, key="stage")
    method = pcfg.method

    def load_into(weights: dict[str, torch.Tensor]):
        def prepare(model: nn.Module) -> None:
            if any(k.endswith("_mask") for k in weights):
                add_masks(prunable(model, method))
            load_weights(model, weights, checkpoint, f"model {base_cfg.model}")
        return prepare

    weights = dict(state[chosen_weights(state, checkpoint)])  # best.pth: the raw or EMA weights that scored best
    started = time.time()
    run = None
    if not rows:  # stage 0: the model as trained, measured through the same evaluation
        run = ValModel.build(stage_cfg, load_into(weights))
        log(f"dali-prune: {base_cfg.model} from {checkpoint}, {method} to "
            f"{', '.join(f'{a:g}' for a in pcfg.amounts)}, {pcfg.finetune_epochs} fine-tuning epoch(s) per stage "
            f"on {run.device}, output {output}")
        rows.append({"stage": 0, "amount": 0.0, **_measure(run, method), "finetune_epochs": 0,
                     "finetune_time_s": 0.0})
        rows[0].update(val_acc_before_finetune=rows[0]["val_acc"], val_loss_before_finetune=rows[0]["val_loss"])
        write_rows(csv_path, rows, CSV_FIELDS)
        log(_row_line(rows[0]))
    for stage, amount in enumerate(pcfg.amounts, 1):
        stage_dir = output / f"stage{stage}-{amount:g}"
        if stage < len(rows):  # done in an earlier, interrupted dali-prune
            weights = load_checkpoint(stage_dir / "stage.pth")["model"]
            run = None
            continue
        stage_dir.mkdir(exist_ok=True)
        last, before_path = stage_dir / "last.pth", stage_dir / "before_finetune.json"
        if last.is_file() and before_path.is_file():  # interrupted in this stage's fine-tuning: continue it exactly
            log(f"stage {stage}: continuing its fine-tuning from {last}")
            run = build_run(stage_cfg, run_dir=stage_dir, prepare_model=lambda m: add_masks(prunable(m, method)))
            run.load_state(load_checkpoint(last))
            before = json.loads(before_path.read_text())
        else:
            def prepare(model: nn.Module, weights=weights, amount=amount) -> None:
                load_into(weights)(model)
                prune_to(prunable(model, method), method, amount)

            run = build_run(stage_cfg, run_dir=stage_dir, prepare_model=prepare)
            before = _measure(run, method)
            write_json(before_path, before)
        t0 = time.time()
        if pcfg.finetune_epochs > 0:
            tag = f"stage {stage} ({amount:g})"
            try:
                with (stop if stop is not None else StopSignal()) as flag:
                    train_epochs(run, flag, log=lambda line, tag=tag: log(f"{tag}: {line}"))
            except Interrupted as e:
                # the stage's own "dali-train --resume" line would not continue the pruning: only this command does
                raise Interrupted(f"dali-prune stopped in stage {stage} ({e.where()}; its last.pth is saved); run "
                                  "the same dali-prune command "
                                  "again to continue from there", e.exit_code, run_dir=e.run_dir, epoch=e.epoch,
                                  batch=e.batch, signum=e.signum) from None
            run.model.load_state_dict(load_checkpoint(stage_dir / "best.pth")["model"])
        row = {"stage": stage, "amount": amount, **_measure(run, method), "finetune_epochs": pcfg.finetune_epochs,
               "finetune_time_s": time.time() - t0, "val_acc_before_finetune": before["val_acc"],
               "val_loss_before_finetune": before["val_loss"]}
        weights = _cpu_state(run.model)
        save_checkpoint({"config": stage_cfg.to_dict(), "model": weights, "epoch": pcfg.finetune_epochs,
                         **_spec(state)},
                        stage_dir / "stage.pth")
        rows.append(row)
        write_rows(csv_path, rows, CSV_FIELDS)
        plot(rows, output / "prune.png", method)
        log(_row_line(row))
    if run is None:  # every stage was done before this call: the last stage's weights, with their masks
        run = ValModel.build(stage_cfg, load_into(weights))
    # The masks become the weights: a plain model whose pruned weights are exact zeros.
    targets = prunable(run.model, method)
    make_permanent(targets)
    reached, _ = sparsity(targets)
    if abs(reached - rows[-1]["sparsity"]) > 1e-9:  # make_permanent must not change a single weight
        raise DataError(f"{output}: sparsity changed from {rows[-1]['sparsity']:.6f} to {reached:.6f} when the "
                        "masks were made permanent; the stage checkpoints are inconsistent — use a new --output")
    save_checkpoint({"config": base_cfg.to_dict(), "model": _cpu_state(run.model), **_spec(state),
                     "epoch": TrainState.from_dict(state).epoch + pcfg.finetune_epochs * len(pcfg.amounts),
                     "pruning": {"method": method, "amount": pcfg.amounts[-1], "sparsity": reached,
                                 "source": str(checkpoint)}}, output / "pruned.pth")
    log(f"done in {time.time() - started:.0f} s: {output / 'pruned.pth'} ({100 * reached:.2f}% of the prunable "
        f"weights are zero), {csv_path}, {output / 'prune.png'}")
    return rows


def _row_line(row: dict) -> str:
    text = (f"stage {int(row['stage'])}: amount {row['amount']:g}, sparsity {100 * row['sparsity']:.2f}%, "
            f"{int(row['nonzero_params']):,}/{int(row['total_params']):,} params nonzero, "
            f"val acc {100 * row['val_acc']:.2f}% loss {row['val_loss']:.4f}")
    if row["stage"] > 0 and not math.isnan(row["val_acc_before_finetune"]):
        text += f" (right after pruning: {100 * row['val_acc_before_finetune']:.2f}%)"
    return text

