"""Training-step cost: images/s, step time and memory per precision / memory format / compile / mixing, and how
much the real DALI loader, and a plain torchvision one, cost next to a batch that is already on the device.

    python benchmarks/train_throughput.py --device cpu --json train-bench.json          # minutes on 2 cores
    python benchmarks/train_throughput.py --device cpu --full --json train-bench.json   # 20 steps, 5 warm-up

``--json`` also writes the rows as CSV beside it (same name, ``.csv``); ``--plot`` draws bars on a linear axis from
zero.

Rows per (device, model), all built with ``training.recipe.factory`` (the loader, model and step of ``dali-train``,
every other option at its ``TrainConfig`` default: SGD + Nesterov, drop path 0.05, label smoothing 0.1, cosine
schedule):

- ``fp32`` / ``fp16`` / ``bf16`` (autocast; fp16 with GradScaler, CUDA only) x ``+cl`` (channels_last) off/on,
  mixing off, fed a synthetic batch (``torch.randn`` images + random labels made once on the device, reused);
- ``<recipe> +cl +mix``: the training default (fp16 on CUDA, bf16 on the CPU, channels_last, Mixup/CutMix);
- ``<recipe> +cl +mix +compile`` with ``--compile`` only (compiling takes minutes, on the CPU even more);
- ``<recipe> +cl +mix, DALI loader``: the same step fed by the real loader (synthetic dataset, ``--augment``).
  Loader overhead = 1 - (DALI-fed img/s) / (synthetic-fed img/s), both measured side by side. The row states the
  DALI threads it ran with (``dali_threads``): training's rule, ``training.recipe.factory.loader_threads``;
- ``<recipe> +cl +mix, torchvision loader``: the same step fed by the plain torchvision v2 pipeline a user writes
  (benchmarks/torchvision_peer.py, same ``--augment`` recipe) in a DataLoader with as many workers as the DALI row
  has threads, one torch thread each (``torchvision_workers``); its loader overhead is reported the same way.

How it measures (same rules as ``augment_throughput.py``):

- every row is built once and runs ``--warmup-steps`` untimed steps first (cudnn/oneDNN kernel choice, compile,
  the DALI pipeline build);
- a repeat times ``--steps`` steps through ``training.recipe.engine.train_one_epoch`` (CUDA is synchronized before the
  clock is read); rows of a (device, model) are interleaved, each repeat starting at a rotating row; median and
  min..max are over repeats; every ratio is between two rows of the same run (ratio of their medians); a row
  whose repeats spread more than 1.5x (max / min) is warned about (``spread``, ``spread_warning``, ``warnings``);
- memory, per row: on CUDA the row's own peak allocated (window peak minus what the other, idle rows hold), the
  process-wide peak reserved, the process's NVML peak (PyTorch, DALI's pipelines and the CUDA context: what the
  allocator figures miss) and the device-wide NVML peak; on the CPU the host RSS peak, which is process-wide (all
  rows are resident), so the CPU memory ratio uses the bytes the forward pass saves for backward (measured once per
  row, outside the timing) instead;
- a row that fails (build, warm-up, compile or a timed repeat) is reported as failed with its one-line error and
  the other rows go on; ``--json`` is rewritten after each (device, model), so a run stopped midway keeps the
  finished groups (``"complete": false``).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click  # noqa: E402
import torch  # noqa: E402

from benchmarks._outputs import json_updater, output_options, write_outputs  # noqa: E402
from benchmarks.train_report import format_header, format_table, plot_figure  # noqa: E402
from benchmarks.augment_throughput import DEVICES, NO_CUDA  # noqa: E402
from dali_pipes import ConfigError, DaliTrainError, resolve_augment  # noqa: E402
from dali_pipes.checks import check_choice, check_int  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.distributed import World  # noqa: E402
from training.recipe.engine import StepContext, train_one_epoch  # noqa: E402
from training.recipe.factory import (build_model, data_loader, kernel_settings, loader_threads,  # noqa: E402
                              step_context)
from training.atomic import to_json  # noqa: E402
from training.loop import saved_bytes_per_image  # noqa: E402
from training.harness import Arm, Stats, finite, interleaved, ratio, set_up, spread_warnings  # noqa: E402
from training.machine import machine_info  # noqa: E402
from training.recipe.models import MODELS  # noqa: E402
from training.outputs.monitor import MIB, ResourceMonitor  # noqa: E402

__all__ = ["format_header", "format_table", "main", "measure", "plan_rows", "plot_figure", "to_json"]

DEFAULT_MODELS = {"cuda": ("resnet18", "resnet20"), "cpu": ("resnet20",)}
PRECISIONS = ("fp32", "fp16", "bf16")
RECIPE_PRECISION = {"cuda": "fp16", "cpu": "bf16"}  # what TrainConfig's amp=True, amp_dtype=float16 runs as
FP16_CPU = "fp16 needs CUDA (on the CPU, autocast runs bfloat16: that is the bf16 row)"
# What the command line measures unless told otherwise: under 5 minutes on 2 cores. --full: the long grid.
QUICK = {"steps": 5, "warmup_steps": 2}
FULL = {"steps": 20, "warmup_steps": 5}
COMPILE_CPU_NOTE = ("--compile on the CPU: inductor builds C++ kernels for every row, which takes minutes on a few "
                    "cores; the compile row's warm-up includes it")


# ------------------------------------------------------------------------------------------------------ rows
def _label(precision: str, cl: bool, mix: bool, compile_: bool, feed: str) -> str:
    return (precision + (" +cl" if cl else "") + (" +mix" if mix else "") + (" +compile" if compile_ else "")
            + {"dali": ", DALI loader", "torchvision": ", torchvision loader"}.get(feed, ""))


FEEDS = ("synthetic", "dali", "torchvision")  # what a row's batches come from


def plan_rows(device: str, model: str, cuda: bool, compile_: bool, torchvision_workers: int | None = None
              ) -> tuple[list[dict], list[dict]]:
    """The rows of one (device, model) and the skipped ones with their reason. Each row names the row it is
    compared with (``vs``) and what the comparison measures (``kind``). The torchvision-fed row runs
    `torchvision_workers` DataLoader workers (None: as many as the DALI-fed row has threads)."""
    rows: list[dict] = []
    skipped: list[dict] = []

    def add(precision: str, cl: bool, mix: bool = False, compile_row: bool = False, feed: str = "synthetic",
            vs: str | None = None, kind: str | None = None) -> None:
        row = {"device": device, "model": model, "row": _label(precision, cl, mix, compile_row, feed),
               "precision": precision, "channels_last": cl, "mixing": mix, "compile": compile_row, "feed": feed,
               "vs": vs, "kind": kind}
        if device == "cuda" and not cuda:
            skipped.append({"device": device, "model": model, "row": row["row"], "reason": NO_CUDA})
        elif device == "cpu" and precision == "fp16":
            skipped.append({"device": device, "model": model, "row": row["row"], "reason": FP16_CPU})
        else:
            rows.append(row)

    for precision in PRECISIONS:
        for cl in (False, True):
            if precision != "fp32":
                add(precision, cl, vs=_label("fp32", cl, False, False, "synthetic"), kind="amp_vs_fp32")
            elif cl:
                add(precision, cl, vs=_label("fp32", False, False, False, "synthetic"), kind="channels_last")
            else:
                add(precision, cl)
    rp = RECIPE_PRECISION[device]
    recipe = _label(rp, True, True, False, "synthetic")
    add(rp, True, mix=True, vs=_label(rp, True, False, False, "synthetic"), kind="mixing")
    if compile_:
        add(rp, True, mix=True, compile_row=True, vs=recipe, kind="compile")
    add(rp, True, mix=True, feed="dali", vs=recipe, kind="loader")
    add(rp, True, mix=True, feed="torchvision", vs=recipe, kind="loader")
    for row in rows:
        if row["feed"] == "torchvision":
            row["workers"] = torchvision_workers
    return rows, skipped


def _config(row: dict, *, batch_size: int, num_samples: int, augment: str, output: str,
            overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    base = TrainConfig()  # mixing on: the recipe's Mixup/CutMix alphas; off: both 0 (label smoothing stays)
    alphas = (base.mixup_alpha, base.cutmix_alpha) if row["mixing"] else (0.0, 0.0)
    values = dict(dataset="synthetic", model=row["model"], device=row["device"], batch_size=batch_size,
                  num_samples=num_samples, augment=augment, amp=row["precision"] != "fp32",
                  amp_dtype="bfloat16" if row["precision"] == "bf16" else "float16",
                  channels_last=row["channels_last"], compile=row["compile"], output=output,
                  mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    return TrainConfig(**{**values, **(overrides or {})})


# ------------------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Whole epochs back to back: an epoch abandoned halfway would make the DALI loader rebuild its pipeline."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def _saved_for_backward_mib(run, batch_size: int) -> float:
    """MiB autograd saves in the forward pass of a `batch_size` step (parameters and per-batch terms excluded): the
    activation memory of one step, independent of other rows and of the allocator. Measured on the eager model by
    the probe dali-train's own memory check uses (training.loop.saved_bytes_per_image: the step's train mode,
    autocast dtype and memory format; the model's buffers and the RNG left as they were)."""
    side = run.train_loader.image_size
    return batch_size * saved_bytes_per_image(run.model, image_size=tuple(side), device=run.device,
                                              amp_dtype=run.amp_dtype, channels_last=run.cfg.channels_last) / MIB


