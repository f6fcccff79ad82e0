"""The resolved run configuration: typed, frozen, validated once, saved with every run (config.yaml, checkpoints)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dali_pipes import BACKENDS, DATASETS, ConfigError, resolve_augment
from dali_pipes.config import recipe_fields

from dali_pipes.checks import check_bool, check_choice, check_int, check_number, invalid

AMP_DTYPES = ("float16", "bfloat16")
DEVICES = ("auto", "cuda", "cpu")
OPTIMIZERS = ("sgd", "adamw")
SEED_MAX = 2**64 - 1  # torch.manual_seed and torch.Generator take unsigned 64-bit seeds
# What each optimizer's options resolve to when not given. SGD: the seed recipe (lr per 128 images, scaled linearly
# with the global batch). AdamW: DeiT's and timm's decoupled weight decay 0.05, and Adam's customary lr 1e-3 per 128
# images (not tuned for this recipe), scaled with the square root of the global batch (timm's rule for adaptive
# optimizers). AdamW has betas (0.9, 0.999), not momentum.
OPT_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr_base": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True},
    "adamw": {"lr_base": 1e-3, "weight_decay": 0.05, "nesterov": False},
}
LR_BASE_BATCH = 128  # lr_base is the peak LR for a global batch of this many images


def default_warmup_epochs(epochs: int) -> float:
    """Warmup when none is given: 5% of the run, at most 5 epochs (100 epochs: 5; 15 epochs: 0.75).

    A fixed 5 epochs suits the 100-epoch recipe but takes a third of a 15-epoch run, where it cost accuracy (15
    epochs on a small real dataset: best val 96.7% with warmup 5 against 98.3% with warmup 1)."""
    return min(5.0, epochs / 20)


@dataclass(frozen=True)
class TrainConfig:
    """Every `dali-train` option. Defaults are the full recipe of the seed chapter's 4.7 for CIFAR-10 ResNet-18."""

    dataset: str = "cifar10"
    data_dir: str = "./data"
    model: str = "resnet18"
    # Starting weights of a new run: a local .safetensors or torch state dict ("" : random init). Read once, when
    # the run starts (a resume continues from its checkpoint); a head of another class count is replaced.
    pretrained: str = ""
    epochs: int = 100
    batch_size: int = 128  # per process
    opt: str = "sgd"
    # None: resolved from `opt` (OPT_DEFAULTS), so config.yaml and checkpoints hold the values the run used.
    # lr_base is the peak LR for a global batch of 128 (LR_BASE_BATCH) images; `lr`, the peak LR the run trains
    # with, is lr_base scaled to the run's global batch (batch_size x processes) when not given: linearly for SGD,
    # with the square root for AdamW (timm's rule for adaptive optimizers). The run resolves it when it starts
    # (scaled_lr), so config.yaml and the checkpoints hold the LR used.
    lr_base: float | None = None
    lr: float | None = None
    momentum: float | None = None  # SGD only
    weight_decay: float | None = None
    nesterov: bool | None = None  # SGD only
    # Linear warmup from 0, per step, then cosine to 0 (capped at half the run). None: scaled with the schedule,
    # default_warmup_epochs(epochs) — 5 epochs for the 100-epoch recipe, not a third of a 15-epoch run. The value
    # is resolved here, so config.yaml and checkpoints hold the number the run used.
    warmup_epochs: float | None = None
    # A preset name ("weak+autoaugment") or a recipe mapping ({preset: standard, erase_p: 0.25}); a mapping is
    # stored resolved to every field (dali_pipes.config.recipe_fields), which is what config.yaml and resume see.
    augment: str | dict[str, Any] = "weak+autoaugment"
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_prob: float = 0.5
    switch_prob: float = 0.5
    mix_mode: str = "batch"
    label_smoothing: float = 0.1
    clip_grad: float = 0.0  # max global L2 norm of the gradients (after unscaling); 0: no clipping
    drop_path: float = 0.05
    amp: bool = True  # autocast (and GradScaler for float16); on the CPU, bfloat16 is the dtype that autocast has
    amp_dtype: str = "float16"
    channels_last: bool = True
    compile: bool = False
    # cuDNN/cuBLAS kernels chosen for reproducibility: a GPU run then resumes bit for bit (cudnn.benchmark off,
    # deterministic algorithms, a fixed cuBLAS workspace). Off: cuDNN benchmarks its kernels (faster, not
    # reproducible run to run). CPU runs are reproducible either way.
    deterministic: bool = False
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch
    backend: str = "dali"
    device: str = "auto"
    patience: int = 20  # epochs without a better val accuracy before stopping; 0 disables early stopping
    # Checkpoints of the best epochs kept in the run directory (by val accuracy, the better of the raw and EMA
    # weights): 1, best.pth only; K > 1, also best-epochNNN.pth of each of the K best (best.pth links the best one).
    keep_best: int = 1
    output: str = ""  # run directory; empty: runs/<YYYYmmdd-HHMMSS>-<model>-<dataset>
    seed: int = 0
    num_samples: int = 0  # synthetic dataset: training split size (0: CIFAR-10's 50,000; val is a fifth)
    num_threads: int = 0  # DALI threads / DataLoader workers (0: this process's share of the cores)
    # Samples per DALI graph iteration, split into training batches (0: about 2**20 pixels' worth, 1024 CIFAR
    # images). DALI pays per operator per iteration, so small images need large DALI batches to be fast.
    dali_batch_size: int = 0
    image_size: int = 0  # side of the training crop (0: the dataset's, 224 for image folders; arrays keep theirs)
    tensorboard: bool = True  # TensorBoard event files in the run directory (rank 0); a config without it: True
    # EMA of the weights (training/ema.py): decay per optimizer step (0: off), applied as decay**ema_every every
    # ema_every steps; with ema_warmup the decay is min(ema_decay, (1 + step) / (10 + step)).
    ema_decay: float = 0.0
    ema_every: int = 32
    ema_warmup: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.output, str) and self.output.startswith("~"):
            # a quoted '~/runs/x' reaches us unexpanded: the user means their home, not a folder named "~"
            object.__setattr__(self, "output", os.path.expanduser(self.output))
        # an unknown opt is refused by _validate
        for name, value in (OPT_DEFAULTS.get(self.opt, {}) if isinstance(self.opt, str) else {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.warmup_epochs is None and isinstance(self.epochs, int) and not isinstance(self.epochs, bool):
            object.__setattr__(self, "warmup_epochs", default_warmup_epochs(self.epochs))
        if isinstance(self.augment, Mapping):
            try:
                object.__setattr__(self, "augment", recipe_fields(self.augment))
            except ConfigError as e:
                raise ConfigError(f"--augment: {e}") from None
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; another `opt` resolves the values it sets (lr, weight decay...) afresh unless
        `changes` gives them too."""
        if changes.get("opt", self.opt) != self.opt:
            changes = {**{name: None for name in ("lr_base", "lr", "momentum", "weight_decay", "nesterov")},
                       **changes}
        return replace(self, **changes)

    def scaled_lr(self, world_size: int = 1) -> float:
        """The peak LR on `world_size` processes: `lr` when given, else lr_base scaled from a global batch of
        LR_BASE_BATCH to batch_size x world_size (linear for SGD, square root for AdamW)."""
        if self.lr is not None:
            return float(self.lr)
        ratio = self.batch_size * world_size / LR_BASE_BATCH
        return float(self.lr_base) * (ratio if self.opt == "sgd" else math.sqrt(ratio))


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its data directory (and --pretrained file) made absolute (``~`` expanded), as a new run saves it:
    a resume from another working directory must read the data the run started on, not whatever lies at ``./data``
    there."""
    pretrained = os.path.normpath(Path(cfg.pretrained).expanduser().absolute()) if cfg.pretrained else ""
    return cfg.replace(data_dir=os.path.normpath(Path(cfg.data_dir).expanduser().absolute()), pretrained=pretrained)


def _validate(c: TrainConfig) -> None:
    from .choices import MIX_MODES
    from .choices import model_source

    def label(option: str) -> str:
        return "--" + option.replace("_", "-")

    def num(option: str, lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False) -> None:
        check_number(label(option), getattr(c, option), lo, hi, lo_open=lo_open, hi_open=hi_open)

    def integer(option: str, lo: int, hi: int | None = None, note: str = "") -> None:
        check_int(label(option), getattr(c, option), lo, hi, note=note)

    def choice(option: str, options: tuple[str, ...]) -> None:
        check_choice(label(option), getattr(c, option), options)

    choice("dataset", DATASETS)
    model_source(c.model)  # a name no source knows: one line saying where to find valid names
    if not isinstance(c.pretrained, str):
        raise invalid(label("pretrained"), c.pretrained, "expected the path of a local weights file")
    choice("backend", BACKENDS)
    choice("device", DEVICES)
    choice("amp_dtype", AMP_DTYPES)
    choice("mix_mode", MIX_MODES)
    choice("opt", OPTIMIZERS)
    integer("epochs", 1)
    integer("batch_size", 1)
    integer("patience", 0)
    integer("keep_best", 1)
    integer("seed", 0, SEED_MAX, "(torch's seeds are unsigned 64-bit)")
    integer("num_samples", 0)
    integer("num_threads", 0)
    integer("dali_batch_size", 0)
    integer("image_size", 0)
    integer("ema_every", 1)
    if 0 < c.image_size < 8 or c.image_size > 4096:
        raise invalid(label("image_size"), c.image_size,
                      "expected 0 (the dataset's size) or a side in [8, 4096] pixels")
    num("lr_base", 0.0, lo_open=True)
    if c.lr is not None:
        num("lr", 0.0, lo_open=True)
    num("weight_decay", 0.0)
    num("ema_decay", 0.0, 1.0, hi_open=True)
    num("warmup_epochs", 0.0)
    if c.warmup_epochs > c.epochs:
        raise invalid(label("warmup_epochs"), c.warmup_epochs,
                      f"longer than the run (--epochs {c.epochs}): the LR would never reach --lr")
    num("clip_grad", 0.0)
    num("mixup_alpha", 0.0)
    num("cutmix_alpha", 0.0)
    num("mix_prob", 0.0, 1.0)
    num("switch_prob", 0.0, 1.0)
    num("label_smoothing", 0.0, 1.0, hi_open=True)
    num("drop_path", 0.0, 1.0, hi_open=True)
    for flag in ("nesterov", "amp", "channels_last", "compile", "deterministic", "sync_bn", "tensorboard",
                 "ema_warmup"):
        check_bool(label(flag), getattr(c, flag))
    if c.opt == "sgd":
        num("momentum", 0.0, 1.0, hi_open=True)
        if c.nesterov and c.momentum == 0:
            raise invalid("--nesterov", c.nesterov, "Nesterov momentum needs --momentum > 0")
    elif c.momentum is not None:
        raise invalid("--momentum", c.momentum, f"--opt {c.opt} has no momentum option (its betas are (0.9, "
                                                "0.999)); drop --momentum or use --opt sgd")
    elif c.nesterov:
        raise invalid("--nesterov", c.nesterov, f"Nesterov momentum is SGD's; drop --nesterov with --opt {c.opt}")
    try:
        resolve_augment(c.augment)
    except ConfigError as e:
        raise ConfigError(f"--augment: {e}") from None
