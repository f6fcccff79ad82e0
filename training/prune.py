"""`dali-prune`: gradual magnitude pruning with fine-tuning after each step, and the sparsity/accuracy trade-off.

Each stage raises the sparsity of the prunable weights to the next requested amount and fine-tunes with the very
training step, loader, recipe and checkpointing of `dali-train` (`run.build_run` + `run.train_epochs`, one run
directory per stage), then keeps the stage's best weights by validation accuracy, as dali-train does. Masks stay on
(`torch.nn.utils.prune` reparametrization: weight = weight_orig * weight_mask) until the last stage, so pruned
weights cannot grow back during fine-tuning; then they are made permanent and `pruned.pth` is a plain dali-train
checkpoint (`dali-eval` and `dali-quantize` take it).

Methods and what they prune (the "prunable weights" that sparsity is measured over):
* ``l1-unstructured``: each Conv2d/Linear weight loses the same fraction of its smallest-|w| entries.
* ``l1-global``: the smallest-|w| entries over all Conv2d/Linear weights together (layers end up unequal).
* ``ln-structured``: whole output channels (filters) of each Conv2d, by L2 norm; the classifier is left whole
  (pruning its rows would delete classes). Channel counts per layer are chosen so the total hits the amount.

Amounts are cumulative targets (0.1,0.2,0.3,0.5: 10% of the prunable weights, then 20%, ...), as in the seed
chapter's exercise 5. An interrupted `dali-prune` continues where it stopped when run again with the same options.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from dali_pipes import ConfigError, DataError

from .checks import check_choice, check_int, check_number
from .checkpoint import checkpoint_config, chosen_weights, load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig
from .engine import evaluate
from .factory import build_model, data_loader, resolve_amp_dtype, resolve_device
from .run import Interrupted, StopSignal, build_run, read_metrics, train_epochs, write_rows

METHODS = ("l1-unstructured", "l1-global", "ln-structured")
CSV_FIELDS = ("stage", "amount", "sparsity", "nonzero_params", "total_params", "val_acc", "val_loss",
              "val_acc_before_finetune", "val_loss_before_finetune", "finetune_epochs", "finetune_time_s")


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
# Masks


def prunable(model: nn.Module, method: str) -> list[tuple[nn.Module, str]]:
    """(module, "weight") pairs the method prunes, in model order."""
    kinds = (nn.Conv2d,) if method == "ln-structured" else (nn.Conv2d, nn.Linear)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass uses (orig * mask while pruning is on; `module.weight` is only refreshed by
    the next forward call, so it can be stale right after a state dict was loaded)."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig").detach() * getattr(module, name + "_mask")
    return getattr(module, name).detach()


def sparsity(targets: list[tuple[nn.Module, str]]) -> tuple[float, int]:
    """Fraction of the prunable weights that are zero, and how many weights that is out of."""
    zeros = sum(int((effective_weight(m, n) == 0).sum()) for m, n in targets)
    total = sum(effective_weight(m, n).numel() for m, n in targets)
    return zeros / max(total, 1), total


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """Nonzero and total parameters of the whole model, counting pruned weights as they act in the forward pass."""
    nonzero = total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            w = effective_weight(module, name[:-5]) if name.endswith("_orig") else p.detach()
            nonzero += int((w != 0).sum())
            total += w.numel()
    return nonzero, total


def add_masks(targets: list[tuple[nn.Module, str]]) -> None:
    """All-ones masks (weight -> weight_orig * weight_mask) where none is yet: a pruned state dict then loads."""
    for m, n in targets:
        if not prune.is_pruned(m) or not hasattr(m, n + "_mask"):
            prune.identity(m, n)


def _pruned_channels(module: nn.Module, name: str) -> int:
    mask = getattr(module, name + "_mask")
    return int((mask.flatten(1).sum(1) == 0).sum())


def _channel_counts(targets: list[tuple[nn.Module, str]], amount: float) -> list[int]:
    """Output channels to have pruned per layer so that the pruned weights are `amount` of all of them: each layer
    gets floor(amount * channels), then single channels go to the layers with the largest remainders while that
    brings the total closer (per-layer rounding alone misses by up to a channel's worth in every layer)."""
    sizes = [getattr(m, n + "_orig").shape for m, n in targets]
    channels = [s[0] for s in sizes]
    per_channel = [math.prod(s[1:]) for s in sizes]
    goal = amount * sum(c * w for c, w in zip(channels, per_channel))
    counts = [math.floor(amount * c) for c in channels]
    order = sorted(range(len(counts)), key=lambda i: amount * channels[i] - counts[i], reverse=True)
    have = sum(k * w for k, w in zip(counts, per_channel))
    for i in order:
        if counts[i] < channels[i] - 1 and abs(have + per_channel[i] - goal) < abs(have - goal):
            counts[i] += 1
            have += per_channel[i]
    return counts


def prune_to(targets: list[tuple[nn.Module, str]], method: str, amount: float) -> None:
    """Raise the sparsity of `targets` to `amount` (cumulative), pruning only weights still present.

    torch's pruning methods given an integer amount prune that many more among the unpruned entries (channels, for
    structured pruning), so each call asks for the difference between the goal and what is pruned already."""
    add_masks(targets)
    if method == "l1-global":
        # prune.global_unstructured flattens weights with .view(-1), which channels-last weights refuse; the same
        # selection by hand: the `more` smallest |w| among the weights still present, over all layers at once.
        masks = [getattr(m, n + "_mask") for m, n in targets]
        scores = torch.cat([effective_weight(m, n).abs().flatten().masked_fill(mask.flatten() == 0, math.inf)
                            for (m, n), mask in zip(targets, masks)])
        more = max(0, round(amount * scores.numel()) - sum(int((mask == 0).sum()) for mask in masks))
        keep = torch.ones_like(scores)
        keep[torch.topk(scores, more, largest=False).indices] = 0
        for (m, n), piece, mask in zip(targets, keep.split([mask.numel() for mask in masks]), masks):
            prune.custom_from_mask(m, n, mask=piece.reshape(mask.shape) * mask)
    elif method == "l1-unstructured":
        for m, n in targets:
            mask = getattr(m, n + "_mask")
            more = max(0, round(amount * mask.numel()) - int((mask == 0).sum()))
            prune.l1_unstructured(m, n, amount=more)
    else:
        for (m, n), count in zip(targets, _channel_counts(targets, amount)):
            more = max(0, count - _pruned_channels(m, n))
            prune.ln_structured(m, n, amount=more, n=2, dim=0)


def make_permanent(targets: list[tuple[nn.Module, str]]) -> None:
    for m, n in targets:
        if hasattr(m, n + "_mask"):
            prune.remove(m, n)


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
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} already exists and is not a dali-prune run; choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, record)