@dataclasses.dataclass
class _BenchRun:
    """What a row trains with: dali-train's loader, model and step for its config (training.recipe.factory), without a
    run directory, a validation loader or checkpoints."""

    cfg: TrainConfig
    device: torch.device
    train_loader: Any
    model: torch.nn.Module
    ctx: StepContext

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.ctx.amp_dtype

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device) -> _BenchRun:
        torch.manual_seed(cfg.seed)
        loader = data_loader(cfg, device, "train")
        classes = len(loader.classes)
        model = build_model(cfg, classes, device, image_size=loader.image_size[0])
        ctx = step_context(cfg, model, num_classes=classes, steps_per_epoch=len(loader), device=device,
                           world=World())
        return cls(cfg, device, loader, model, ctx)


class _Row:
    """One row's run, its batch source and its measurements."""

    def __init__(self, spec: dict, *, batch_size: int, num_samples: int, augment: str, warmup_steps: int,
                 overrides: Mapping[str, Any] | None = None):
        self.spec = spec
        self.run = self.stream = None
        self.steps_done = 0  # optimizer steps so far: the LR schedule's position
        self.device = torch.device(spec["device"])
        try:
            self._setup(batch_size=batch_size, num_samples=num_samples, augment=augment, warmup_steps=warmup_steps,
                        overrides=overrides)
        except BaseException:
            self.close()
            raise

    def _setup(self, *, batch_size: int, num_samples: int, augment: str, warmup_steps: int,
               overrides: Mapping[str, Any] | None) -> None:
        spec = self.spec
        cuda = self.device.type == "cuda"
        _sync(self.device)
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        cfg = _config(spec, batch_size=batch_size, num_samples=num_samples, augment=augment,
                      output="", overrides=overrides)
        self.run = _BenchRun.build(cfg, self.device)
        gen = torch.Generator(device=self.device).manual_seed(1)
        side = self.run.train_loader.image_size[0]  # the synthetic batch has the loader's images' shape
        self.batch = (torch.randn(batch_size, 3, side, side, device=self.device, generator=gen),
                      torch.randint(0, len(self.run.train_loader.classes), (batch_size,), device=self.device,
                                    generator=gen))
        # the threads training's rule gives the DALI loader (training.recipe.factory.loader_threads): stated with
        # the row; the torchvision loader gets as many workers, one torch thread each
        threads = loader_threads(cfg, self.device)
        self.dali_threads = threads if spec["feed"] == "dali" else None
        workers = threads if spec.get("workers") is None else spec["workers"]
        self.torchvision_workers = workers if spec["feed"] == "torchvision" else None
        if spec["feed"] == "dali":
            self.stream = _endless(self.run.train_loader)
        elif spec["feed"] == "torchvision":
            from benchmarks.torchvision_peer import PlainTorchvisionLoader

            self.stream = _endless(PlainTorchvisionLoader(augment=augment, batch_size=batch_size,
                                                          device=spec["device"], num_samples=num_samples,
                                                          num_workers=workers, seed=cfg.seed))
        self.train(warmup_steps)  # untimed
        self.saved_mib = None if spec["compile"] else _saved_for_backward_mib(self.run, batch_size)
        _sync(self.device)
        # What this row keeps between steps (model, grads, optimizer state, its batch): to tell its own peak apart.
        self.resident = torch.cuda.memory_allocated(self.device) - before if cuda else 0

    def batches(self, steps: int):
        if self.stream is not None:
            return itertools.islice(self.stream, steps)
        return itertools.repeat(self.batch, steps)

    def train(self, steps: int) -> dict:
        _sync(self.device)
        stats = train_one_epoch(self.run.ctx, self.batches(steps), step=self.steps_done)
        self.steps_done += stats["steps"]
        if stats["steps"] != steps:
            raise RuntimeError(f"{self.spec['row']}: {stats['steps']} of {steps} steps ran")
        return stats

    def measure(self, steps: int, monitor: ResourceMonitor) -> dict:
        cuda = self.device.type == "cuda"
        _sync(self.device)
        others = torch.cuda.memory_allocated(self.device) - self.resident if cuda else 0
        with monitor:
            stats = self.train(steps)
        fig = monitor.figures()
        out = {"images_per_s": stats["images_per_s"], "step_ms": 1000 * stats["epoch_time_s"] / steps,
               "data_wait_s": stats["data_time_s"], "nonfinite_losses": stats["nonfinite_losses"],
               "skipped_steps": stats["skipped_steps"], "host_rss_peak_mib": fig["host_rss_peak_mib"]}
        if cuda:
            out["cuda_peak_allocated_mib"] = fig["max_mem_allocated_mib"] - others / MIB
            out["cuda_peak_reserved_mib"] = fig["max_mem_reserved_mib"]
            out["nvml_used_max_mib"] = fig.get("gpu_mem_used_max_mib")
            out["nvml_process_max_mib"] = fig.get("gpu_mem_process_max_mib")
            out["gpu_util_mean_pct"] = fig.get("gpu_util_mean_pct")
        return out

    def close(self) -> None:
        self.stream = None
        self.run = None


