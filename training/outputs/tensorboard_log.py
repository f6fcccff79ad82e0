"""TensorBoard event files in the run directory (``tensorboard --logdir runs``): every metrics.csv figure once per
epoch (accuracy in percent, as the console and curves.png show it), the training loss every `log_every` steps, and
the first training batch's grid (first_batch.png).

Every point's x is the optimizer step: the number of steps taken when it was recorded (the grid: 0), so per-step
and per-epoch curves share one axis. A resumed run opens its writer with ``purge_step`` one past its checkpoint's
step: TensorBoard drops whatever a process wrote after that checkpoint (a crash between two checkpoints), and the
resumed events continue the same curves, one point per step.

Only rank 0 writes. The per-step loss is computed from the running sums the engine already reads for the progress
bar, so it adds no host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .files import metric_fields

Progress = Callable[[int, dict[str, float]], None]

# The TensorBoard section of each metrics.csv column (the part of the tag before the slash); the rest are resources.
_GROUPS = {"epoch": "schedule", "lr": "schedule", "train_loss": "loss", "val_loss": "loss", "ema_val_loss": "loss",
           **{c: "accuracy" for c in ("train_acc", "val_acc", "train_acc5", "val_acc5", "ema_val_acc",
                                      "ema_val_acc5")},
           "train_images": "speed", "images_per_s": "speed", "data_time_s": "speed",
           "epoch_time_s": "speed", "nonfinite_losses": "stability", "skipped_steps": "stability"}
STEP_LOSS = "loss/train_loss_steps"  # mean loss (mixed targets) over the steps since the previous point
FIRST_BATCH = "first_batch"


def tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column: ``loss/val_loss``, ``resources/host_rss_peak_mib``, ..."""
    return f"{_GROUPS.get(column, 'resources')}/{column}"


class EventLog:
    """What train_epochs writes events to. This one writes nothing: TensorBoard is off, missing, or this is not
    rank 0."""

    writes_steps = False  # whether progress() writes the loss every few steps (the engine reads it then)

    def progress(self, epoch_start: int, also: Progress | None = None, every: int = 50) -> Progress | None:
        """The engine's on_progress for an epoch (part) whose position 0 is optimizer step `epoch_start`: the loss
        at every `every`-th position; it calls `also` (the progress display) at each call."""
        return also

    def epoch(self, step: int, row: dict) -> None:
        """One epoch's metrics.csv row, at the step the epoch ended on."""

    def image(self, name: str, path: Path, step: int) -> None:
        """The PNG at `path`."""

    def close(self) -> None:
        pass


class TensorBoardLog(EventLog):
    def __init__(self, writer) -> None:
        self.writer = writer

    writes_steps = True

    def progress(self, epoch_start: int, also: Progress | None = None, every: int = 50) -> Progress:
        last = {"loss_sum": 0.0, "images": 0}  # the running sums at this part's previous point

        def hook(position: int, stats: dict[str, float]) -> None:
            if also is not None:
                also(position, stats)
            if position % every:  # a refresh of the display between two points
                return
            images = stats["images"]
            loss_sum = stats["loss"] * images  # the engine's running mean over the images of this part
            if images > last["images"]:
                mean = (loss_sum - last["loss_sum"]) / (images - last["images"])
                self.writer.add_scalar(STEP_LOSS, mean, epoch_start + position)
            last.update(loss_sum=loss_sum, images=images)

        return hook

    def epoch(self, step: int, row: dict) -> None:
        for column in metric_fields(top5=True, ema=True):
            value = row.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # accuracy in percent, as the console and curves.png show it (metrics.csv keeps fractions)
                self.writer.add_scalar(tag(column), 100 * value if tag(column).startswith("accuracy/") else value,
                                       step)
        self.writer.flush()  # the curves are current once an epoch's row is in metrics.csv

    def image(self, name: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as png:
            pixels = np.asarray(png.convert("RGB"))
        self.writer.add_image(name, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_event_log(run_dir: Path, *, enabled: bool, resume_step: int, log: Callable[[str], None]) -> EventLog:
    """A TensorBoard writer on `run_dir` when `enabled`; a run resumed at optimizer step `resume_step` (> 0) purges
    later events. Without the tensorboard package: one line saying so, and no events."""
    if not enabled:
        return EventLog()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed: this run writes no event files (pip install tensorboard, or pass "
            "--no-tensorboard to silence this)")
        return EventLog()
    return TensorBoardLog(SummaryWriter(str(run_dir), purge_step=resume_step + 1 if resume_step > 0 else None))
