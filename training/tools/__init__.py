"""The commands that start from a checkpoint or a recipe rather than train one: dali-eval (evaluate), dali-prune
(prune, prune_masks), dali-quantize (quantize, quantize_int8, latency), dali-preview (preview), and what the first
three share (checkpoint_tools). Each is imported by its command (training.cli, training.entry) when called."""

from .evaluate import evaluate_checkpoint
from .prune import PruneConfig, parse_amounts, run_prune
from .prune_masks import METHODS as PRUNE_METHODS
from .quantize import QuantizeConfig, run_quantize
from .quantize_int8 import MODES as QUANT_MODES

__all__ = ["PRUNE_METHODS", "QUANT_MODES", "PruneConfig", "QuantizeConfig", "evaluate_checkpoint", "parse_amounts",
           "run_prune", "run_quantize"]
