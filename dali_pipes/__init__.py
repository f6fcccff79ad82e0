"""dali_pipes: CIFAR / image-folder / synthetic data through NVIDIA DALI (GPU or CPU) or a torchvision reference.

Public API: :func:`create_loader` (the batch contract of DESIGN.md), :class:`AugmentConfig` and its presets,
:func:`resolve_augment`, and the user-facing error types.
"""

from .config import PRESETS, AugmentConfig, resolve_augment
from .errors import ConfigError, DaliTrainError, DataError, DataWarning
from .loader import BACKENDS, DATASETS, Loader, create_loader, load_source

__all__ = ["AugmentConfig", "BACKENDS", "ConfigError", "DATASETS", "DaliTrainError", "DataError", "DataWarning",
           "Loader", "PRESETS", "create_loader", "load_source", "resolve_augment"]
