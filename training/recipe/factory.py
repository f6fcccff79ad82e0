"""Factories: what a config builds — the device, the loaders, the model, the LR schedule and the step context.

Used by `fit` (run.build_run), dali-eval, dali-quantize, dali-prune and benchmarks/train_throughput.py, so each
rule lives once: the validation split of a synthetic run is a fifth of --num-samples; ranks other than 0 wait for
rank 0 to download CIFAR; the LR is a pure function of the step.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dali_pipes import create_loader
from dali_pipes.loader import cores_per_process, default_num_threads
from dali_pipes.loader import resolve_device as _resolve_device
from dali_pipes.plan import derive_seed

from .. import distributed
from ..config import TrainConfig
from ..distributed import World
from .ema import ModelEma
from .engine import StepContext
from .mixing import MixConfig, Mixer
from .models import create_model


def resolve_device(name: str) -> torch.device:
    """The run's device from --device (dali_pipes' one rule, errors naming the option)."""
    return _resolve_device(name, option="--device")


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None when AMP is off. On the CPU, autocast runs in bfloat16 (float16 CPU kernels are few and slow)."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16
    return torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16


def resolved_config(cfg: TrainConfig, device: torch.device, world_size: int = 1) -> TrainConfig:
    """`cfg` as it runs on `device` with `world_size` processes, what config.yaml and the checkpoints keep: the
    device's type for "auto", the dtype autocast uses (bfloat16 on the CPU), the threads (DALI) or workers
    (torchvision) the loaders get for 0, and the peak LR (lr_base scaled to the global batch unless --lr was
    given). A resume continues with these, wherever it runs."""
    threads = cfg.num_threads or (loader_threads(cfg, device) if cfg.backend == "dali" else cores_per_process())
    return cfg.replace(device=device.type, amp_dtype=amp_dtype_name(cfg, device), num_threads=threads,
                       lr=cfg.scaled_lr(world_size))


def amp_dtype_name(cfg: TrainConfig, device: torch.device) -> str:
    """The amp_dtype option that names what autocast uses for `cfg` on `device` (cfg's own when AMP is off)."""
    amp = resolve_amp_dtype(cfg, device)
    return str(amp).removeprefix("torch.") if amp is not None else cfg.amp_dtype


def device_here(name: str) -> torch.device:
    """The device type `name` ("auto", "cuda", "cpu") means on this machine, for comparing configs: "auto" by the
    one device rule, and "cuda" kept as asked where no CUDA device is (a comparison refuses nothing)."""
    return torch.device(_resolve_device("auto").type) if name == "auto" else torch.device(torch.device(name).type)


# cuBLAS picks its reduction order by workspace; one fixed configuration (4096 KiB x 8 buffers, NVIDIA's documented
# value for reproducible GEMMs) makes it the same run to run. Read when cuBLAS first runs in the process.
CUBLAS_DETERMINISTIC = ":4096:8"


@contextlib.contextmanager
def kernel_settings(*, deterministic: bool) -> Iterator[None]:
    """cuDNN/cuBLAS kernel choice for training, restored on exit (the settings are process-wide).

    Default: ``cudnn.benchmark`` on, so cuDNN times its convolution algorithms once per input shape and keeps the
    fastest (the shapes of an epoch are fixed, so this is paid in the first steps). `deterministic`: benchmark
    off, cuDNN's deterministic algorithms, ``torch.use_deterministic_algorithms`` and a fixed cuBLAS workspace,
    so that a GPU run resumed from a checkpoint lands on the straight run's weights bit for bit. Ops without a
    deterministic CUDA kernel warn instead of failing (``warn_only``): here that is AdaptiveAvgPool2d's backward,
    whose atomic adds each input element receives exactly once with a 1x1 output, so its result does not vary.
    The CPU kernels are deterministic either way."""
    cudnn = torch.backends.cudnn
    flags = cudnn.benchmark, cudnn.deterministic
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = flags
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def split_samples(cfg: TrainConfig, split: str) -> int | None:
    """Samples of `split` for a synthetic run (--num-samples trains, a fifth of it validates); None: the dataset's."""
    if not cfg.num_samples:
        return None
    return cfg.num_samples if split == "train" else max(1, cfg.num_samples // 5)


def loader_threads(cfg: TrainConfig, device: torch.device) -> int:
    """The DALI threads a run's loaders use: --num-threads, else dali_pipes' rule (default_num_threads: this
    process's share of the cores, one left to the training loop when the graph runs on the GPU)."""
    return cfg.num_threads or default_num_threads(device)


def _loader_options(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    workers = cfg.num_threads or None  # None: create_loader's default, the cores shared among local ranks
    return dict(dataset=cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, backend=cfg.backend,
                device=device, augment=cfg.augment, seed=cfg.seed, num_threads=loader_threads(cfg, device),
                num_workers=workers,
                dali_batch_size=cfg.dali_batch_size or None, image_size=cfg.image_size or None)


def create_loaders(cfg: TrainConfig, device: torch.device, world: World) -> tuple[Any, Any]:
    """This rank's shards: training shards of equal size (ranks step in lockstep), validation every sample once."""
    common = dict(_loader_options(cfg, device), shard_id=world.rank, num_shards=world.size)
    if world.distributed and not world.is_main:  # let rank 0 download CIFAR alone before the others read it
        distributed.any_rank(False, world, device)
    try:
        train = create_loader(split="train", num_samples=split_samples(cfg, "train"),
                              even_shards=world.distributed, **common)
    finally:
        if world.distributed and world.is_main:
            distributed.any_rank(False, world, device)
    val = create_loader(split="val", num_samples=split_samples(cfg, "val"), **common)
    return train, val


def data_loader(cfg: TrainConfig, device: torch.device, split: str = "val", *, augment: str | None = None) -> Any:
    """One unsharded loader of `split` (the tools that start from a checkpoint: eval, quantize, prune)."""
    options = _loader_options(cfg, device)
    if augment is not None:
        options["augment"] = augment
    return create_loader(split=split, num_samples=split_samples(cfg, split), **options)


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, *, world: World | None = None,
                prepare: Callable[[torch.nn.Module], None] | None = None,
                image_size: int | None = None) -> torch.nn.Module:
    """The model the config names, on `device` in its memory format; `prepare` may change it in place first
    (dali-prune puts pruning masks on it) before anything sees its parameters. Under DDP with --sync-bn its
    BatchNorms become SyncBatchNorm. `image_size` (the loaders' side) refuses a CIFAR-stem model on large images."""
    model = create_model(cfg.model, num_classes=num_classes, drop_path=cfg.drop_path,
                         image_size=image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if prepare is not None:
        prepare(model)
    if world is not None and world.distributed and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 0 over `warmup_steps`, then cosine from 1 to 0 at `total_steps` (a pure function)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The LR of each optimizer step of a `cfg.epochs` run: peak `cfg.lr` after `cfg.warmup_epochs` of warmup."""
    total = cfg.epochs * steps_per_epoch
    # A run shorter than twice its warmup (a smoke test) warms up over half of it at most.
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 2)

    def lr_at(step: int) -> float:
        return cfg.lr * lr_factor(step, total_steps=total, warmup_steps=warmup)

    return lr_at


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups, as timm's filter_bias_and_bn makes them (torchvision's --norm-weight-decay 0 and
    --bias-weight-decay 0 likewise): weights of ndim >= 2 (convolutions, linear layers) decay with `weight_decay`;
    biases and normalisation weights (ndim <= 1) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def create_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (the seed recipe: one group, every parameter decays) or AdamW (decay_groups). The LR set here is
    overwritten before every step by the schedule (engine.set_lr), in every group alike.

    Both use torch's fused kernels, on CUDA and on the CPU alike. A fused optimizer implements AMP scaling itself:
    GradScaler passes it the device tensor ``found_inf`` and it skips the update on the device, where any other
    optimizer makes GradScaler read ``found_inf`` on the host (one sync per fp16 step). On the CPU they are also
    the fastest (ResNet-18, 11.2M parameters, one core: SGD 5.4 ms per step fused, 17 ms foreach, 39 ms
    for-loop; AdamW 7.5 / 44 / 50 ms)."""
    if cfg.opt == "adamw":
        return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.scaled_lr(), fused=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.scaled_lr(), momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, fused=True)
    if cfg.momentum:
        # Fused SGD allocates its momentum buffers uninitialised (empty_like) at its first step and leaves them so
        # when GradScaler's found_inf makes it skip that step, as fp16 runs' first steps often are: the next step
        # then adds garbage (seen: 2e15 and nan, torch 2.14). Zeros give the first step's own result (momentum *
        # 0 + grad = grad, dampening 0), so the update is unchanged and a skipped first step leaves them zero.
        for p in optimizer.param_groups[0]["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def compile_model(net: torch.nn.Module, *, backend: Any = "inductor") -> torch.nn.Module:
    """`net` under torch.compile with static shapes (``dynamic=False``): each batch shape gets a graph of its own.

    An epoch has two shapes, the full batch and the short last one (training keeps it). Left to its default,
    dynamo recompiles at the second shape with a symbolic batch size and that graph then serves every later step,
    full batches included. Static, the run compiles twice, once per shape, and every step runs a graph
    specialised to its shape; the last batch's graph is reused every epoch. Padding the last batch instead would
    change its BatchNorm statistics and Mixup partners, and dropping it the epoch's samples. `backend`: torch's
    (a test passes a counting one)."""
    return torch.compile(net, dynamic=False, backend=backend)


def step_context(cfg: TrainConfig, model: torch.nn.Module, *, num_classes: int, steps_per_epoch: int,
                 device: torch.device, world: World) -> StepContext:
    """Optimizer, LR schedule, scaler, mixer, the EMA of the weights (with --ema-decay) and the network the step
    runs (DDP- and compile-wrapped as asked).
    Seeds this rank's drop-path stream; the mixer has a generator of its own."""
    torch.manual_seed(derive_seed(cfg.seed, world.rank, 1))  # drop path: a stream of its own per rank
    if cfg.lr is None:  # a run resolved it already (resolved_config); a benchmark's step may not have
        cfg = cfg.replace(lr=cfg.scaled_lr(world.size))
    optimizer = create_optimizer(cfg, model)
    amp_dtype = resolve_amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    mixer = Mixer(MixConfig(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                            switch_prob=cfg.switch_prob, mode=cfg.mix_mode, label_smoothing=cfg.label_smoothing,
                            num_classes=num_classes),
                  generator=torch.Generator().manual_seed(derive_seed(cfg.seed, world.rank, 2)))
    net = model
    if world.distributed:
        # broadcast_buffers=False: DDP would broadcast rank 0's BatchNorm statistics before every forward; they are
        # copied once per epoch instead (distributed.sync_buffers, before evaluation and checkpoints). Rank 0's
        # statistics follow the same path either way (it receives its own), and training normalises with batch
        # statistics, so the weights and what is saved are unchanged: one broadcast per step less.
        # torch >= 2.14 names the per-forward half of it forward_sync_buffers and warns on broadcast_buffers; its
        # init sync of the buffers (from rank 0, like the weights) is what a run starts from anyway.
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else {"broadcast_buffers": False})
        net = ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
    if cfg.compile:
        net = compile_model(net)
    ema = (ModelEma(model, decay=cfg.ema_decay, every=cfg.ema_every, warmup=cfg.ema_warmup) if cfg.ema_decay > 0
           else None)
    return StepContext(net, optimizer, lr_schedule(cfg, steps_per_epoch), scaler, mixer, device, amp_dtype,
                       cfg.channels_last, clip_grad=cfg.clip_grad, ema=ema)