def _median(values: Sequence[float | None]) -> float | None:
    return Stats.of(v if v is None else finite(v) for v in values).median


SPEC_KEYS = ("device", "model", "row", "precision", "channels_last", "mixing", "compile", "feed")


def _failed(spec: dict, error: str) -> dict:
    """A row that did not finish: its identity, why, and no numbers."""
    return {**{k: spec[k] for k in SPEC_KEYS}, "status": "failed", "error": error, "median_images_per_s": None,
            "min": None, "max": None, "runs": [], "median_step_ms": None, "step_ms_min": None, "step_ms_max": None,
            "median_data_wait_s": None, "nonfinite_losses": 0, "skipped_steps": 0, "memory": None,
            "vs": spec["vs"], "kind": spec["kind"], "dali_threads": None, "torchvision_workers": None}


def _summarize(arm: Arm) -> dict:
    runs, row = arm.runs, arm.state
    ips, step = Stats.of(r["images_per_s"] for r in runs), Stats.of(r["step_ms"] for r in runs)
    memory = {"host_rss_peak_mib": finite(max(r["host_rss_peak_mib"] for r in runs)),
              "host_rss_scope": "process (all rows of this run resident)",
              "saved_for_backward_mib": finite(row.saved_mib)}
    if row.device.type == "cuda":
        memory |= {"cuda_peak_allocated_mib": _median([r["cuda_peak_allocated_mib"] for r in runs]),
                   "cuda_peak_allocated_scope": "this row (window peak minus the other rows' resident memory)",
                   "cuda_peak_reserved_mib": finite(max(r["cuda_peak_reserved_mib"] for r in runs)),
                   "cuda_peak_reserved_scope": "process",
                   "nvml_used_max_mib": _median([r["nvml_used_max_mib"] for r in runs]),
                   "nvml_scope": "device",
                   "nvml_process_max_mib": _median([r["nvml_process_max_mib"] for r in runs]),
                   "nvml_process_scope": "process (all rows of this run resident; DALI's pipelines and the CUDA "
                                         "context included)",
                   "gpu_util_mean_pct": _median([r["gpu_util_mean_pct"] for r in runs])}
    return {**{k: arm.spec[k] for k in SPEC_KEYS}, "status": "ok", "error": None,
            "median_images_per_s": ips.median, "min": ips.min, "max": ips.max, "runs": ips.runs,
            "median_step_ms": step.median, "step_ms_min": step.min, "step_ms_max": step.max,
            "median_data_wait_s": Stats.of(r["data_wait_s"] for r in runs).median,
            "nonfinite_losses": sum(r["nonfinite_losses"] for r in runs),
            "skipped_steps": sum(r["skipped_steps"] for r in runs),
            "memory": memory, "vs": arm.spec["vs"], "kind": arm.spec["kind"], "dali_threads": row.dali_threads,
            "torchvision_workers": row.torchvision_workers}


