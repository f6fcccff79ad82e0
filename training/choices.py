"""The choices of the command-line options that name a model, a mixing mode, a pruning method or a quantization
mode, and which library builds a model name (dali-train's own, timm, or torchvision as ``tv_<name>``) with the spec a
checkpoint records, in a module that loads neither torch nor timm until a name needs them: --help and the config's
checks use it without loading torch. The modules that implement each (recipe/models.py and recipe/zoo.py,
recipe/mixing.py, tools/prune_masks.py, tools/quantize_int8.py) take them from here."""

from __future__ import annotations

from typing import Any

from dali_pipes.errors import ConfigError

MODELS = ("resnet18", "tv_resnet18", "resnet20", "resnet50")
MIX_MODES = ("batch", "elem")
PRUNE_METHODS = ("l1-unstructured", "l1-global", "ln-structured")
QUANT_MODES = ("static", "dynamic")
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
