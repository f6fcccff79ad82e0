"""Runs one dali-train process's worth of a run and sends SIGINT (or another signal) to its whole process group
as a chosen loader hands out a chosen batch: what a Ctrl-C in a terminal does (the kernel signals the foreground
group: this process, the DataLoader's forkserver and its workers). Started by tests in a session of its own, so the
group holds nothing else.

    python group_signal_driver.py CONFIG_JSON RUN_DIR fit|resume WHERE SIGNAL

WHERE is "none", "train:EPOCH:BATCH" or "val:PASS:BATCH" (0-based; a pass counts this process's passes over the
validation loader), or "save:N" (as the N-th checkpoint write of this process starts). The exit code and the
one-line error are what the command line prints (training.cli's guard).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from training import loop as run_mod
from training.config import TrainConfig


class GroupSignalAt:
    def __init__(self, loader, at: tuple[int, int], signum: int, *, by_epoch: bool):
        self._loader, self._at, self._signum, self._by_epoch, self._passes = loader, at, signum, by_epoch, -1

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        self._passes += 1
        current = self._loader.epoch if self._by_epoch else self._passes
        for k, batch in enumerate(self._loader):
            if (current, k) == self._at:
                os.killpg(os.getpgrp(), self._signum)
            yield batch


def main() -> None:
    config, run_dir, how, where, signame = sys.argv[1:6]
    signum = getattr(signal, signame)
    cfg = TrainConfig.from_dict({**json.loads(config), "output": run_dir})
    kind, *pos = where.split(":")

    def build(cfg, **kwargs):
        run = run_mod.build_run(cfg, **kwargs)
        if kind in ("train", "val"):
            at = (int(pos[0]), int(pos[1]))
            if kind == "train":
                run.train_loader = GroupSignalAt(run.train_loader, at, signum, by_epoch=True)
            else:
                run.val_loader = GroupSignalAt(run.val_loader, at, signum, by_epoch=False)
        if kind == "save":
            save, calls = run.save, [0]

            def signalled_save(name, state):
                calls[0] += 1
                if calls[0] == int(pos[0]):
                    os.killpg(os.getpgrp(), signum)
                save(name, state)

            run.save = signalled_save
        return run

    from training.cli import _run_guarded

    if how == "fit":
        _run_guarded(lambda: run_mod.fit(cfg, build=build))
    else:
        _run_guarded(lambda: run_mod.resume(run_dir, build=build))


if __name__ == "__main__":
    main()
