"""Models of other libraries by name: any timm model, and torchvision's classification models as ``tv_<name>``,
randomly initialised (nothing is downloaded); which library builds a name, and the spec a checkpoint records so
the tools rebuild the same architecture. dali-train's own models are in training/recipe/models.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dali_pipes.errors import ConfigError

if TYPE_CHECKING:  # torch and torchvision load when a model is built, not when an option is checked
    from torch import nn

from ..choices import MODELS  # dali-train's own (models.py), winning over timm's
TORCHVISION_PREFIX = "tv_"  # tv_<name>: torchvision.models.get_model(<name>) (a classification model)
# Where a model's architecture comes from (model_spec's "source").
SOURCES = ("dali-train", "timm", "torchvision")
FIND_MODELS = ("list timm's with python -c \"import timm; print(timm.list_models('*resnet*'))\" and torchvision's "
               "with python -c \"import torchvision as tv; print(tv.models.list_models(tv.models))\"")


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)  # classification models only


def model_source(name: str) -> str:
    """Which of SOURCES builds model `name`; a name none of them knows is a one-line ConfigError saying where to
    find valid names. A name with a ':' (timm's ``hf-hub:``/``local-dir:``) is refused: those load code and
    configs from elsewhere, and nothing may be downloaded or read behind the user's back."""
    if isinstance(name, str) and name in MODELS:
        return "dali-train"
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX) \
            and name[len(TORCHVISION_PREFIX):] in _torchvision_names():
        return "torchvision"
    if isinstance(name, str) and ":" not in name:
        import timm  # imported here: ~1 s, paid only by runs that name a timm model

        if timm.is_model(name):
            return "timm"
    raise ConfigError(f"--model {name!r} is unknown: use one of {', '.join(MODELS)}, a timm model name or "
                      f"tv_<name> for a torchvision classification model; {FIND_MODELS}")


def model_spec(name: str, num_classes: int) -> dict[str, Any]:
    """What rebuilds a model's architecture (saved in every checkpoint): its name, where it comes from, the version
    of that library (timm and torchvision may change an architecture between releases) and its class count."""
    source = model_source(name)
    if source == "timm":
        import timm

        version = timm.__version__
    else:
        import torchvision

        version = torchvision.__version__ if source == "torchvision" else None
    return {"name": name, "source": source, "version": version, "num_classes": int(num_classes)}


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
