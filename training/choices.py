"""The choices of the command-line options that name a model, a mixing mode, a pruning method or a quantization
mode, in a module that imports nothing: --help and the config's checks list them without loading torch. The modules
that implement each (recipe/models.py, recipe/mixing.py, tools/prune_masks.py, tools/quantize_int8.py) take them
from here."""

MODELS = ("resnet18", "tv_resnet18", "resnet20", "resnet50")
MIX_MODES = ("batch", "elem")
PRUNE_METHODS = ("l1-unstructured", "l1-global", "ln-structured")
QUANT_MODES = ("static", "dynamic")
