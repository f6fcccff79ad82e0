"""Data parallelism over `torchrun`: process group set-up and the few collectives the run needs.

Single-process runs use the same calls: every helper is the identity when the world has one process, so the loop
has one code path. Under torchrun (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU, device = cuda:LOCAL_RANK.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dali_pipes import ConfigError, DaliTrainError

_TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer than this means a rank is gone


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _takes_device_id() -> bool:
    return "device_id" in inspect.signature(dist.init_process_group).parameters


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment; a world of one needs none."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                              "start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    try:
        if not dist.is_initialized():
            # Bound at init, NCCL sets up its communicator on this rank's GPU now (failures show here, with the
            # rendezvous message below) instead of lazily at the first collective.
            bind = {"device_id": device} if device.type == "cuda" and _takes_device_id() else {}
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=_TIMEOUT, **bind)
    except (RuntimeError, ValueError, OSError) as e:
        raise DaliTrainError(f"rank {rank}: joining the process group at {os.environ.get('MASTER_ADDR')}:"
                             f"{os.environ.get('MASTER_PORT')} failed ({str(e).splitlines()[0][:160]}); check the "
                             "rendezvous settings (--rdzv-endpoint / MASTER_ADDR, MASTER_PORT) and that every "
                             "node can reach it") from None
    return World(rank, size, local), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64), returned to the host."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class Vote:
    """The result of :func:`any_rank_later`: read with :meth:`result`, one poll later."""

    def __init__(self, value: bool | None = None, work: Any = None, reduced: torch.Tensor | None = None,
                 host: torch.Tensor | None = None, ready: Any = None) -> None:
        self._value, self._work, self._reduced, self._host, self._ready = value, work, reduced, host, ready

    def result(self) -> bool:
        """Whether any rank's flag was set. On CUDA this waits only for the vote's own copy to the host (recorded
        right after the all-reduce, long finished a poll later), not for the steps queued since."""
        if self._value is None:
            if self._ready is not None:
                self._ready.synchronize()
                self._value = bool(self._host.item())  # a pinned host tensor: no device read
            else:
                self._work.wait()  # gloo: the host did the reduction
                self._value = bool(self._reduced.item())
        return self._value


def any_rank_later(flag: bool, world: World, device: torch.device) -> Vote:
    """:func:`any_rank` without stalling the host: the all-reduce is queued now and read a poll later
    (:meth:`Vote.result`), so the training loop's per-step stop check never waits for the device. Every rank must
    start and read its votes at the same polls (they step in lockstep), so all read the same result."""
    if not world.distributed:
        return Vote(flag)
    vote = torch.full((1,), int(flag), dtype=torch.int32, device=device)  # a fill kernel: no host-to-device copy
    work = dist.all_reduce(vote, op=dist.ReduceOp.MAX, async_op=True)
    if device.type != "cuda":
        return Vote(work=work, reduced=vote)
    work.wait()  # NCCL: the current stream waits for the reduction; the host does not
    host = torch.empty(1, dtype=torch.int32, pin_memory=True)
    host.copy_(vote, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return Vote(host=host, ready=ready)


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small objects: per-rank RNG and loader states)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: torch.nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: each rank updated its own during the
    epoch's last forward, and evaluation and checkpoints must see one model."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