def _memory_basis(result: dict) -> tuple[str, float | None]:
    m = result["memory"]
    if result["device"] == "cuda":
        return "cuda peak allocated (own)", m["cuda_peak_allocated_mib"]
    return "saved for backward", m["saved_for_backward_mib"]


def _compare(results: list[dict]) -> list[dict]:
    """Each row against the row it names in ``vs`` (same device, model and run): speed and memory ratios."""
    by_key = {(r["device"], r["model"], r["row"]): r for r in results}
    ratios = []
    for r in results:
        r["speedup_vs"] = r["memory_ratio_vs"] = None
        twin = by_key.get((r["device"], r["model"], r["vs"])) if r["vs"] else None
        if twin is None or r["status"] != "ok" or twin["status"] != "ok":
            continue
        basis, mem = _memory_basis(r)
        _, twin_mem = _memory_basis(twin)
        r["speedup_vs"] = ratio(r["median_images_per_s"], twin["median_images_per_s"])
        r["memory_ratio_vs"] = ratio(mem, twin_mem) if r["kind"] != "loader" else None
        entry = {"device": r["device"], "model": r["model"], "kind": r["kind"], "row": r["row"], "vs": r["vs"],
                 "speedup": r["speedup_vs"], "memory_ratio": r["memory_ratio_vs"],
                 "memory_basis": basis if r["memory_ratio_vs"] is not None else None}
        if r["kind"] == "loader":
            entry["feed"] = r["feed"]
            entry["dali_threads"] = r["dali_threads"]
            entry["torchvision_workers"] = r["torchvision_workers"]
            entry["loader_overhead_pct"] = (finite(100 * (1 - r["speedup_vs"])) if r["speedup_vs"] is not None
                                            else None)
        ratios.append(entry)
    return ratios


