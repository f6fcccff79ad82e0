"""int8 conversion for dali-quantize: a float model -> torchao's PT2E int8 graph, and the int8 file, saved and
loaded without pickled code.

Which API: torch deprecates the quantized tensor dtypes (quint8/qint8) that eager and FX quantization
(`torch.ao.quantization`) are built on. PyTorch's maintained path is PT2E from torchao: `torch.export` the model,
`prepare_pt2e` with a quantizer, calibrate, `convert_pt2e`; inductor then lowers the quantize/dequantize pattern to
oneDNN int8 kernels. The one quantizer for a CPU target that inductor lowers is X86InductorQuantizer, so `x86` is
the one backend (qnnpack/XNNPACK models run through ExecuTorch, not here).

The int8 file is a plain dict of tensors and numbers read with ``torch.load(weights_only=True)`` — never a pickled
program (``torch.export.load`` may fall back to full unpickling, which runs code from the file). Loading rebuilds
the same graph from the architecture and input side named in the file and puts the saved int8 weights and scales
into it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipes import ConfigError, DaliTrainError, DataError

from ..choices import QUANT_MODES
from ..config import TrainConfig
from ..loop import checkpoint_config, load_checkpoint, save_checkpoint
from ..recipe import create_model

INT8_FORMAT = "dali-train-int8/1"
MODES = QUANT_MODES
QUANT_BACKENDS = ("x86",)
CIFAR_SIDE = 32  # the input side of an int8 file that does not name one: CIFAR's
_MAX_BATCH = 4096  # the exported graph takes any batch size from 1 to this


def check_backend(name: str) -> None:
    """Refuse a backend this tool cannot produce or run, with what to use instead."""
    if name not in QUANT_BACKENDS:
        raise ConfigError(f"--quant-backend={name!r} is not supported: int8 models here are lowered by inductor to "
                          "x86 oneDNN kernels (X86InductorQuantizer); use --quant-backend x86 (qnnpack/XNNPACK "
                          "targets need ExecuTorch)")
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        raise ConfigError(f"--quant-backend=x86 needs an x86-64 CPU and this one is {platform.machine()}; run "
                          "dali-quantize on an x86-64 machine")
    if not torch.backends.mkldnn.is_available():
        raise ConfigError("--quant-backend=x86 needs oneDNN (mkldnn) and this torch build has none; install an "
                          "official torch wheel")


@functools.cache
def _pt2e() -> Any:
    """torchao's PT2E entry points, imported on first use (torchao is only needed here)."""
    # torchao registers an Enum with torch's pytree at import, which torch logs as a deprecation warning on every
    # import: torchao's to fix, and it says nothing about this run.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as e:
        raise DaliTrainError(f"torchao's PT2E quantization is not importable ({e}); install it with "
                             "`pip install 'torchao>=0.14'`") from None
    return quantize_pt2e, x86_inductor_quantizer


