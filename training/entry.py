"""The console scripts' entry points: each imports its command only when called, inside a guard.

A command's imports (torch, DALI, torchvision) take seconds; a Ctrl-C in them would otherwise print Python's
KeyboardInterrupt traceback through the import machinery. Here it is one line and exit 130, like a Ctrl-C
anywhere else before a run has written anything.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def _command(module: str, name: str) -> Callable[[], None]:
    def main() -> None:
        try:
            command = getattr(importlib.import_module(module), name)
        except KeyboardInterrupt:
            sys.stderr.write("\nerror: interrupted while starting; nothing was written\n")
            sys.exit(130)
        command()

    return main


train = _command("training.cli", "main")
evaluate = _command("training.cli", "eval_main")
ablate = _command("training.ablate", "main")
prune = _command("training.cli", "prune_main")
quantize = _command("training.cli", "quantize_main")
preview = _command("training.tools.preview", "main")
shard = _command("dali_pipes.shard_cli", "main")