def _measure(run: Any, method: str) -> dict[str, Any]:
    val = evaluate(run.model, run.val_loader, device=run.device, amp_dtype=run.amp_dtype,
                   channels_last=run.cfg.channels_last)
    s, _ = sparsity(prunable(run.model, method))
    nonzero, total = nonzero_params(run.model)
    return {"sparsity": s, "nonzero_params": nonzero, "total_params": total, "val_acc": val["val_acc"],
            "val_loss": val["val_loss"]}


@dataclass
class _Model:
    """A model and the validation loader that measures it: what stage 0 and the final step need (no optimizer,
    no training loader, no run directory)."""

    cfg: TrainConfig
    model: nn.Module
    val_loader: Any
    device: torch.device
    amp_dtype: torch.dtype | None

    @classmethod
    def build(cls, cfg: TrainConfig, prepare) -> _Model:
        device = resolve_device(cfg.device)
        val_loader = data_loader(cfg, device, "val")
        model = build_model(cfg, len(val_loader.classes), device, prepare=prepare,
                            image_size=val_loader.image_size[0])
        return cls(cfg, model, val_loader, device, resolve_amp_dtype(cfg, device))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def run_prune(checkpoint: Path, output: Path, pcfg: PruneConfig, *, device: str = "auto", log=print,
              **data: Any) -> list[dict]:
    """Every stage of `pcfg` on the model of `checkpoint`; returns prune.csv's rows (stage 0: the input model)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("dali-prune runs in one process; start it without torchrun")
    state = load_checkpoint(checkpoint)
    base_cfg = checkpoint_config(state, checkpoint, device=device, **data)
    _open_output(output, _settings(checkpoint, pcfg, {**data, "device": device}))
    # Each stage is a short dali-train run: the checkpoint's recipe and data, its own LR schedule, no warmup
    # (the weights are trained already), no early stopping, no compile (pruning hooks rewrite weights per call),
    # no EMA (each stage's best.pth must hold its best weights under "model", the pruned ones).
    stage_cfg = base_cfg.replace(epochs=max(pcfg.finetune_epochs, 1), lr=pcfg.finetune_lr, warmup_epochs=0.0,
                                 patience=0, compile=False, output="", ema_decay=0.0)
    csv_path = output / "prune.csv"
    rows = read_metrics(csv_path)
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
        run = _Model.build(stage_cfg, load_into(weights))
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
            before_path.write_text(json.dumps(before) + "\n")
        t0 = time.time()
        if pcfg.finetune_epochs > 0:
            tag = f"stage {stage} ({amount:g})"
            try:
                with StopSignal() as stop:
                    train_epochs(run, stop, log=lambda line, tag=tag: log(f"{tag}: {line}"))
            except Interrupted as e:
                raise Interrupted(f"dali-prune stopped in stage {stage} ({e}); run the same dali-prune command "
                                  "again to continue from there", e.exit_code, run_dir=e.run_dir, epoch=e.epoch,
                                  batch=e.batch, signum=e.signum) from None
            run.model.load_state_dict(load_checkpoint(stage_dir / "best.pth")["model"])
        row = {"stage": stage, "amount": amount, **_measure(run, method), "finetune_epochs": pcfg.finetune_epochs,
               "finetune_time_s": time.time() - t0, "val_acc_before_finetune": before["val_acc"],
               "val_loss_before_finetune": before["val_loss"]}
        weights = _cpu_state(run.model)
        save_checkpoint({"config": stage_cfg.to_dict(), "model": weights, "epoch": pcfg.finetune_epochs},
                        stage_dir / "stage.pth")
        rows.append(row)
        write_rows(csv_path, rows, CSV_FIELDS)
        plot(rows, output / "prune.png", method)
        log(_row_line(row))
    if run is None:  # every stage was done before this call: the last stage's weights, with their masks
        run = _Model.build(stage_cfg, load_into(weights))
    # The masks become the weights: a plain model whose pruned weights are exact zeros.
    targets = prunable(run.model, method)
    make_permanent(targets)
    reached, _ = sparsity(targets)
    if abs(reached - rows[-1]["sparsity"]) > 1e-9:  # make_permanent must not change a single weight
        raise DataError(f"{output}: sparsity changed from {rows[-1]['sparsity']:.6f} to {reached:.6f} when the "
                        "masks were made permanent; the stage checkpoints are inconsistent — use a new --output")
    save_checkpoint({"config": base_cfg.to_dict(), "model": _cpu_state(run.model),
                     "epoch": int(state["epoch"]) + pcfg.finetune_epochs * len(pcfg.amounts),
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

