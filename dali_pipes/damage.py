"""JPEG files whose compressed data is damaged, named: libjpeg conceals the damage and says so only as a line on the
process's stderr ("Corrupt JPEG data: 302 extraneous bytes before marker 0xd9"), which names no file.

The listing's structure checks do not decode (dali_pipes.folder), so such a file trains with its damage filled in
by the decoder, on both backends. Within :func:`decoder_warnings` (every command runs inside one), file descriptor 2
goes through a pipe read by a thread: lines of libjpeg's warnings are kept with the time they came and not shown;
everything else is passed on unchanged. Python's own ``sys.stderr`` writes to the terminal directly meanwhile, so
what the console shows (progress bars, terminal width) does not change.

At the end of each epoch of an image folder, a :class:`~dali_pipes.loader.Loader` hands :func:`attribute` the
warnings that came during it, with the times its batches were handed out: the files of the few batches the
decoders were working ahead on at that moment are decoded again, one at a time, in a child process whose stderr
tells which file each warning belongs to. Where none of them is the one, every file of the epoch is (once per
split and process). The files found are a :class:`~dali_pipes.notices.Skipped` notice of action "decoded": printed
and listed in the run directory (damaged.txt) whatever the warning filters. What no loader claims (a preview, a
decode outside an epoch) is said at the end of the command as one line with libjpeg's message.

Not covered: a torchvision DataLoader whose forkserver was started before the block (its workers write to the old
stderr: a library caller's; the commands start it inside), and tar shards (their samples are not files).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

# libjpeg's warning messages (jerror.h, JWRN_*) about the data itself, as its default output_message prints them:
# a line starting with one of these is a warning.
_MESSAGES = (b"Corrupt JPEG data", b"Premature end of JPEG file", b"Invalid SOS parameters for sequential JPEG",
             b"Inconsistent progression sequence")
_LIBJPEG_WARNING = re.compile(b"^(" + b"|".join(re.escape(m) for m in _MESSAGES) + b")")
_JPEG_MAGIC = b"\xff\xd8\xff"
_MARK = "\0dali-train-file "


@dataclass
class _Watch:
    warnings: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), libjpeg's line)
    scanned: set[str] = field(default_factory=set)  # splits whose every file was decoded again
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, start: float, end: float) -> list[tuple[float, str]]:
        """The warnings that came between `start` and `end`, removed from the watch."""
        with self.lock:
            mine = [w for w in self.warnings if start <= w[0] <= end]
            self.warnings = [w for w in self.warnings if not start <= w[0] <= end]
        return mine


_current: _Watch | None = None  # fd 2 is the process's: one watch at a time


def _pass_on(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`; a terminal that went away (SIGHUP) drops it: the pump must go on draining,
    or a writer would block on the full pipe."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _pump(read_fd: int, out_fd: int, watch: _Watch, stop: threading.Event) -> None:
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.05)
        chunk = os.read(read_fd, 65536) if ready else b""
        if not chunk and (stop.is_set() or ready):  # stopped and drained, or every writer closed the pipe
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if _LIBJPEG_WARNING.match(line):
                with watch.lock:
                    watch.warnings.append((time.monotonic(), line.decode(errors="replace").strip()))
            else:
                _pass_on(out_fd, line + b"\n")
        # a line still open is passed on at once unless it may become a warning (a prompt, a "\r" progress line)
        if pending and not any(m.startswith(pending[:len(m)]) for m in _MESSAGES):
            _pass_on(out_fd, pending)
            pending = b""
    _pass_on(out_fd, pending)


@contextmanager
def decoder_warnings() -> Iterator[None]:
    """Within the block, libjpeg's warnings are kept for :func:`attribute` instead of printed (see the module);
    what no loader claimed is said at the end. A block inside another is a no-op."""
    global _current
    if _current is not None:
        yield
        return
    stream = sys.stderr
    swap = _fileno(stream) == 2
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon): nothing to watch
        yield
        return
    read_fd, write_fd = os.pipe()
    watch, stop = _Watch(), threading.Event()
    pump = threading.Thread(target=_pump, args=(read_fd, saved, watch, stop), name="stderr-pump", daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    if swap:  # Python's writes straight to the terminal: isatty() and the terminal's width stay what they were
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), encoding=stream.encoding,
                                      errors=stream.errors, line_buffering=True)
    _current = watch
    try:
        yield
    finally:
        _current = None
        if swap:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = stream
        os.dup2(saved, 2)  # children still holding the pipe (a forkserver's workers) no longer keep the pump busy
        stop.set()
        pump.join(timeout=5)
        os.close(read_fd)
        os.close(saved)
        left = watch.take(float("-inf"), float("inf"))
        if left:
            _report_unclaimed(left)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def watching() -> bool:
    return _current is not None


def attribute(split: str, batches: Sequence[Sequence[str]], handed_out: Sequence[float], *, start: float,
              lookahead: int, jobs: int = 1) -> None:
    """Name the files behind the libjpeg warnings that came during one epoch (from `start` to now).

    `batches`: the epoch's files, batch by batch, in the order handed out; `handed_out`: when each batch was
    (time.monotonic()); `lookahead`: how many batches the decoders may work ahead of the one handed out last."""
    watch = _current
    if watch is None:
        return
    came = watch.take(start, time.monotonic())
    if not came:
        return
    candidates: dict[str, None] = {}
    for when, _ in came:
        first = next((i for i, t in enumerate(handed_out) if t >= when), len(batches))
        for batch in batches[max(0, first - 2):first + lookahead + 1]:
            candidates.update(dict.fromkeys(batch))
    found = find_damaged(list(candidates), jobs=jobs)
    if not found and split not in watch.scanned:
        watch.scanned.add(split)
        found = find_damaged([f for b in batches for f in b], jobs=jobs)
    if not found:
        _report_unclaimed(came, split=split)
        return
    from .notices import Skipped, report_skipped

    first = next(iter(found))
    report_skipped(Skipped(split, "JPEG files whose compressed data is damaged (the decoder fills in what it cannot "
                                  "read)", tuple(found), f" ({found[first]}); re-encode or remove them",
                           action="decoded"), stacklevel=3)


def _report_unclaimed(came: list[tuple[float, str]], split: str | None = None) -> None:
    from .notices import Skipped, report_skipped

    report_skipped(Skipped(split or "images", "", (), f"a JPEG decoder reported damaged data {len(came)} time(s) "
                           f"({came[0][1]}) in files it did not name", action="said"), stacklevel=3)


def find_damaged(paths: Sequence[str], *, jobs: int = 1) -> dict[str, str]:
    """{path: libjpeg's first warning} for the JPEG files among `paths` (by content) whose decoding warns, in the
    order of `paths`; decoded in up to `jobs` child processes."""
    jpegs = [p for p in paths if _is_jpeg(p)]
    if not jpegs:
        return {}
    parts = max(1, min(jobs, -(-len(jpegs) // 256)))
    groups = [jpegs[i::parts] for i in range(parts)]
    # the child imports this module from where this process did (a source checkout as well as an installation)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    children = [subprocess.Popen([sys.executable, "-m", "dali_pipes.damage"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for _ in groups]
    found: dict[str, str] = {}
    for child, group in zip(children, groups):
        _, err = child.communicate(json.dumps(group).encode())
        current = None
        for line in err.decode(errors="replace").splitlines():
            if line.startswith(_MARK):
                current = group[int(line[len(_MARK):])]
            elif current is not None and current not in found and _LIBJPEG_WARNING.match(line.encode()):
                found[current] = line.strip()
    return {p: found[p] for p in jpegs if p in found}


def _is_jpeg(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(3) == _JPEG_MAGIC
    except OSError:
        return False


def _decode_each() -> None:
    """The child of :func:`find_damaged`: decode each path of the JSON list on stdin, a mark on fd 2 before each,
    so that what libjpeg writes there after it belongs to that file."""
    import torch
    from torchvision.io import decode_jpeg

    for i, path in enumerate(json.load(sys.stdin)):
        os.write(2, f"{_MARK}{i}\n".encode())
        try:
            with open(path, "rb") as fh:
                decode_jpeg(torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8))
        except (OSError, RuntimeError):
            pass  # a file that cannot be decoded at all fails the epoch itself, naming it


if __name__ == "__main__":
    _decode_each()