@contextlib.contextmanager
def quiet() -> Iterable[None]:
    """torch's observers and inductor's int8 lowering warn about their own internals (reduce_range, tensor copy
    construction, deprecated quantized dtypes): nothing a user of this tool can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchao)(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|torchao)(\.|$)")
        yield


def _export(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """The eval-mode graph of `model` for RGB batches of side `image_size` and any batch size up to _MAX_BATCH."""
    # The example batch must be > 1: export specializes a dimension of size 1 to a constant.
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()


def _quantizer(mode: str) -> Any:
    _, xiq = _pt2e()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=mode == "dynamic"))
    return quantizer


def quantize_model(model: nn.Module, mode: str, calibration: Iterable[torch.Tensor], *,
                   image_size: int) -> torch.fx.GraphModule:
    """Export the float `model` (CPU, eval) for images of side `image_size`, insert observers, run `calibration`
    batches through it, convert.

    The result is the reference int8 representation (quantize/dequantize around float ops): eager calls run it as
    a simulation; `torch.compile` lowers it to int8 kernels. Dynamic mode needs no calibration batches."""
    quantize_pt2e, _ = _pt2e()
    with quiet(), torch.no_grad():
        prepared = quantize_pt2e.prepare_pt2e(_export(model, image_size), _quantizer(mode))
        for images in calibration:
            prepared(images)
        return quantize_pt2e.convert_pt2e(prepared)


def _qparam_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and getattr(n.target, "namespace", None) == "quantized_decomposed"]


def _literals(node: torch.fx.Node) -> list[tuple[int, float | int]]:
    """The numeric arguments of a quantize/dequantize call (activation scale, zero point, range)."""
    return [(i, a) for i, a in enumerate(node.args) if type(a) in (int, float)]


def _constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads (int8 weights, per-channel scales and zero points, folded biases)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            out[node.target] = functools.reduce(getattr, node.target.split("."), gm)
    return out


def save_quantized(gm: torch.fx.GraphModule, path: Path, *, cfg: TrainConfig, num_classes: int, mode: str,
                   quant_backend: str, image_size: int) -> None:
    """The int8 file: the graph's constants and quantization literals, and what rebuilds the graph around them."""
    tensors = {k: v.detach().clone() for k, v in _constants(gm).items()}
    qparams = [[str(n.target), _literals(n)] for n in _qparam_nodes(gm)]
    save_checkpoint({"format": INT8_FORMAT, "config": cfg.to_dict(), "num_classes": num_classes, "mode": mode,
                     "quant_backend": quant_backend, "image_size": image_size, "tensors": tensors,
                     "qparams": qparams, "torch": str(torch.__version__)}, path)


def load_quantized(path: str | Path) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """Rebuild the int8 model saved by `save_quantized` (weights_only load; no code from the file runs)."""
    path = Path(path)
    state = load_checkpoint(path, fmt=INT8_FORMAT, required=("config", "num_classes", "mode", "tensors",
                                                             "qparams"))
    cfg = checkpoint_config(state, path)
    mode = state["mode"]
    if mode not in MODES:
        raise DataError(f"{path}: unknown quantization mode {mode!r}; re-run dali-quantize")
    size = state.get("image_size", CIFAR_SIDE)
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise DataError(f"{path}: image_size={size!r} is not an image side in pixels; re-run dali-quantize")
    model = create_model(cfg.model, num_classes=int(state["num_classes"]), image_size=size)
    # The same architecture, input side and quantizer give the same graph; one batch of zeros stands in for
    # calibration because every number it would set is overwritten from the file below.
    gm = quantize_model(model, mode, [torch.zeros(2, 3, size, size)], image_size=size)
    mismatch = f"{path}: its int8 tensors do not fit a {mode} {cfg.model} graph of this torch/torchao " \
               f"(saved with torch {state.get('torch')}); re-run dali-quantize on the float checkpoint"
    constants = _constants(gm)
    saved = state["tensors"]
    if not isinstance(saved, dict) or set(saved) != set(constants):
        raise DataError(mismatch)
    with torch.no_grad():
        for name, tensor in constants.items():
            value = saved[name]
            if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
                raise DataError(mismatch)
            tensor.copy_(value)
    nodes = _qparam_nodes(gm)
    if len(nodes) != len(state["qparams"]):
        raise DataError(mismatch)
    for node, (target, literals) in zip(nodes, state["qparams"]):
        if str(node.target) != target or [i for i, _ in _literals(node)] != [i for i, _ in literals]:
            raise DataError(mismatch)
        args = list(node.args)
        for i, value in literals:
            args[i] = value
        node.args = tuple(args)
    gm.recompile()
    return gm, state


class Inference(nn.Module):
    """Lets `engine.evaluate` call `.eval()`: an exported graph refuses train()/eval() (it has no modes; dropout
    and batch norm were fixed to eval when it was exported)."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def train(self, mode: bool = True) -> Inference:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)
