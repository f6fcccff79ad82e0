"""`dali-quantize`: post-training int8 quantization of a dali-train checkpoint, with its costs measured.

Which API: torch 2.14 deprecates the quantized tensor dtypes (quint8/qint8) that eager and FX quantization
(`torch.ao.quantization`) are built on. PyTorch's maintained path is PT2E from torchao: `torch.export` the model,
`prepare_pt2e` with a quantizer, calibrate, `convert_pt2e`; inductor then lowers the quantize/dequantize pattern to
oneDNN int8 kernels. The one quantizer for a CPU target that inductor lowers is X86InductorQuantizer, so `x86` is
the one backend (qnnpack/XNNPACK models run through ExecuTorch, not here).

Modes: `static` quantizes weights (per channel) and activations (per tensor, scales from calibration batches of
training images through the evaluation pipeline); `dynamic` quantizes weights ahead of time and activations per batch
at run time (no calibration, more work per call).

The int8 file is a plain dict of tensors and numbers read with ``torch.load(weights_only=True)`` — never a pickled
program (``torch.export.load`` may fall back to full unpickling, which runs code from the file). Loading rebuilds
the same graph from the architecture named in the file and puts the saved int8 weights and scales into it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipes import ConfigError, DaliTrainError, DataError

from .checks import check_choice, check_int
from .checkpoint import checkpoint_config, chosen_weights, load_checkpoint, model_from_checkpoint, \
    save_checkpoint
from .config import TrainConfig
from .engine import evaluate
from .factory import data_loader
from .machine import cpu_model, package_version
from .models import create_model

INT8_FORMAT = "dali-train-int8/1"
MODES = ("static", "dynamic")
QUANT_BACKENDS = ("x86",)
LATENCY_BATCHES = (1, 64)
_MAX_BATCH = 4096  # the exported graph takes any batch size from 1 to this


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "static"
    calibration_batches: int = 32  # batches of training images that set the activation scales (static only)
    quant_backend: str = "x86"
    latency: bool = True  # measure CPU latency of both models (compiles each with inductor: tens of seconds)
    latency_repeats: int = 20  # timed calls per (model, batch size); the median is reported

    def __post_init__(self) -> None:
        check_choice("--mode", self.mode, MODES)
        check_int("--calibration-batches", self.calibration_batches, 1,
                  note="(32 batches of 128 images is plenty for CIFAR)")
        check_int("--latency-repeats", self.latency_repeats, 1)
        check_backend(self.quant_backend)


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
    # torchao registers an Enum with torch's pytree at import; torch >= 2.12 logs a deprecation warning for that
    # on every import. It is torchao's to fix and says nothing about this run.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as e:
        raise DaliTrainError(f"torchao's PT2E quantization is not importable ({e}); install it with "
                             "`pip install 'torchao>=0.14'`") from None
    return quantize_pt2e, x86_inductor_quantizer


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """torch's observers and inductor's int8 lowering warn about their own internals (reduce_range, tensor copy
    construction, deprecated quantized dtypes): nothing a user of this tool can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchao)(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|torchao)(\.|$)")
        yield


def _export(model: nn.Module, num_channels: int = 3, size: int = 32) -> torch.fx.GraphModule:
    # The example batch must be > 1: export specializes a dimension of size 1 to a constant.
    example = torch.zeros(2, num_channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()


def _quantizer(mode: str) -> Any:
    _, xiq = _pt2e()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=mode == "dynamic"))
    return quantizer


