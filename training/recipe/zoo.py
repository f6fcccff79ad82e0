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


def timm_model(name: str, num_classes: int, drop_path: float, image_size: int | None = None) -> nn.Module:
    """timm's `name`; `image_size` (pixels) reaches the models built for one input size (ViT, DeiT, Swin, ...:
    timm's ``fixed_input_size``), whose position embeddings or windows are sized by ``img_size`` (the first model of
    each of the 56 such families in timm 1.0.31 takes it). The others take any size and are built as timm defines
    them: a ResNet refuses the keyword."""
    import timm
    from timm.models import get_pretrained_cfg

    options: dict[str, Any] = {"drop_path_rate": drop_path} if drop_path else {}
    default = get_pretrained_cfg(name)
    if image_size is not None and default is not None and default.fixed_input_size \
            and tuple(default.input_size[1:]) != (image_size, image_size):
        options["img_size"] = image_size
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
