"""The recipe: what a run trains with and how one step goes — models, optimizers and the LR schedule, Mixup/CutMix,
the EMA of the weights, the losses, the training step and evaluation (engine), and the factory that assembles them
from a TrainConfig (the one place dali-train, the tools and the benchmarks build a run's pieces)."""

from .ema import ModelEma, evaluate_ema
from .engine import TOP_K, StepContext, evaluate, train_one_epoch
from .factory import build_model, create_loaders, data_loader, kernel_settings, lr_factor, resolve_amp_dtype, \
    resolve_device, resolved_config, step_context
from .mixing import MIX_MODES, Mixer, dominant_labels
from .models import MODELS, create_model
from .torch_private import inductor_freezing

__all__ = ["MIX_MODES", "MODELS", "TOP_K", "Mixer", "ModelEma", "StepContext", "build_model", "create_loaders", "create_model",
           "data_loader", "dominant_labels", "evaluate", "evaluate_ema", "inductor_freezing", "kernel_settings", "lr_factor",
           "resolve_amp_dtype", "resolve_device", "resolved_config", "step_context", "train_one_epoch"]
