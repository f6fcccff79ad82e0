"""CPU inference latency of models compiled by inductor, measured side by side (dali-quantize: float vs int8).

Through training.harness: per batch size, every model is compiled and warmed up untimed, then timed in interleaved
repeats (A B, B A, A B, ...), so that drift on a shared machine hits each model alike; median, min and max of the
per-call wall time in milliseconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch
from torch import nn

from ..harness import Arm, Stats, interleaved, set_up
from ..recipe import inductor_freezing
from .quantize_int8 import quiet

LATENCY_BATCHES = (1, 64)
WARMUP_CALLS = 3  # the first call compiles; the next settle caches and oneDNN's kernel choice


def _call_ms(model: nn.Module, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    model(batch)
    return 1000.0 * (time.perf_counter() - start)


def compiled_latencies(models: Mapping[str, nn.Module], repeats: int, *, image_size: int,
                       batches: tuple[int, ...] = LATENCY_BATCHES) -> dict[str, dict[int, Stats]]:
    """{model name: {batch size: per-call latency in ms}} of each model compiled by inductor with freezing
    (weights folded as constants: the deployment setting, and the one that lets inductor use its int8 oneDNN
    kernels), on random RGB batches of side `image_size`. A model that fails to compile or run raises."""
    # Inductor logs that it found no CUDA runtime when it sets up its C++ toolchain: true, and beside the point.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    out: dict[str, dict[int, Stats]] = {name: {} for name in models}
    torch.compiler.reset()
    try:
        # freezing through inductor's config for the whole block: torch.compile(options={"freezing": True}) does
        # not reach the pass that prepacks int8 weights (onednn.qconv_prepack fails under fake tensors, torch 2.14)
        with quiet(), inductor_freezing(), torch.no_grad():
            compiled = {name: torch.compile(model, dynamic=False) for name, model in models.items()}
            for b in batches:
                batch = torch.randn(b, 3, image_size, image_size)

                def warm_up(arm: Arm) -> nn.Module:
                    for _ in range(WARMUP_CALLS):
                        arm.spec(batch)
                    return arm.spec

                arms = [Arm(name, spec=net) for name, net in compiled.items()]
                set_up(arms, warm_up, keep_going=False)
                interleaved(arms, repeats, lambda arm, _r: _call_ms(arm.state, batch), keep_going=False)
                for arm in arms:
                    out[arm.name][b] = Stats.of(arm.runs)
    finally:
        torch.compiler.reset()
    return out
