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


def _sigint() -> None:
    signal.raise_signal(signal.SIGINT)


class SignalAt:
    """A loader that calls `send` (default: SIGINT to this process) as it hands out chosen batches: `at` holds
    (pass, batch) pairs, where a pass is the loader's epoch (`by_epoch`, the training loader) or the count of passes
    over it in this process (the validation loader: one per epoch, then one for the final evaluation)."""

    def __init__(self, loader, at: set[tuple[int, int]], *, by_epoch: bool, send=_sigint):
        self._loader, self._at, self._by_epoch, self._send, self._passes = loader, at, by_epoch, send, -1

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        self._passes += 1
        current = self._loader.epoch if self._by_epoch else self._passes
        for k, batch in enumerate(self._loader):
            if (current, k) in self._at:
                self._send()
            yield batch


def signals(train=(), val=(), save=(), *, send=_sigint):
    """A build_run that wraps the run's loaders in SignalAt, and calls `send` as the checkpoint writes of this
    process numbered in `save` (1-based) begin."""
    from training import loop as run_mod

    def build(cfg, **kwargs):
        run = run_mod.build_run(cfg, **kwargs)
        run.train_loader = SignalAt(run.train_loader, set(train), by_epoch=True, send=send)
        run.val_loader = SignalAt(run.val_loader, set(val), by_epoch=False, send=send)
        if save:
            write, writes = run.save, [0]

            def signalled(name, state):
                writes[0] += 1
                if writes[0] in save:
                    send()
                write(name, state)

            run.save = signalled
        return run

    return build