def quantize_model(model: nn.Module, mode: str, calibration: Iterable[torch.Tensor]) -> torch.fx.GraphModule:
    """Export the float `model` (CPU, eval), insert observers, run `calibration` batches through it, convert.

    The result is the reference int8 representation (quantize/dequantize around float ops): eager calls run it as
    a simulation; `torch.compile` lowers it to int8 kernels. Dynamic mode needs no calibration batches."""
    quantize_pt2e, _ = _pt2e()
    with _quiet(), torch.no_grad():
        prepared = quantize_pt2e.prepare_pt2e(_export(model), _quantizer(mode))
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
                   quant_backend: str) -> None:
    tensors = {k: v.detach().clone() for k, v in _constants(gm).items()}
    qparams = [[str(n.target), _literals(n)] for n in _qparam_nodes(gm)]
    save_checkpoint({"format": INT8_FORMAT, "config": cfg.to_dict(), "num_classes": num_classes, "mode": mode,
                     "quant_backend": quant_backend, "tensors": tensors, "qparams": qparams,
                     "torch": str(torch.__version__)}, path)


def load_quantized(path: str | Path) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """Rebuild the int8 model saved by `save_quantized` (weights_only load; no code from the file runs)."""
    path = Path(path)
    state = load_checkpoint(path, fmt=INT8_FORMAT, required=("config", "num_classes", "mode", "tensors",
                                                             "qparams"))
    cfg = checkpoint_config(state, path)
    mode = state["mode"]
    if mode not in MODES:
        raise DataError(f"{path}: unknown quantization mode {mode!r}; re-run dali-quantize")
    model = create_model(cfg.model, num_classes=int(state["num_classes"]))
    # The same architecture and quantizer give the same graph; one batch of zeros stands in for calibration
    # because every number it would set is overwritten from the file below.
    gm = quantize_model(model, mode, [torch.zeros(2, 3, 32, 32)])
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


