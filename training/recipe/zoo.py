"""Models of other libraries, built by name: any timm model, and torchvision's classification models as
``tv_<name>``, randomly initialised (nothing is downloaded). Which library a name belongs to, and the spec a
checkpoint records, are in training/choices.py (light enough for the options' checks). dali-train's own models
are in training/recipe/models.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dali_pipes.errors import ConfigError

from ..choices import TORCHVISION_PREFIX

if TYPE_CHECKING:
    from torch import nn


def timm_model(name: str, num_classes: int, drop_path: float) -> nn.Module:
    import timm

    options: dict[str, Any] = {"drop_path_rate": drop_path} if drop_path else {}
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    except TypeError as e:
        if "drop_path_rate" in str(e):
            raise ConfigError(f"--model {name}: this timm model has no stochastic depth (drop_path_rate); use "
                              "--drop-path 0") from None
        raise


def torchvision_model(name: str, num_classes: int, drop_path: float) -> nn.Module:
    import torchvision

    arch = name[len(TORCHVISION_PREFIX):]
    # Stochastic depth is stochastic_depth_prob in the torchvision models that have it (ConvNeXt, EfficientNet,
    # Swin...); the others refuse the keyword. weights=None: random init, nothing downloaded.
    options: dict[str, Any] = {"stochastic_depth_prob": drop_path} if drop_path else {}
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
    except TypeError as e:
        if "stochastic_depth_prob" in str(e):
            raise ConfigError(f"--model {name}: torchvision's {arch} has no stochastic depth; use --drop-path 0") \
                from None
        raise
