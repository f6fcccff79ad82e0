"""`dali-quantize`: post-training int8 quantization of a dali-train checkpoint, with its costs measured side by side:
file size, validation accuracy (of the int8 model as the file holds it) and CPU latency, float against int8.

The float model is evaluated in float32, the precision int8 is compared with; a run trained with autocast is also
evaluated as dali-eval and summary.json evaluate it (its autocast dtype and memory format), and quantize.json and the
console name both figures, since a few validation images near a decision boundary change sides between the two.

Modes: `static` quantizes weights (per channel) and activations (per tensor, scales from calibration batches of
training images through the evaluation pipeline); `dynamic` quantizes weights ahead of time and activations per batch
at run time (no calibration, more work per call). The conversion and the int8 file: training/quantize_int8.py; the
latency measurement: training/latency.py.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json
from dali_pipes.checks import check_choice, check_int
from ..harness import table
from ..loop import TrainState, chosen_weights, save_checkpoint
from ..machine import cpu_model, machine_info, package_version
from ..recipe import data_loader
from .checkpoint_tools import ValModel, read_checkpoint, refuse_distributed, refuse_occupied
from .latency import LATENCY_BATCHES, WARMUP_CALLS, compiled_latencies
from .quantize_int8 import MODES, Inference, check_backend, load_quantized, quantize_model, quiet, save_quantized


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


def _calibration(loader: Any, n: int) -> list[torch.Tensor]:
    """The first `n` batches of the (seeded, shuffled) epoch 0 (32 CIFAR batches of 128: 50 MB)."""
    loader.set_epoch(0)
    return [images.float().contiguous() for images, _ in itertools.islice(loader, n)]


OUTPUTS = ("model_fp32.pth", "model_int8.pth")  # written in this order, each atomically, then quantize.json


def unfinished(output: Path) -> bool:
    """`output` holds what an interrupted dali-quantize left (some of OUTPUTS, no quantize.json, nothing else)."""
    try:
        names = {p.name for p in output.iterdir()}
    except OSError:
        return False
    return bool(names) and names <= set(OUTPUTS)


def run_quantize(checkpoint: Path, output: Path, qcfg: QuantizeConfig, log=print, **data: Any) -> dict[str, Any]:
    """Quantize the checkpoint's model to int8, evaluate both models, time both, write OUTPUT/quantize.json."""
    refuse_distributed("dali-quantize")
    if not unfinished(output):  # a run stopped before quantize.json is redone in place
        refuse_occupied(output, "is not empty")
    # Quantized inference is a CPU matter here: the data comes to the CPU, and no autocast (int8 vs float32).
    state, cfg = read_checkpoint(checkpoint, device="cpu", **data)
    # best.pth: the raw or EMA weights that scored best
    val = ValModel.from_checkpoint(state, checkpoint, cfg, float32=True,
                                   weights=chosen_weights(state, checkpoint))
    model, size = val.model, val.image_size
    calib = data_loader(cfg, val.device, "train", augment="none")  # training images, evaluation pipeline
    n_calib = min(qcfg.calibration_batches, len(calib)) if qcfg.mode == "static" else 0
    log(f"dali-quantize: {cfg.model} from {checkpoint}, {qcfg.mode} int8 ({qcfg.quant_backend}), "
        + (f"calibrating on {n_calib} batches of {cfg.batch_size} training images" if n_calib else
           "activations quantized per batch at run time (no calibration)"))
    started = time.time()
    # Dynamic mode still runs one batch through the prepared graph, to check it runs; it sets no scales.
    batches = _calibration(calib, max(n_calib, 1))
    gm = quantize_model(model, qcfg.mode, batches, image_size=size)
    output.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = (output / name for name in OUTPUTS)
    save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "epoch": TrainState.from_dict(state).epoch,
                     **({"model_spec": state["model_spec"]} if "model_spec" in state else {})},
                    float_path)
    save_quantized(gm, int8_path, cfg=cfg, num_classes=val.num_classes, mode=qcfg.mode,
                   quant_backend=qcfg.quant_backend, image_size=size)
    reloaded, _ = load_quantized(int8_path)  # accuracy is measured on what the file holds
    with quiet():
        float_val = val.evaluate()
        int8_val = val.evaluate(Inference(reloaded))
        as_run = _as_the_run_evaluates(state, checkpoint, cfg)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model": cfg.model, "dataset": cfg.dataset, "image_size": size,
        "mode": qcfg.mode, "quant_backend": qcfg.quant_backend, "calibration_batches": n_calib,
        "calibration_images": sum(b.shape[0] for b in batches) if n_calib else 0,
        "float_bytes": float_path.stat().st_size, "int8_bytes": int8_path.stat().st_size,
        "float_acc": float_val["val_acc"], "int8_acc": int8_val["val_acc"],
        "float_loss": float_val["val_loss"], "int8_loss": int8_val["val_loss"], "val_images": int8_val["val_images"],
        "accuracy_engine": "eager reference int8 graph (quantize/dequantize around float ops), from the saved file",
    }
    if as_run is not None:  # the float model as dali-eval and summary.json measure it: another precision
        result.update(autocast_dtype=as_run["dtype"], float_acc_autocast=as_run["val_acc"],
                      float_loss_autocast=as_run["val_loss"])
    result["size_ratio"] = result["int8_bytes"] / result["float_bytes"]
    result["acc_drop_points"] = 100.0 * (result["float_acc"] - result["int8_acc"])
    if qcfg.latency:
        log("timing both models compiled by inductor (this compiles each once per batch size)...")
        latencies = compiled_latencies({"float": model, "int8": reloaded}, qcfg.latency_repeats, image_size=size)
        for name, per_batch in latencies.items():
            for b, stats in per_batch.items():
                result[f"{name}_latency_ms_b{b}"] = stats.median
                result[f"{name}_latency_ms_b{b}_min"], result[f"{name}_latency_ms_b{b}_max"] = stats.min, stats.max
        result["latency_engine"] = (f"torch.compile (inductor, freezing), median of {qcfg.latency_repeats} calls "
                                    f"after {WARMUP_CALLS} warm-up calls, float and int8 calls interleaved")
        result["cpu_threads"] = torch.get_num_threads()
    result.update({"torch": torch.__version__, "torchao": package_version("torchao"), "cpu": cpu_model(),
                   "machine": machine_info(), "wall_time_s": time.time() - started, "settings": asdict(qcfg)})
    write_json(output / "quantize.json", result)
    log(format_table(result))
    if as_run is not None and result["float_acc_autocast"] != result["float_acc"]:
        log(precision_note(result))
    return result


