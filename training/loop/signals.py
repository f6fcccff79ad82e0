"""Signals: the first SIGINT/SIGTERM/SIGHUP becomes a flag the training loop polls (a safe stop that saves last.pth), a
second one aborts at once; and the typed errors a stopped or diverged run raises."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from dali_pipes import DaliTrainError


class Interrupted(DaliTrainError):
    """SIGINT/SIGTERM stopped the run after last.pth was written; `exit_code` is 128 + the signal number.

    Where the run stopped travels as fields (`run_dir`, `epoch` 1-based, `batch` trained of it, or None after a
    whole epoch or in the final evaluation; `signum`), so a caller re-words the message without parsing it."""

    def __init__(self, message: str, exit_code: int, *, run_dir: Path | None = None, epoch: int | None = None,
                 batch: int | None = None, signum: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.run_dir, self.epoch, self.batch, self.signum = run_dir, epoch, batch, signum

    def where(self) -> str:
        """Where the run stopped, in words ("stopped in epoch 2 after batch 3")."""
        return f"stopped {self._place()}"

    def _place(self) -> str:
        if self.epoch is None:
            return "in the final evaluation"
        return f"in epoch {self.epoch} after batch {self.batch}" if self.batch else f"after epoch {self.epoch}"

    def by_user(self) -> bool:
        """Whether a user's interrupt (SIGINT, Ctrl-C) stopped the run: not an error, the user asked for it."""
        return self.signum == signal.SIGINT

    def line(self) -> str:
        """The console line: a user's interrupt as such, a stop by another signal (a scheduler's SIGTERM, a closed
        terminal's SIGHUP) as an error."""
        return str(self) if self.by_user() else f"error: {self}"

    @classmethod
    def at(cls, message: str, *, run_dir: Path, epoch: int | None, batch: int | None,
           signum: int | None) -> Interrupted:
        """An interruption by `signum` (SIGINT when unknown): the exit code follows it."""
        signum = signum or signal.SIGINT
        return cls(message, 128 + signum, run_dir=run_dir, epoch=epoch, batch=batch, signum=signum)

    @classmethod
    def saved(cls, *, run_dir: Path, epoch: int, batch: int | None, signum: int | None) -> Interrupted:
        """A run stopped by `signum` in (or after) `epoch`, its last.pth just saved: the message says where and how
        to resume, "interrupted ..." for a user's interrupt."""
        e = cls.at("", run_dir=run_dir, epoch=epoch, batch=batch, signum=signum)
        resume = f"dali-train --resume {run_dir}"
        e.args = (f"interrupted {e._place()}: last.pth saved; resume with: {resume}" if e.by_user() else
                  f"{e.where()}; last.pth saved. Resume with: {resume}",)
        return e


class Diverged(DaliTrainError):
    """Training diverged in `epoch` (1-based): the epoch's figures (figures.divergence) say why."""

    def __init__(self, message: str, *, epoch: int):
        super().__init__(message)
        self.epoch = epoch

    @classmethod
    def during(cls, epoch: int, why: str, *, lr: float, clip_grad: float, float16: bool, run_dir: Path) -> Diverged:
        """The error for a run that diverged in `epoch`, with advice that fits the options in use: a lower LR
        always; gradient clipping when it is off; bfloat16 when float16 autocast (range up to 65504) is on.
        A resume keeps the run's options, so the way out is a new run."""
        fixes = [f"a lower --lr (this run's: {lr:g})"]
        if clip_grad <= 0:
            fixes.append("--clip-grad 1.0")
        if float16:
            fixes.append("--amp-dtype bfloat16")
        last = run_dir / "last.pth"
        kept = f"{last} keeps the run from before this epoch" if last.is_file() else "no checkpoint was written"
        advice = fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + f" or {fixes[-1]}"
        return cls(f"training diverged in epoch {epoch}: {why}; {kept}. Start a new run with {advice}",
                   epoch=epoch)


class SecondSignal(KeyboardInterrupt):
    """A second stop signal while a StopSignal is installed: stop at once, without saving. `run_dir` is the run
    whose last.pth is left as it was last written (set by the code that knows the run)."""

    run_dir: Path | None = None
    signum: int = signal.SIGINT


# SIGHUP is what a closed ssh session or terminal sends: a stop like SIGTERM, not a kill that loses the epoch.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone and a write to it fails (EIO): the console lines of the rest of the run
    go to /dev/null, as under nohup, so that the run can still save its stop."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.isatty():
                stream.flush()
                os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):  # closed, or not a real file: nothing to detach
            pass
    os.close(devnull)


class _Handlers:
    """While entered (main thread only), `_handle` receives the signals in `signals`; the handlers before are
    restored on exit."""

    signals: tuple[int, ...] = ()

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class StopSignal(_Handlers):
    """Turns the first SIGINT/SIGTERM/SIGHUP into a flag the loop polls after each step; a second one aborts at
    once."""

    signals = STOP_SIGNALS
    note = "finishing the current step, then saving last.pth (send it again to abort without saving)"

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        if self.signum is not None:
            second = SecondSignal()
            second.signum = signum
            raise second
        self.signum = signum
        try:
            print(f"\n{signal.Signals(signum).name}: {self.note}", file=sys.stderr, flush=True)
        except OSError:  # the terminal went away
            pass

    def is_set(self) -> bool:
        return self.signum is not None

class FinalEvaluationSignal(StopSignal):
    """Around the final evaluation a first SIGINT/SIGTERM is noted, not obeyed: what is left is one validation
    pass and summary.json, and a run with all its epochs in last.pth but no summary.json only waits for them.
    A second signal aborts; `dali-train --resume` then does the final evaluation alone."""

    note = ("finishing the final evaluation and summary.json first (send it again to abort; dali-train --resume "
            "then finishes the run)")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP where no StopSignal is installed (a tool, or start-up): stop where the command is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopsRaise(_Handlers):
    """While entered (main thread only), SIGTERM and SIGHUP raise :class:`Stopped` as Ctrl-C raises
    KeyboardInterrupt, so a command without a safe stop of its own ends in one line instead of dying silently; a
    StopSignal entered inside takes them over and gives them back."""

    signals = (signal.SIGTERM, signal.SIGHUP)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        raise Stopped(signum)