def measure(*, device: str = "all", models: Sequence[str] | None = None, batch_size: int = 128, steps: int = 20,
            warmup_steps: int = 5, repeats: int = 3, num_samples: int = 4096, augment: str | None = None,
            compile: bool = False, overrides: Mapping[str, Mapping[str, Any]] | None = None,
            torchvision_workers: int | None = None, feeds: Sequence[str] = FEEDS,
            progress: Callable[[str], None] | None = None,
            on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report {"machine", "config", "results", "ratios", "warnings",
    "skipped", "notes", "complete"}. ``models=None``: resnet18 + resnet20 on CUDA, resnet20 on the CPU.
    `torchvision_workers`: the torchvision-fed row's DataLoader workers (None: the DALI-fed row's threads).
    `feeds`: which of the rows' feeds (synthetic, dali, torchvision) to measure; the others are listed as skipped.

    `overrides` maps a row label (e.g. ``"bf16 +cl"``) to ``TrainConfig`` fields that row is built with instead.
    A row that fails (build, warm-up or a timed repeat) is reported with ``status: "failed"`` and its one-line
    ``error``, and the other rows go on. `on_update` receives the partial report each time a (device, model)
    group of rows finishes.

    Raises :class:`dali_pipes.DaliTrainError` for an unknown model, augmentation, override or size (before
    measuring).
    """
    check_choice("--device", device, DEVICES)
    for name, value, lo in (("batch_size", batch_size, 1), ("steps", steps, 1), ("warmup_steps", warmup_steps, 0),
                            ("repeats", repeats, 1), ("num_samples", num_samples, 1)):
        check_int("--" + name.replace("_", "-"), value, lo)
    if torchvision_workers is not None:
        check_int("--torchvision-workers", torchvision_workers, 0)
    for feed in feeds:
        check_choice("feeds", feed, FEEDS)
    if models is not None:
        models = list(dict.fromkeys(models))
        bad = [m for m in models if m not in MODELS]
        if bad or not models:
            raise ConfigError(f"--models: {', '.join(map(repr, bad)) or 'nothing given'} is invalid; choose from "
                              f"{', '.join(MODELS)}")
    augment = TrainConfig().augment if augment is None else augment
    try:
        resolve_augment(augment)
    except ConfigError as e:
        raise ConfigError(f"--augment: {e}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for label, fields in (overrides or {}).items():
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"overrides[{label!r}]: unknown TrainConfig field(s) {', '.join(unknown)}")
    say = progress or (lambda _msg: None)
    cuda = bool(torch.cuda.is_available())
    devices = ["cpu", "cuda"] if device == "all" else [device]
    per_device = {d: list(models) if models is not None else list(DEFAULT_MODELS[d]) for d in devices}
    notes: list[str] = []
    if not compile:
        notes.append("compile rows not measured (pass --compile; compiling takes minutes per row"
                     + (", longer on the CPU)" if "cpu" in devices else ")"))
    elif "cpu" in devices:
        notes.append(COMPILE_CPU_NOTE)
        say(COMPILE_CPU_NOTE)
    config = {"devices": devices, "models": per_device, "batch_size": batch_size, "steps": steps,
              "warmup_steps": warmup_steps, "repeats": repeats, "dataset": "synthetic", "num_samples": num_samples,
              "augment": augment, "compile": compile, "recipe_precision": {d: RECIPE_PRECISION[d] for d in devices},
              "synthetic_feed": "torch.randn images + random labels, made once on the device and reused",
              "overrides": {label: {k: repr(v) for k, v in f.items()} for label, f in (overrides or {}).items()},
              "torchvision_workers": "the DALI row's threads" if torchvision_workers is None else torchvision_workers}
    report: dict[str, Any] = {"machine": machine_info(), "config": config, "results": [], "ratios": [],
                              "warnings": [], "skipped": [], "notes": notes, "complete": False}
    for dev in devices:
        if dev == "cpu":
            notes.append("cpu memory: host RSS is process-wide (every row of the run is resident); the memory ratio "
                         "uses the bytes saved for backward")
        for model in per_device[dev]:
            specs, skip = plan_rows(dev, model, cuda, compile, torchvision_workers)
            skip += [{"device": dev, "model": model, "row": s["row"], "reason": "its feed was not asked for "
                      f"(feeds: {', '.join(feeds)})"} for s in specs if s["feed"] not in feeds]
            specs = [s for s in specs if s["feed"] in feeds]
            report["skipped"] += skip
            if specs:
                with kernel_settings(deterministic=False):  # what training runs with: cudnn.benchmark on
                    report["results"] += _measure_group(specs, dev, batch_size=batch_size, num_samples=num_samples,
                                                        augment=augment, warmup_steps=warmup_steps, steps=steps,
                                                        repeats=repeats, overrides=overrides or {}, say=say,
                                                        cuda=cuda)
                report["ratios"] = _compare(report["results"])
                report["warnings"] = spread_warnings(report["results"],
                                                     lambda r: f"{r['device']} {r['model']} {r['row']}")
                if on_update is not None:
                    on_update(report)
    report["ratios"] = _compare(report["results"])
    report["complete"] = True
    return report


def _measure_group(specs: list[dict], dev: str, *, batch_size: int, num_samples: int, augment: str,
                   warmup_steps: int, steps: int, repeats: int, overrides: Mapping[str, Mapping[str, Any]],
                   say: Callable[[str], None], cuda: bool) -> list[dict]:
    """The rows of one (device, model), interleaved; a row that fails is closed and reported, the rest go on."""
    arms = [Arm(spec["row"], spec=spec) for spec in specs]

    def build(arm: Arm) -> _Row:
        say(f"[{dev} {arm.spec['model']}] {arm.name}: build + {warmup_steps} warm-up steps")
        return _Row(arm.spec, batch_size=batch_size, num_samples=num_samples, augment=augment,
                    warmup_steps=warmup_steps, overrides=overrides.get(arm.name))

    def failed(arm: Arm) -> None:
        say(f"[{dev} {arm.spec['model']}] {arm.name}: failed: {arm.error}")
        gc.collect()  # what the failed row held (an out-of-memory row, say) is freed before the next one
        if dev == "cuda" and cuda:
            torch.cuda.empty_cache()

    def said(arm: Arm, r: int, out: dict) -> None:
        say(f"[{dev} {arm.spec['model']}] repeat {r + 1}/{repeats} {arm.name}: "
            f"{out['images_per_s']:,.0f} img/s, {out['step_ms']:,.1f} ms/step")

    try:
        set_up(arms, build, on_fail=failed)
        monitor = ResourceMonitor(torch.device(dev))
        interleaved(arms, repeats, lambda arm, _r: arm.state.measure(steps, monitor), on_result=said,
                    on_fail=failed)
        return [_summarize(arm) if arm.ok else _failed(arm.spec, arm.error) for arm in arms]
    finally:
        for arm in arms:
            arm.state = None
        del arms
        gc.collect()
        if dev == "cuda" and cuda:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ CLI
def _parse_models(ctx, param, value: str | None) -> list[str] | None:
    if value is None:
        return None
    models = list(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise click.BadParameter(f"{', '.join(map(repr, bad)) or 'nothing given'}: choose from {', '.join(MODELS)}")
    return models


def _parse_augment(ctx, param, value: str) -> str:
    try:
        resolve_augment(value)
    except DaliTrainError as e:
        raise click.BadParameter(str(e)) from None
    return value


def command(measure_fn: Callable[..., dict] | None = None) -> click.Command:
    """The benchmark's command line; `measure_fn` stands in for :func:`measure` (a test of the CLI's own work)."""

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--device", type=click.Choice(DEVICES), default="all", show_default=True,
                  help="Which rows: cpu, cuda, or both (cuda rows are skipped with a reason when no GPU is visible).")
    @click.option("--models", default=None, callback=_parse_models,
                  help="Comma list of models [default: resnet18,resnet20 on cuda; resnet20 on cpu].")
    @click.option("--full", is_flag=True,
                  help=f"The long grid: --steps and --warmup-steps not given take {FULL['steps']} and "
                       f"{FULL['warmup_steps']} instead of the defaults below.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
    @click.option("--steps", type=click.IntRange(min=1), default=None,
                  help=f"Timed steps per repeat [default: {QUICK['steps']}; --full: {FULL['steps']}].")
    @click.option("--warmup-steps", type=click.IntRange(min=0), default=None,
                  help=f"Untimed steps per row before the first repeat [default: {QUICK['warmup_steps']}; --full: "
                       f"{FULL['warmup_steps']}].")
    @click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
                  help="Timed repeats per row (median and min..max over these).")
    @click.option("--num-samples", type=click.IntRange(min=1), default=4096, show_default=True,
                  help="Size of the synthetic training split the loader-fed rows read.")
    @click.option("--augment", default=TrainConfig().augment, show_default=True, callback=_parse_augment,
                  help="Augmentation of the loader-fed rows (DALI and torchvision).")
    @click.option("--torchvision-workers", type=click.IntRange(min=0), default=None,
                  help="DataLoader workers of the torchvision-fed row, 1 torch thread each [default: the DALI-fed "
                       "row's threads].")
    @click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
                  help="Add a torch.compile row per model (slow to compile, on the CPU especially).")
    @output_options
    def main(device: str, full: bool, models: list[str] | None, batch_size: int, steps: int | None,
             warmup_steps: int | None, repeats: int, num_samples: int, augment: str, torchvision_workers: int | None,
             compile_: bool, json_path: str | None, plot_path: str | None, quiet: bool) -> None:
        """Measure training-step throughput and memory per precision, memory format, compile and mixing, and the
        loader overhead (DALI-fed and torchvision-fed vs a synthetic batch on the device)."""
        progress = None if quiet else (lambda msg: click.echo(msg, err=True))
        base = FULL if full else QUICK
        steps = base["steps"] if steps is None else steps
        warmup_steps = base["warmup_steps"] if warmup_steps is None else warmup_steps
        started = time.perf_counter()
        try:
            report = (measure if measure_fn is None else measure_fn)(
                device=device, models=models, batch_size=batch_size, steps=steps, warmup_steps=warmup_steps,
                repeats=repeats, num_samples=num_samples, augment=augment, compile=compile_, progress=progress,
                torchvision_workers=torchvision_workers, on_update=json_updater(json_path, to_json))
        except DaliTrainError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        report["wall_time_s"] = round(time.perf_counter() - started, 1)
        click.echo(format_header(report))
        click.echo("")
        click.echo(format_table(report))
        click.echo(f"\nwall time {report['wall_time_s']:.0f} s")
        write_outputs(report, json_path=json_path, plot_path=plot_path, to_json=to_json, figure=plot_figure)


    return main


main = command()

if __name__ == "__main__":
    from benchmarks.torchvision_peer import preload_worker_imports

    preload_worker_imports()  # the script's process only: not where main() is called as a function (tests)
    main()
