"""The run loop and its state on disk: `fit` and `resume` (run), the epochs and the final evaluation (epochs),
`Run` and its progress `TrainState` (state, progress), checkpoints (checkpoint), stop signals (signals), the
memory a step needs (step_memory), and `RunDir`, the one owner of a run folder and its verdict on what a command
may do there (rundir, lock)."""

from .checkpoint import checkpoint_config, chosen_weights, load_checkpoint, load_weights, model_from_checkpoint, \
    nonfinite_tensors, save_checkpoint
from .epochs import finish, train_epochs
from .progress import TrainState
from .run import build_run, carry_out, fit, resume
from .rundir import DONE, FINISH, NEW, REFUSED, RESTART, RESUME, RunDir, Verdict
from .signals import Diverged, Interrupted, SecondSignal, StopSignal
from .state import Run
from .step_memory import saved_bytes_per_image

__all__ = ["DONE", "FINISH", "NEW", "REFUSED", "RESTART", "RESUME", "Diverged", "Interrupted", "Run", "RunDir",
           "SecondSignal", "StopSignal", "TrainState", "Verdict", "build_run", "carry_out", "checkpoint_config",
           "chosen_weights", "finish", "fit", "load_checkpoint", "load_weights", "model_from_checkpoint",
           "nonfinite_tensors", "resume", "saved_bytes_per_image",
           "save_checkpoint", "train_epochs"]
