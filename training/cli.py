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

from .choices import MIX_MODES, MODELS, PRUNE_METHODS, QUANT_MODES
from .config import AMP_DTYPES, DEVICES, OPTIMIZERS, TrainConfig
from .options import read_options

_D = TrainConfig()  # defaults shown in --help come from the config itself


def _options(f: Callable) -> Callable:
    opts = [
        click.option("--dataset", type=click.Choice(DATASETS), default=_D.dataset,
                     help="Dataset: official CIFAR layouts, an image folder, or synthetic."),
        click.option("--data-dir", default=_D.data_dir, help="Where the dataset lives (CIFAR is downloaded here)."),
        click.option("--model", default=_D.model,
                     help=f"{', '.join(MODELS)} (this project's), any timm model name (resnet10t, convnext_tiny, "
                          "...), or tv_<name> for a torchvision classification model (tv_mobilenet_v3_small); "
                          "randomly initialised unless --pretrained."),
        click.option("--pretrained", default=_D.pretrained, metavar="PATH",
                     help="Start from the weights in this local file (.safetensors, or a torch state dict read with "
                          "weights_only); a classifier head of another class count is replaced. Nothing is "
                          "downloaded."),
        click.option("--epochs", type=int, default=_D.epochs),
        click.option("--batch-size", type=int, default=_D.batch_size, help="Per process."),
        click.option("--opt", type=click.Choice(OPTIMIZERS), default=_D.opt,
                     help="sgd: momentum, every parameter decays. adamw: decoupled weight decay on conv/linear "
                          "weights only (none on biases and norm weights), betas (0.9, 0.999)."),
        click.option("--lr-base", type=float, default=None, show_default="sgd 0.1, adamw 1e-3",
                     help="Peak LR for a global batch of 128 images, scaled to the run's global batch (--batch-size "
                          "x processes): linearly for sgd, with the square root for adamw."),
        click.option("--lr", type=float, default=None, show_default="--lr-base scaled to the global batch",
                     help="The peak LR itself, not scaled."),
        click.option("--momentum", type=float, default=None, show_default="sgd 0.9; adamw has none"),
        click.option("--weight-decay", type=float, default=None, show_default="sgd 5e-4, adamw 0.05"),
        click.option("--nesterov/--no-nesterov", default=None, show_default="on with sgd; adamw has none"),
        click.option("--warmup-epochs", type=float, default=None, show_default="5% of --epochs, at most 5",
                     help="Linear LR warmup (then cosine to 0); a value given is used as is."),
        click.option("--augment", default=_D.augment,
                     help="none|weak|standard|strong, optionally +autoaugment|+randaugment|+trivialaugment; in "
                          "--config also a mapping {preset: standard, erase_p: 0.25, ...}."),
        click.option("--aug", "aug_overrides", multiple=True, metavar="FIELD=VALUE",
                     help="Override one field of the recipe (repeatable), e.g. --aug erase_p=0.25 --aug "
                          "affine_scale=[0.9,1.1]; see dali_pipes.AugmentConfig for the fields."),
        click.option("--mixup-alpha", type=float, default=_D.mixup_alpha, help="0 disables Mixup."),
        click.option("--cutmix-alpha", type=float, default=_D.cutmix_alpha, help="0 disables CutMix."),
        click.option("--mix-prob", type=float, default=_D.mix_prob, help="Probability a batch is mixed."),
        click.option("--switch-prob", type=float, default=_D.switch_prob, help="CutMix instead of Mixup."),
        click.option("--mix-mode", type=click.Choice(MIX_MODES), default=_D.mix_mode),
        click.option("--label-smoothing", type=float, default=_D.label_smoothing),
        click.option("--clip-grad", type=float, default=_D.clip_grad,
                     help="Clip the global grad norm (L2, after unscaling) to this; 0 disables clipping."),
        click.option("--drop-path", type=float, default=_D.drop_path, help="Stochastic depth at the last block."),
        click.option("--amp/--no-amp", default=_D.amp, help="Mixed precision (bfloat16 on the CPU)."),
        click.option("--amp-dtype", type=click.Choice(AMP_DTYPES), default=_D.amp_dtype),
        click.option("--channels-last/--no-channels-last", default=_D.channels_last),
        click.option("--compile/--no-compile", default=_D.compile, help="torch.compile the model."),
        click.option("--deterministic/--no-deterministic", default=_D.deterministic,
                     help="Reproducible cuDNN/cuBLAS kernels, so that a GPU run resumes bit for bit (slower: no "
                          "cuDNN autotuning). CPU runs are reproducible either way."),
        click.option("--sync-bn/--no-sync-bn", default=_D.sync_bn, help="SyncBatchNorm under torchrun."),
        click.option("--backend", type=click.Choice(BACKENDS), default=_D.backend),
        click.option("--device", type=click.Choice(DEVICES), default=_D.device),
        click.option("--patience", type=int, default=_D.patience, help="Early stopping; 0 disables it."),
        click.option("--output", default=_D.output, help="Run directory [default: runs/<time>-<model>-<dataset>]."),
        click.option("--seed", type=int, default=_D.seed),
        click.option("--num-samples", type=int, default=_D.num_samples, help="Synthetic train size (0: 50,000)."),
        click.option("--num-threads", type=int, default=_D.num_threads,
                     help="DALI threads / DataLoader workers (0: the available cores, shared among torchrun's "
                          "processes on the node)."),
        click.option("--image-size", type=int, default=_D.image_size,
                     help="Side of the training crop in pixels (0: the dataset's; 224 for image folders)."),
        click.option("--ema-decay", type=float, default=_D.ema_decay,
                     help="EMA of the weights, decay per optimizer step (0: off; 0.9998 for the 100-epoch recipe "
                          "at batch 128, a time constant of 5,000 steps); evaluated each epoch beside the raw "
                          "weights, and best.pth keeps whichever scores better."),
        click.option("--ema-every", type=int, default=_D.ema_every,
                     help="Update the EMA every N optimizer steps, with the decay raised to the N-th power."),
        click.option("--ema-warmup/--no-ema-warmup", default=_D.ema_warmup,
                     help="EMA decay min(--ema-decay, (1 + step) / (10 + step)): the average starts close to the "
                          "weights."),
        click.option("--dali-batch-size", type=int, default=_D.dali_batch_size,
                     help="Samples per DALI graph iteration, split into training batches (0: about 2**20 pixels' "
                          "worth, 1024 CIFAR images)."),
        click.option("--tensorboard/--no-tensorboard", default=_D.tensorboard,
                     help="TensorBoard event files in the run directory (tensorboard --logdir runs)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_file", type=str, default=None, help="YAML file whose keys are option names; "
              "options given on the command line win.")
@click.option("--resume", type=str, default=None, help="Run directory or checkpoint to continue in place "
              "(its saved config; only --epochs may be given to extend it).")
@_options
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


def _data_options(f: Callable) -> Callable:
    """Where the data of a tool that starts from a checkpoint comes from; each defaults to the checkpoint's run."""
    opts = [
        click.option("--dataset", type=click.Choice(DATASETS), default=None,
                     help="Default: the checkpoint's dataset."),
        click.option("--data-dir", default=None, help="Default: the checkpoint's data directory."),
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Default: the checkpoint's."),
        click.option("--batch-size", type=int, default=None,
                     help="Default: 256 for dali-eval (no gradients to hold), the checkpoint's otherwise."),
        click.option("--num-samples", type=int, default=None,
                     help="Synthetic train size (val is a fifth). Default: the checkpoint's."),
        click.option("--num-threads", type=int, default=None,
                     help="DALI threads / DataLoader workers (0: the available cores, shared among torchrun's "
                          "processes on the node). Default: 0 for dali-eval, the checkpoint's otherwise."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _checkpoint_path(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path / "best.pth" if path.is_dir() else path


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, help="A last.pth/best.pth, or a run directory (its best.pth).")
@_data_options
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@click.option("--tta/--no-tta", default=False, help="Average predictions over the image and its mirror.")
@click.option("--weights", type=click.Choice(["model", "ema"]), default=None,
              show_default="best.pth: whichever scored the best accuracy (summary.json's best_weights); other "
                           "checkpoints: model",
              help="The trained weights or their EMA (a run with --ema-decay).")
def eval_main(checkpoint: str, device: str, tta: bool, weights: str | None, **data: Any) -> None:
    """Report validation accuracy and loss of a dali-train checkpoint."""

    def work() -> dict:
        from .tools import evaluate_checkpoint

        return evaluate_checkpoint(_checkpoint_path(checkpoint), device=device, tta=tta, weights=weights,
                                   **{**data, "batch_size": 256 if data["batch_size"] is None else data["batch_size"]})

    result = _run_guarded(work)
    click.echo(json.dumps(result))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, help="A dali-train checkpoint, or a run directory (its best.pth).")
@_data_options
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
@_data_options
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
