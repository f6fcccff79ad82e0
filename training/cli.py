"""`dali-train` and `dali-eval`: options -> TrainConfig -> one function call. User mistakes exit with one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dali_pipes import BACKENDS, DATASETS, ConfigError, DaliTrainError
from dali_pipes.config import parse_override

from .choices import PRUNE_METHODS, QUANT_MODES
from .config import DEVICES, TrainConfig
from .options import RUN, GroupedCommand, option, read_options, train_options


def _config_file(path: str) -> dict[str, Any]:
    return read_options(path, f"--config {path}")


def with_overrides(augment: str | dict[str, Any], overrides: tuple[str, ...]) -> str | dict[str, Any]:
    """The recipe `augment` (a preset name or a mapping) with each --aug FIELD=VALUE of `overrides` applied."""
    if not overrides:
        return augment
    recipe = dict(augment) if isinstance(augment, dict) else {"preset": augment}
    recipe.update(parse_override(o) for o in overrides)
    return recipe


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _run_guarded(fn: Callable[[], Any], *,
                 second_interrupt: str = "aborted by a second interrupt without saving; last.pth is as it was last "
                                         "written (the last finished epoch, or where an earlier stop saved it)",
                 interrupt: str = "interrupted; what was saved before is kept (rerun the command, or --resume a run "
                                  "directory that holds last.pth)") -> Any:
    """User errors: one line and exit 2 (options) or 1 (data, divergence); an interrupt exits 128+signal. Data the
    listing skips is one ``warning:`` line on stderr (a run also lists it in its folder).

    `second_interrupt` is the line for a second signal while a StopSignal waits for a safe stop; `interrupt` the
    line for Ctrl-C where none is installed (start-up, or a tool that has no safe stop)."""
    from dali_pipes.damage import decoder_warnings
    from dali_pipes.notices import skipped_to

    from .loop import Interrupted, SecondSignal
    from .loop.signals import Stopped, StopsRaise
    from .outputs.skipped import SkippedData

    try:
        # skipped data: one warning line each, whatever the warning filters; SIGTERM/SIGHUP end a command without
        # a safe stop of its own in one line
        # and JPEG damage that decoders tell only on stderr is named (dali_pipes.damage)
        with skipped_to(SkippedData()), StopsRaise(), decoder_warnings():
            return fn()
    except Interrupted as e:
        click.echo(e.line(), err=True)
        sys.exit(e.exit_code)
    except ConfigError as e:
        _fail(str(e), 2)
    except DaliTrainError as e:
        _fail(str(e), 1)
    except SecondSignal as e:
        resume = f"; continue with: dali-train --resume {e.run_dir}" if e.run_dir is not None else ""
        _fail(second_interrupt + resume, 128 + e.signum)
    except Stopped as e:
        _fail(f"{e.args[0]}: {interrupt}", 128 + e.signum)
    except KeyboardInterrupt:
        _fail(interrupt, 130)


@click.command(cls=GroupedCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@option(RUN, "--config", "config_file", type=str, default=None, help="YAML file whose keys are option names; "
        "options given on the command line win.")
@option(RUN, "--resume", type=str, default=None, help="Run directory or checkpoint to continue in place (its saved "
        "config; only --epochs may be given to extend it).")
@train_options
@click.pass_context
def main(click_ctx: click.Context, config_file: str | None, resume: str | None, **options: Any) -> None:
    """Train an image classifier (default: CIFAR-10 ResNet-18, the full recipe) with DALI augmentation."""
    from click.core import ParameterSource

    overrides = options.pop("aug_overrides")
    given = {k for k in options if click_ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if overrides:
        given.add("aug")

    def work() -> Any:
        from . import loop

        if resume is not None:
            extra = sorted(given - {"epochs"}) + (["config"] if config_file else [])
            if extra:
                dropped = ", ".join("--" + e.replace("_", "-") for e in extra)
                raise ConfigError(f"--resume continues the run with its saved config; drop {dropped} "
                                  "(only --epochs may extend it)")
            return loop.resume(resume, epochs=options["epochs"] if "epochs" in given else None)
        values = _config_file(config_file) if config_file else {}
        values.update({k: v for k, v in options.items() if k in given or k not in values})
        values["augment"] = with_overrides(values["augment"], overrides)
        return loop.fit(TrainConfig.from_dict(values, source=config_file or "options"))

    _run_guarded(work)


def _data_options(*, batch_size: int | None = None, num_threads: int | None = None) -> Callable:
    """Where the data of a tool that starts from a checkpoint comes from; each option defaults to the checkpoint's
    run, --batch-size and --num-threads to `batch_size` and `num_threads` where given (dali-eval's)."""
    checkpoints = "the checkpoint's"
    opts = [
        click.option("--dataset", type=click.Choice(DATASETS), default=None, show_default=checkpoints),
        click.option("--data-dir", default=None, show_default=checkpoints),
        click.option("--backend", type=click.Choice(BACKENDS), default=None, show_default=checkpoints),
        click.option("-b", "--batch-size", type=int, default=batch_size, show_default=batch_size or checkpoints,
                     help="No gradients to hold: larger than training's." if batch_size else None),
        click.option("--num-samples", type=int, default=None, show_default=checkpoints,
                     help="Synthetic train size (val is a fifth)."),
        click.option("-j", "--num-threads", type=int, default=num_threads,
                     show_default=checkpoints if num_threads is None else True,
                     help="DALI threads / DataLoader workers (0: the available cores, shared among torchrun's "
                          "processes on the node)."),
    ]

    def decorate(f: Callable) -> Callable:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def _checkpoint_path(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path / "best.pth" if path.is_dir() else path


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, help="A last.pth/best.pth, or a run directory (its best.pth).")
@_data_options(batch_size=256, num_threads=0)
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@click.option("--tta/--no-tta", default=False, help="Average predictions over the image and its mirror.")
@click.option("--weights", type=click.Choice(["model", "ema"]), default=None,
              show_default="best.pth: whichever scored the best accuracy (summary.json's best_weights), "
                           "best-epochNNN.pth: whichever scored its epoch; other checkpoints: model",
              help="The trained weights or their EMA (a run with --ema-decay).")
def eval_main(checkpoint: str, device: str, tta: bool, weights: str | None, **data: Any) -> None:
    """Report validation accuracy and loss of a dali-train checkpoint."""

    def work() -> dict:
        from .tools import evaluate_checkpoint

        return evaluate_checkpoint(_checkpoint_path(checkpoint), device=device, tta=tta, weights=weights, **data)

    result = _run_guarded(work)
    click.echo(json.dumps(result))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, help="A dali-train checkpoint, or a run directory (its best.pth).")