def _as_the_run_evaluates(state: dict[str, Any], checkpoint: Path, cfg: Any) -> dict[str, Any] | None:
    """The float model's validation figures as dali-eval and dali-train's final evaluation measure them here: under
    the run's autocast (bfloat16 on the CPU) in its memory format. None for a run without autocast, whose figures
    are float32's, the ones quantize.json compares int8 against."""
    run_val = ValModel.from_checkpoint(state, checkpoint, cfg, weights=chosen_weights(state, checkpoint))
    if run_val.amp_dtype is None:
        return None
    return {**run_val.evaluate(), "dtype": str(run_val.amp_dtype).replace("torch.", "")}


def precision_note(r: dict[str, Any]) -> str:
    """Why the float accuracy here is not the one dali-eval and summary.json report for the same checkpoint."""
    moved = round(abs(r["float_acc"] - r["float_acc_autocast"]) * r["val_images"])
    return (f"note: the float model scores {100 * r['float_acc']:.2f}% in float32 (what int8 is compared with) and "
            f"{100 * r['float_acc_autocast']:.2f}% under the run's {r['autocast_dtype']} autocast, as dali-eval and "
            f"summary.json measure it: the precision of the evaluation moves a net {moved} of the "
            f"{r['val_images']:,} validation images across a decision boundary, not the weights "
            "(quantize.json: float_acc, float_acc_autocast)")


def format_table(r: dict[str, Any]) -> str:
    mib = 1024 * 1024
    rows = [("", "float32", f"int8 ({r['mode']})", "int8 vs float"),
            ("model file", f"{r['float_bytes'] / mib:.2f} MiB", f"{r['int8_bytes'] / mib:.2f} MiB",
             f"{r['size_ratio']:.2f}x the size"),
            ("val accuracy", f"{100 * r['float_acc']:.2f}%", f"{100 * r['int8_acc']:.2f}%",
             f"{0.0 - r['acc_drop_points']:+.2f} points")]
    if "float_acc_autocast" in r:  # what dali-eval reports for the same checkpoint
        rows.append((f"  {r['autocast_dtype']} autocast", f"{100 * r['float_acc_autocast']:.2f}%", "",
                     "(as dali-eval measures it)"))
    for b in LATENCY_BATCHES:
        f, q = r.get(f"float_latency_ms_b{b}"), r.get(f"int8_latency_ms_b{b}")
        if f is not None and q is not None:
            rows.append((f"CPU latency, batch {b}", f"{f:.2f} ms", f"{q:.2f} ms",
                         f"speedup {f / q:.2f}x" if q > 0 and math.isfinite(f / q) else "n/a"))
    return "\n".join(table(rows[0], rows[1:], rule=False))
