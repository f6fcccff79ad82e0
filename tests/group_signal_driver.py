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

from helpers import signals

from training import loop as run_mod
from training.config import TrainConfig


def main() -> None:
    config, run_dir, how, where, signame = sys.argv[1:6]
    signum = getattr(signal, signame)
    cfg = TrainConfig.from_dict({**json.loads(config), "output": run_dir})
    kind, *pos = where.split(":")

    def to_the_group() -> None:
        os.killpg(os.getpgrp(), signum)

    at = {}  # "none": no signal
    if kind in ("train", "val"):
        at = {kind: [(int(pos[0]), int(pos[1]))]}
    elif kind == "save":
        at = {"save": (int(pos[0]),)}
    build = signals(**at, send=to_the_group)

    from training.cli import _run_guarded

    if how == "fit":
        _run_guarded(lambda: run_mod.fit(cfg, build=build))
    else:
        _run_guarded(lambda: run_mod.resume(run_dir, build=build))


if __name__ == "__main__":
    main()