class _Inference(nn.Module):
    """Lets `engine.evaluate` call `.eval()`: an exported graph refuses train()/eval() (it has no modes; dropout
    and batch norm were fixed to eval when it was exported)."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def train(self, mode: bool = True) -> _Inference:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)


def latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Median wall time of one call, in ms, after warm-up calls (the first compiles; the next settle caches)."""
    with torch.no_grad():
        for _ in range(3):
            model(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def compiled_latencies(model: nn.Module, repeats: int, batches: tuple[int, ...] = LATENCY_BATCHES) -> dict[int, float]:
    """Latency of `model` compiled by inductor with freezing (weights folded as constants: the deployment setting,
    and the one that lets inductor use its int8 oneDNN kernels) for each batch size, random inputs."""
    import torch._inductor.config as inductor_config

    # Inductor logs that it found no CUDA runtime when it sets up its C++ toolchain: true, and beside the point.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    torch._dynamo.reset()
    out = {}
    with _quiet(), inductor_config.patch(freezing=True):
        compiled = torch.compile(model, dynamic=False)
        for b in batches:
            out[b] = latency_ms(compiled, torch.randn(b, 3, 32, 32), repeats)
    torch._dynamo.reset()
    return out


def _calibration(loader: Any, n: int) -> list[torch.Tensor]:
    """The first `n` batches of the (seeded, shuffled) epoch 0 (32 CIFAR batches of 128: 50 MB)."""
    loader.set_epoch(0)
    return [images.float().contiguous() for images, _ in itertools.islice(loader, n)]


def run_quantize(checkpoint: Path, output: Path, qcfg: QuantizeConfig, log=print, **data: Any) -> dict[str, Any]:
    """Quantize the checkpoint's model to int8, evaluate both models, time both, write OUTPUT/quantize.json."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("dali-quantize runs in one process; start it without torchrun")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} already exists and is not empty; choose another --output")
    state = load_checkpoint(checkpoint)
    # Quantized inference is a CPU matter here: the data comes to the CPU, and no autocast (int8 vs float32).
    cfg = checkpoint_config(state, checkpoint, device="cpu", **data)
    device = torch.device("cpu")
    val = data_loader(cfg, device, "val")
    # best.pth: the raw or EMA weights that scored best
    model = model_from_checkpoint(state, checkpoint, cfg, len(val.classes),
                                  weights=chosen_weights(state, checkpoint)).eval()
    num_classes = len(val.classes)
    calib = data_loader(cfg, device, "train", augment="none")  # training images, evaluation pipeline
    n_calib = min(qcfg.calibration_batches, len(calib)) if qcfg.mode == "static" else 0
    log(f"dali-quantize: {cfg.model} from {checkpoint}, {qcfg.mode} int8 ({qcfg.quant_backend}), "
        + (f"calibrating on {n_calib} batches of {cfg.batch_size} training images" if n_calib else
           "activations quantized per batch at run time (no calibration)"))
    started = time.time()
    # Dynamic mode still runs one batch through the prepared graph, to check it runs; it sets no scales.
    batches = _calibration(calib, max(n_calib, 1))
    gm = quantize_model(model, qcfg.mode, batches)
    output.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = output / "model_fp32.pth", output / "model_int8.pth"
    save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "epoch": int(state["epoch"])},
                    float_path)
    save_quantized(gm, int8_path, cfg=cfg, num_classes=num_classes, mode=qcfg.mode,
                   quant_backend=qcfg.quant_backend)
    reloaded, _ = load_quantized(int8_path)  # accuracy is measured on what the file holds
    evaluate_kw = {"device": device, "amp_dtype": None, "channels_last": False}
    with _quiet():
        float_val = evaluate(model, val, **evaluate_kw)
        int8_val = evaluate(_Inference(reloaded), val, **evaluate_kw)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model": cfg.model, "dataset": cfg.dataset, "mode": qcfg.mode,
        "quant_backend": qcfg.quant_backend, "calibration_batches": n_calib, "calibration_images": sum(b.shape[0] for b in batches) if n_calib else 0,
        "float_bytes": float_path.stat().st_size, "int8_bytes": int8_path.stat().st_size,
        "float_acc": float_val["val_acc"], "int8_acc": int8_val["val_acc"],
        "float_loss": float_val["val_loss"], "int8_loss": int8_val["val_loss"], "val_images": int8_val["val_images"],
        "accuracy_engine": "eager reference int8 graph (quantize/dequantize around float ops), from the saved file",
    }
    result["size_ratio"] = result["int8_bytes"] / result["float_bytes"]
    result["acc_drop_points"] = 100.0 * (result["float_acc"] - result["int8_acc"])
    if qcfg.latency:
        log("timing both models compiled by inductor (this compiles each once per batch size)...")
        for name, net in (("float", model), ("int8", reloaded)):
            for b, ms in compiled_latencies(net, qcfg.latency_repeats).items():
                result[f"{name}_latency_ms_b{b}"] = ms
        result["latency_engine"] = "torch.compile (inductor, freezing), median of " \
                                   f"{qcfg.latency_repeats} calls after 3 warm-up calls"
        result["cpu_threads"] = torch.get_num_threads()
    result.update({"torch": torch.__version__, "torchao": package_version("torchao"), "cpu": cpu_model(),
                   "wall_time_s": time.time() - started, "settings": asdict(qcfg)})
    (output / "quantize.json").write_text(json.dumps(result, indent=2) + "\n")
    log(format_table(result))
    return result


def format_table(r: dict[str, Any]) -> str:
    mib = 1024 * 1024
    rows = [("", "float32", f"int8 ({r['mode']})", "int8 vs float"),
            ("model file", f"{r['float_bytes'] / mib:.2f} MiB", f"{r['int8_bytes'] / mib:.2f} MiB",
             f"{r['size_ratio']:.2f}x the size"),
            ("val accuracy", f"{100 * r['float_acc']:.2f}%", f"{100 * r['int8_acc']:.2f}%",
             f"{0.0 - r['acc_drop_points']:+.2f} points")]
    for b in LATENCY_BATCHES:
        f, q = r.get(f"float_latency_ms_b{b}"), r.get(f"int8_latency_ms_b{b}")
        if f is not None and q is not None:
            rows.append((f"CPU latency, batch {b}", f"{f:.2f} ms", f"{q:.2f} ms",
                         f"speedup {f / q:.2f}x" if q > 0 and math.isfinite(f / q) else "n/a"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)

