"""dali_pipes: CIFAR / image-folder / synthetic data through NVIDIA DALI (GPU or CPU) or a torchvision reference.

Public API: :func:`create_loader` (the batch contract of DESIGN.md), :class:`AugmentConfig` and its presets,
:func:`resolve_augment`, and the user-facing error types.
"""

from .choices import BACKENDS, DATASETS
from .config import PRESETS, AugmentConfig, resolve_augment
from .errors import ConfigError, DaliTrainError, DataError, DataWarning

_FROM_LOADER = ("Loader", "create_loader", "load_source")


def __getattr__(name: str):
    """The loader (torch, numpy, DALI: seconds to import) only when asked for, so that a command's --help and its
    option checks do not wait for it."""
    if name in _FROM_LOADER:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["AugmentConfig", "BACKENDS", "ConfigError", "DATASETS", "DaliTrainError", "DataError", "DataWarning",
           "Loader", "PRESETS", "create_loader", "load_source", "resolve_augment"]
