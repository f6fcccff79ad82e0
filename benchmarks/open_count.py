"""Files opened under a folder, counted by the kernel (inotify ``IN_OPEN``): every process's opens, DALI's C++ readers
and DataLoader workers included, which no Python-level hook sees.

    with OpenCounter(root) as opens:
        ...                # read files under root
        n = opens.drain()  # opens of files (not folders) since the last drain

Linux only; :func:`available` says whether this machine has inotify. The kernel queues at most
``/proc/sys/fs/inotify/max_queued_events`` events (16384 by default) between drains: an overflow makes the count a
lower bound, reported by :attr:`OpenCounter.overflowed`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_OPEN = 0x00000020
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of name)


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def available() -> bool:
    libc = _libc()
    return libc is not None and hasattr(libc, "inotify_init1")


class OpenCounter:
    """Counts opens of files under `root` (every folder below it is watched; watch before reading)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.overflowed = False
        self._fd = -1

    def __enter__(self) -> OpenCounter:
        libc = _libc()
        if libc is None or not hasattr(libc, "inotify_init1"):
            raise OSError("inotify is not available on this machine")
        self._fd = libc.inotify_init1(IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for folder in [self.root, *(p for p in self.root.rglob("*") if p.is_dir())]:
            if libc.inotify_add_watch(self._fd, os.fsencode(folder), IN_OPEN) < 0:
                raise OSError(ctypes.get_errno(), f"cannot watch {folder}")
        return self

    def drain(self) -> int:
        """Opens of files since the last call (or since entering)."""
        count = 0
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                elif mask & IN_OPEN and not mask & IN_ISDIR:
                    count += 1

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
