"""dali-train's options: as typed on the command line (declared for click here, in the sections --help lists them
in) and as YAML option files, the one reader behind `dali-train --config` and `dali-ablate --study`.

Option files: keys are option names (``batch-size`` or ``batch_size``); YAML 1.1 reads ``5e-2`` (no dot) as a
string, which for a float option is plainly the number it spells. Read errors are one-line ConfigErrors naming the
option and file.

--help sections: click has no option groups; each option here is a `GroupedOption` that names its section, and a
`GroupedCommand` lists them section by section (in the order the sections first appear), the options of no section
(--help) last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import yaml

from dali_pipes import BACKENDS, DATASETS, ConfigError
from dali_pipes.strict_yaml import YamlRefused, load_yaml

from .choices import MIX_MODES, MODELS
from .config import AMP_DTYPES, DEVICES, OPTIMIZERS, TrainConfig

_FLOATS = frozenset(f.name for f in fields(TrainConfig) if f.type in ("float", "float | None"))


def read_yaml(path: str | Path, where: str) -> Any:
    """The document in `path` (None when empty); `where` ("--config FILE") starts every error."""
    try:
        return load_yaml(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror}); check the path") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not a text file (byte {e.start} is not UTF-8); give a YAML file") from None
    except YamlRefused as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None


def option_values(values: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """Option names normalized (``-`` -> ``_``) and float options given as YAML 1.1 strings made numbers; anything
    else is left for TrainConfig to validate (and name). `where` starts the error for an option given twice."""
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for given, value in values.items():
        key = str(given).replace("-", "_")
        if key in out:  # batch-size and batch_size: one option, and YAML would keep either silently
            raise ConfigError(f"{where}: option {key} is given twice (as {spelled[key]!r} and {given!r}); keep one")
        spelled[key] = given
        if key in _FLOATS and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def read_options(path: str | Path, where: str) -> dict[str, Any]:
    """A file of option values (a mapping; an empty file is no options)."""
    values = read_yaml(path, where)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of option names to values")
    return option_values(values, where)


class GroupedOption(click.Option):
    """A click option with the --help section (`group`) it is listed in."""

    def __init__(self, *decls: Any, group: str = "", **kwargs: Any) -> None:
        super().__init__(*decls, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose --help lists its options by section (GroupedOption.group), sections in the order they first
    appear; options of no section (--help) come last, under "Other options"."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "") or "", []).append(record)
        for name, records in sorted(sections.items(), key=lambda item: item[0] == ""):  # stable: keeps the order
            with formatter.section(name or "Other options"):
                formatter.write_dl(records)


def option(group: str, *decls: str, **kwargs: Any) -> Callable:
    """``click.option`` for an option listed in --help section `group`."""
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


_D = TrainConfig()  # the defaults --help shows come from the config itself
RUN, DATA, MODEL, OPTIM, AUGMENT, EMA, SPEED = ("Run", "Data", "Model", "Optimization", "Augmentation and mixing",
                                                "EMA of the weights", "Precision and speed")


def train_options(f: Callable) -> Callable:
    """dali-train's options (all but --config and --resume), section by section."""
    opts = [
        option(RUN, "--output", default=_D.output, show_default="runs/<time>-<model>-<dataset>",
               help="Run directory."),
        option(RUN, "--epochs", type=int, default=_D.epochs),
        option(RUN, "--patience", type=int, default=_D.patience, help="Early stopping; 0 disables it."),
        option(RUN, "--keep-best", type=int, default=_D.keep_best, metavar="K",
               help="Keep the checkpoints of the K best epochs (by val accuracy): best.pth, and for K > 1 also "
                    "best-epochNNN.pth of each (best.pth then links the best one's file)."),
        option(RUN, "--seed", type=int, default=_D.seed),
        option(RUN, "--device", type=click.Choice(DEVICES), default=_D.device),
        option(RUN, "--tensorboard/--no-tensorboard", default=_D.tensorboard,
               help="TensorBoard event files in the run directory (tensorboard --logdir runs)."),
        option(DATA, "--dataset", type=click.Choice(DATASETS), default=_D.dataset,
               help="Dataset: official CIFAR layouts, an image folder, or synthetic."),
        option(DATA, "--data-dir", default=_D.data_dir, help="Where the dataset lives (CIFAR is downloaded here)."),
        option(DATA, "--backend", type=click.Choice(BACKENDS), default=_D.backend),
        option(DATA, "--num-samples", type=int, default=_D.num_samples, help="Synthetic train size (0: 50,000)."),
        option(DATA, "--image-size", type=int, default=_D.image_size,
               help="Side of the training crop in pixels (0: the dataset's; 224 for image folders)."),
        option(DATA, "-j", "--num-threads", type=int, default=_D.num_threads,
               help="DALI threads / DataLoader workers (0: the available cores, shared among torchrun's processes "
                    "on the node)."),
        option(DATA, "--dali-batch-size", type=int, default=_D.dali_batch_size,
               help="Samples per DALI graph iteration, split into training batches (0: about 2**20 pixels' worth, "
                    "1024 CIFAR images)."),
        option(MODEL, "--model", default=_D.model,
               help=f"{', '.join(MODELS)} (this project's), any timm model name (resnet10t, convnext_tiny, ...), or "
                    "tv_<name> for a torchvision classification model (tv_mobilenet_v3_small); randomly "
                    "initialised unless --pretrained."),
        option(MODEL, "--pretrained", default=_D.pretrained, metavar="PATH", show_default="none",
               help="Start from the weights in this local file (.safetensors, or a torch state dict read with "
                    "weights_only); a classifier head of another class count is replaced. Nothing is downloaded."),
        option(MODEL, "--drop-path", type=float, default=_D.drop_path, help="Stochastic depth at the last block."),
        option(OPTIM, "-b", "--batch-size", type=int, default=_D.batch_size, help="Per process."),
        option(OPTIM, "--opt", type=click.Choice(OPTIMIZERS), default=_D.opt,
               help="sgd: momentum, every parameter decays. adamw: decoupled weight decay on conv/linear weights "
                    "only (none on biases and norm weights), betas (0.9, 0.999)."),
        option(OPTIM, "--lr-base", type=float, default=None, show_default="sgd 0.1, adamw 1e-3",
               help="Peak LR for a global batch of 128 images, scaled to the run's global batch (--batch-size x "
                    "processes): linearly for sgd, with the square root for adamw."),
        option(OPTIM, "--lr", type=float, default=None, show_default="--lr-base scaled to the global batch",
               help="The peak LR itself, not scaled."),
        option(OPTIM, "--momentum", type=float, default=None, show_default="sgd 0.9; adamw has none"),
        option(OPTIM, "--wd", "--weight-decay", "weight_decay", type=float, default=None,
               show_default="sgd 5e-4, adamw 0.05"),
        option(OPTIM, "--nesterov/--no-nesterov", default=None, show_default="on with sgd; adamw has none"),
        option(OPTIM, "--warmup-epochs", type=float, default=None, show_default="5% of --epochs, at most 5",
               help="Linear LR warmup (then cosine to 0); a value given is used as is."),
        option(OPTIM, "--clip-grad", type=float, default=_D.clip_grad,
               help="Clip the global grad norm (L2, after unscaling) to this; 0 disables clipping."),
        option(OPTIM, "--label-smoothing", type=float, default=_D.label_smoothing),
        option(AUGMENT, "--augment", default=_D.augment,
               help="none|weak|standard|strong, optionally +autoaugment|+randaugment|+trivialaugment; in --config "
                    "also a mapping {preset: standard, erase_p: 0.25, ...}."),
        option(AUGMENT, "--aug", "aug_overrides", multiple=True, metavar="FIELD=VALUE",
               help="Override one field of the recipe (repeatable), e.g. --aug erase_p=0.25 --aug "
                    "affine_scale=[0.9,1.1]; see dali_pipes.AugmentConfig for the fields."),
        option(AUGMENT, "--mixup-alpha", type=float, default=_D.mixup_alpha, help="0 disables Mixup."),
        option(AUGMENT, "--cutmix-alpha", type=float, default=_D.cutmix_alpha, help="0 disables CutMix."),
        option(AUGMENT, "--mix-prob", type=float, default=_D.mix_prob, help="Probability a batch is mixed."),
        option(AUGMENT, "--switch-prob", type=float, default=_D.switch_prob, help="CutMix instead of Mixup."),
        option(AUGMENT, "--mix-mode", type=click.Choice(MIX_MODES), default=_D.mix_mode),
        option(EMA, "--ema-decay", type=float, default=_D.ema_decay,
               help="EMA of the weights, decay per optimizer step (0: off; 0.9998 for the 100-epoch recipe at "
                    "batch 128, a time constant of 5,000 steps); evaluated each epoch beside the raw weights, and "
                    "best.pth keeps whichever scores better."),
        option(EMA, "--ema-every", type=int, default=_D.ema_every,
               help="Update the EMA every N optimizer steps, with the decay raised to the N-th power."),
        option(EMA, "--ema-warmup/--no-ema-warmup", default=_D.ema_warmup,
               help="EMA decay min(--ema-decay, (1 + step) / (10 + step)): the average starts close to the "
                    "weights."),
        option(SPEED, "--amp/--no-amp", default=_D.amp, help="Mixed precision (bfloat16 on the CPU)."),
        option(SPEED, "--amp-dtype", type=click.Choice(AMP_DTYPES), default=_D.amp_dtype),
        option(SPEED, "--channels-last/--no-channels-last", default=_D.channels_last),
        option(SPEED, "--compile/--no-compile", default=_D.compile, help="torch.compile the model."),
        option(SPEED, "--deterministic/--no-deterministic", default=_D.deterministic,
               help="Reproducible cuDNN/cuBLAS kernels, so that a GPU run resumes bit for bit (slower: no cuDNN "
                    "autotuning). CPU runs are reproducible either way."),
        option(SPEED, "--sync-bn/--no-sync-bn", default=_D.sync_bn, help="SyncBatchNorm under torchrun."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
