"""Test helpers shared by several test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import signal

import torch
from torch.overrides import TorchFunctionMode


class StopAfter:
    """Stands in for run.StopSignal: the SIGTERM flag turns true at the n-th poll (one poll per trained step)."""

    def __init__(self, n: int):
        self.n, self.calls, self.signum = n, 0, None

    def is_set(self) -> bool:
        self.calls += 1
        if self.calls >= self.n:
            self.signum = signal.SIGTERM
        return self.signum is not None

    def __enter__(self) -> StopAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class HostReads(TorchFunctionMode):
    """Counts the reads of a tensor's value into Python (``.item()``, ``bool()``, ``float()``, ``int()``,
    ``.tolist()``, ``.numpy()``) made while it is entered: on CUDA each is a device-to-host copy that waits for the
    device. A torch function mode sees every call through torch's Python API, those inside GradScaler included;
    it is scoped to its ``with`` block and patches nothing."""

    READS = frozenset({torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
                       torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.numpy})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.where: list[str] = []  # the functions read, for a failing assertion's message

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.count += 1
            self.where.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))