@_data_options()
@click.option("--mode", type=click.Choice(QUANT_MODES), default="static",
              help="static: activation scales from calibration; dynamic: computed per batch at run time.")
@click.option("--calibration-batches", type=int, default=32, help="Training batches (evaluation pipeline) that "
              "calibrate static quantization.")
@click.option("--quant-backend", default="x86", help="Quantized kernels to target (x86: oneDNN via inductor).")
@click.option("--latency/--no-latency", default=True, help="Time both models on the CPU (compiles each).")
@click.option("--latency-repeats", type=int, default=20, help="Timed calls per batch size (median reported).")
@click.option("--output", required=True, help="Directory for model_int8.pth, model_fp32.pth, quantize.json.")
def quantize_main(checkpoint: str, mode: str, calibration_batches: int, quant_backend: str, latency: bool,
                  latency_repeats: int, output: str, **data: Any) -> None:
    """Post-training int8 quantization of a dali-train checkpoint: size, accuracy and CPU latency, measured."""

    def work() -> dict:
        from .tools import QuantizeConfig, run_quantize

        qcfg = QuantizeConfig(mode=mode, calibration_batches=calibration_batches, quant_backend=quant_backend,
                              latency=latency, latency_repeats=latency_repeats)
        return run_quantize(_checkpoint_path(checkpoint), Path(output).expanduser(), qcfg, log=click.echo, **data)

    _run_guarded(work, interrupt="interrupted before quantize.json was written: --output is unfinished (each file in "
                                 "it is whole or absent); run the same command again")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, help="A dali-train checkpoint, or a run directory (its best.pth).")
@_data_options()
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@click.option("--amount", default="0.1,0.2,0.3,0.5", help="Sparsity targets of the prunable weights, one stage "
              "each, increasing.")
@click.option("--method", type=click.Choice(PRUNE_METHODS), default="l1-unstructured",
              help="Per-layer or global weight magnitude, or whole conv filters (L2).")
@click.option("--finetune-epochs", type=int, default=5, help="Fine-tuning epochs after each pruning step.")
@click.option("--finetune-lr", type=float, default=0.01, help="Peak LR of each stage's cosine schedule.")
@click.option("--output", required=True, help="Directory for prune.csv, prune.png, pruned.pth and the stage runs "
              "(the same command with the same --output continues an interrupted run).")
def prune_main(checkpoint: str, device: str, amount: str, method: str, finetune_epochs: int, finetune_lr: float,
               output: str, **data: Any) -> None:
    """Gradual magnitude pruning with fine-tuning after each step; measures sparsity against accuracy."""

    def work() -> list:
        from .tools import PruneConfig, parse_amounts, run_prune

        pcfg = PruneConfig(amounts=parse_amounts(amount), method=method, finetune_epochs=finetune_epochs,
                           finetune_lr=finetune_lr)
        return run_prune(_checkpoint_path(checkpoint), Path(output).expanduser(), pcfg, device=device, log=click.echo,
                         **data)

    _run_guarded(work, second_interrupt="aborted by a second interrupt; run the same command again to continue "
                                        "from the last completed epoch")
