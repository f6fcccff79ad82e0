"""One writer per run directory: an flock on LOCK_NAME inside it, which the kernel drops when the process ends
however it ends (kill -9 included), so a crashed run never leaves its directory locked."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from dali_pipes import DaliTrainError

LOCK_NAME = ".dali-train.lock"


class RunDirLock:
    """An exclusive flock on `run_dir/LOCK_NAME`, holding this process's pid for the message of the next one."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DaliTrainError(f"{self.run_dir}: cannot create its lock file {LOCK_NAME} ({e.strerror}); "
                                     "the run directory must be writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DaliTrainError(f"{self.run_dir}: cannot lock {LOCK_NAME} ({e.strerror}); the file "
                                         "system must support flock") from None
                raise DaliTrainError(f"{self.run_dir} is in use by another dali-train process (pid {holder}); "
                                     "wait for it to end or stop it — one process writes a run at a time") from None
            # A holder that released (and removed) the file between our open and flock left us the lock of an
            # orphaned file: start again on the file now at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        """Remove the file while still holding it (the next process re-checks the path), then drop the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a folder gone read-only: the file stays, and the next process flocks it as usual
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
