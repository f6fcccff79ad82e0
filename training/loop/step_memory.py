"""Will one training step fit in memory? An estimate before the first step, and a one-line refusal when it will not.

A step holds, per image of the batch, what autograd saves for the backward pass (the activations: most of a step's
memory) plus the batch itself. Both are measured, not modelled: a forward pass of a small probe batch through the
model, as the step runs it (train mode, autocast dtype, memory format), counts the bytes of every tensor autograd
saves (``torch.autograd.graph.saved_tensors_hooks``); nothing runs backward, and the probe leaves the model's
buffers (BatchNorm statistics) and the RNG streams as they were. The same code serves the CPU and CUDA; only the
memory source differs (:func:`available_memory`), and a test passes its own.

Backward then needs the gradients of the activations on top, and autocast keeps float32 copies beside the
saved bfloat16 ones, so a step is taken to need ``BACKWARD_FACTOR`` times the saved bytes. Measured on the CPU at
32x32 (growth of the process's peak resident memory over one forward + backward + SGD step, per image, against
the saved bytes per image): resnet20 float32 1.77-1.99 vs 1.50 MiB (batches 512, 128), bfloat16 1.10 vs 0.75
MiB; resnet18 float32 6.45 vs 4.49 MiB, bfloat16 3.63 vs 2.24 MiB (batch 128): ratios 1.18-1.62.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from dali_pipes import ConfigError

BACKWARD_FACTOR = 1.75  # a step's peak / the bytes autograd saves in the forward pass (see the module docstring)
USABLE_FRACTION = 0.9  # of the available memory: the loader, the allocator's slack and the rest of the process
PROBE_BATCH = 2  # images in the probe forward pass: more than one, so per-batch and per-image terms separate


@dataclass(frozen=True)
class StepMemory:
    per_image: float  # bytes a step holds per image of its batch (activations incl. backward, and the input)
    available: int | None  # bytes the step may use on its device; None: unknown (no check)

    def fits(self, batch: int) -> bool:
        return self.available is None or batch * self.per_image <= USABLE_FRACTION * self.available

    @property
    def largest_batch(self) -> int:
        return 0 if self.available is None else int(USABLE_FRACTION * self.available // self.per_image)


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the process's cgroup may still allocate before its limit (v2, then v1); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**62:  # "max" (v2) or a huge number (v1): no limit
            return max(0, int(limit) - usage)
    return None


def available_memory(device: torch.device) -> int | None:
    """Bytes a training step may still allocate on `device`: CUDA's free memory plus what torch's allocator holds
    unused; on the CPU the kernel's MemAvailable, lowered to the cgroup's headroom under a container limit. None
    where neither can be read (then no check is made)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    sources = [m for m in (_meminfo_available(), _cgroup_headroom()) if m is not None]
    return min(sources) if sources else None


def saved_bytes_per_image(model: torch.nn.Module, *, image_size: tuple[int, int], device: torch.device,
                          amp_dtype: torch.dtype | None, channels_last: bool) -> float:
    """Bytes autograd saves per image in a training forward pass of `model` (measured on a probe batch)."""
    storages: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            storages[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()  # a view shares its storage
        return t

    def measure(batch: int) -> int:
        storages.clear()
        x = torch.zeros(batch, 3, *image_size, device=device)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
            out = model(x)
        del out
        return sum(storages.values())

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # drop path draws from the global RNG
            model.train()
            one, more = measure(1), measure(PROBE_BATCH)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        storages.clear()
    # The difference drops what does not grow with the batch (weights autograd saves, e.g. a linear layer's)
    return max(more - one, 1) / (PROBE_BATCH - 1)


def step_memory(model: torch.nn.Module, *, image_size: tuple[int, int], device: torch.device,
                amp_dtype: torch.dtype | None, channels_last: bool, local_processes: int = 1,
                available: Callable[[torch.device], int | None] = available_memory) -> StepMemory:
    """The memory a step needs per image on `device`, and the memory it may use there (the host's shared among
    `local_processes` processes of one node when they train on the CPU)."""
    saved = saved_bytes_per_image(model, image_size=image_size, device=device, amp_dtype=amp_dtype,
                                  channels_last=channels_last)
    per_image = BACKWARD_FACTOR * saved + 4 * 3 * image_size[0] * image_size[1]  # + the float32 input
    free = available(device)
    if free is not None and device.type == "cpu":
        free //= max(1, local_processes)
    return StepMemory(per_image=per_image, available=free)


def check_step_memory(memory: StepMemory, *, batch: int, requested: int, device: torch.device, what: str) -> None:
    """A one-line ConfigError naming --batch-size and the largest batch that fits when a step of `batch` images
    (the loader's, `requested` held to the split) would not fit; `what` names the model and image size."""
    if memory.fits(batch):
        return
    largest = memory.largest_batch
    where = "GPU" if device.type == "cuda" else "host"
    held = f" (held to the split's {batch} images)" if batch != requested else ""
    advice = (f"use --batch-size {largest} or less" if largest >= 1 else
              "not even one image fits: free memory, or use a smaller --image-size or model")
    raise ConfigError(f"--batch-size={requested}{held} does not fit: one training step of {what} needs about "
                      f"{_gib(batch * memory.per_image)} of {where} memory ({memory.per_image / 2**20:.2f} MiB per "
                      f"image, measured), {_gib(memory.available)} is available; {advice}")


def _gib(n: float | None) -> str:
    return "an unknown amount" if n is None or math.isnan(n) else f"{n / 2**30:.1f} GiB"


def local_processes() -> int:
    """Processes of this run on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_training_step(model: torch.nn.Module, loader, *, requested: int, model_name: str, device: torch.device,
                        amp_dtype: torch.dtype | None, channels_last: bool,
                        available: Callable[[torch.device], int | None] = available_memory) -> None:
    """Refuse (one line) a training batch whose step would not fit in `device`'s memory, before the first step.
    The batch is the loader's: `requested` (--batch-size) held to the images of the loader's shard."""
    batch = min(requested, max(1, loader.shard_size))
    size = tuple(loader.image_size)
    memory = step_memory(model, image_size=size, device=device, amp_dtype=amp_dtype, channels_last=channels_last,
                         local_processes=local_processes(), available=available)
    check_step_memory(memory, batch=batch, requested=requested, device=device,
                      what=f"{batch} images of {size[0]}x{size[1]} through {model_name}")
