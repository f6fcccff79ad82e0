"""One GPU check, sized for a short loan of a CUDA machine: correctness, augmentation and training throughput, and
a real run, each part in its own process with its own time budget, all in one JSON.

    python benchmarks/gpu_check.py --output gpu_check.json     # on a CUDA machine, about 6.3 minutes at most
    python benchmarks/gpu_check.py --cpu-smoke --output x.json  # the same plan on the CPU with tiny sizes

Parts, most informative first (budgets in seconds, ``--budget-s`` caps the sum):

- ``step``       (70)  dali-train's training step alone (needs torch and this repository; DALI only for its last
  row): a full fp16 epoch (fused SGD, clipping, per-sample Mixup/CutMix) with every step under
  ``torch.cuda.set_sync_debug_mode("error")`` ("ok", or the synchronising call and where); ms per step of fp16,
  bf16, fp32 and fp16 with a non-fused SGD (GradScaler then reads found_inf on the host), ResNet-18 batch 128,
  interleaved repeats, and the ratio fp16 / bf16; fused SGD after an overflowing first step (finite, equal to
  foreach SGD); the DALI GPU loader's synchronising calls per batch (sync-debug "warn");
- ``pytest``     (90)  ``pytest -m gpu tests``: pass / fail / error / skip counts and the failing tests' names
  (the GPU graphs, an fp16 epoch under sync-debug, a ``--deterministic`` run resumed bit for bit);
- ``train``      (100) ``train_throughput.measure`` on resnet18: fp32, fp16, bf16 each with and without
  channels-last, the recipe with mixing, and the same step fed by the DALI loader (loader overhead, with the DALI
  threads it used), with the allocator, process (DALI included) and device memory peaks;
- ``augment``    (60)  ``augment_throughput.measure``: presets none, weak, standard, weak+autoaugment at training
  batch 128 and 1024, dali-gpu and dali-cpu rows, short epochs; images/s and the batch 128 / 1024 ratios;
- ``dali_train`` (45)  ``python -m training``: 2 epochs of fp16 ResNet-18 on a small synthetic split in a temporary
  run directory; its summary.json and metrics.csv.

Each part runs as a child process (``--part NAME``) in its own process group: one that fails or overruns its
budget is recorded (``failed`` with its last error line, or ``timeout``, killed with its children) and the next
part runs. The benchmark parts write their JSON as rows finish, so a part stopped at its budget keeps its finished
rows. The report (``--output``, default ``$OUT/gpu_check.json`` when ``$OUT`` is set) is rewritten after every
part. Exit status: 0 when every part is ok, 1 otherwise or when no CUDA device is visible.

Needs: torch with CUDA, and for the parts nvidia-dali, click and pyyaml (imported at module level by the training
code and the benchmark scripts), matplotlib (``dali-train`` draws curves.png each epoch), numpy, pillow,
torchvision; nvidia-ml-py for the NVML figures and pytest for the first part. The report's ``environment`` lists
which of these are missing. The repository itself need not be installed: this script puts its root on
``sys.path`` and on the children's ``PYTHONPATH``.

On the lent device machine (device tool; torch 2.11+cu130 on Python 3.12, click, pyyaml, matplotlib, numpy,
pillow, torchvision, nvidia-ml-py, pytest and tqdm are there; nothing can be fetched, DALI travels as wheels):

1. here, in the repository root: ``bash ../shared/tools/device-wheels.sh nvidia-dali-cuda130==2.4.0
   astunparse==1.6.3 gast==0.7.0 optree==0.20.0 makefun==1.16.0 libcst==1.9.0 nvtx==0.2.17
   nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43`` (DALI's CUDA 13
   build, as the device's torch; nvimgcodec and nvjpeg decode images, which the folder tests of ``pytest -m gpu``
   use; versions as in requirements/stack.txt); it prints the number NN of ``.whl-parts`` folders;
2. device ``run`` calls back to back (the machine stays warm 30 s): for k = 01 .. NN-1, carry
   ``[".whl-parts/k"]``, command ``mkdir -p /tmp/parts && cp -r .whl-parts/k /tmp/parts/``. Copy them out: a
   carried folder does not stay in the working tree of the next call (seen 2026-12-04: only the last call's
   folder was there), /tmp does while the machine is warm;
3. last call, carry ``[".whl-parts/NN", ".whl-parts/install.sh"]``, timeout_s 480 (install and check; the check
   stops itself at --budget-s), command::

       cp -r .whl-parts/NN .whl-parts/install.sh /tmp/parts/ && bash /tmp/parts/install.sh &&
       python3 -m pip install -q --no-index --no-deps --no-compile /tmp/wheels/nvidia_dali*.whl \
         /tmp/wheels/nvidia_nvimgcodec*.whl /tmp/wheels/nvidia_nvjpeg*.whl /tmp/wheels/nvidia_libnvcomp*.whl &&
       export PYTHONPATH=/tmp/site:$PYTHONPATH && PYTHONUNBUFFERED=1 \
       python3 benchmarks/gpu_check.py --output $OUT/gpu_check.json

   The ``nvidia_*`` wheels go into the device's own environment: installed with ``--target /tmp/site`` alone,
   ``import nvidia.dali`` fails there (``nvidia`` in torch's environment is a regular package, which wins over
   the namespace folder in /tmp/site). Run this way on 2026-12-04 in 155 s, every part ok:
   benchmarks/results/gpu_check-2026-12-04-h200.json.
   The table is in the reply's output tail, the JSON under files_at.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

from benchmarks._outputs import one_line, write_text_atomic  # noqa: E402 - standard library only

NO_CUDA = "no CUDA device visible"
# The parts' budgets and a kill grace: 6.3 minutes, so that carrying and installing DALI's wheels (about 1.5
# minutes of device calls) and the check fit in 8, and a rerun in a 15-minute loan.
TOTAL_BUDGET_S = 380
KILL_GRACE_S = 10  # after SIGTERM, before SIGKILL
NEEDED = ("torch", "nvidia.dali", "click", "yaml", "matplotlib", "numpy", "PIL", "torchvision", "pynvml", "pytest",
          "tqdm")

# What each part measures; "smoke" is the same plan on the CPU with tiny sizes.
SIZES = {
    "full": {
        "step": {"budget_s": 70, "model": "resnet18", "batch_size": 128, "steps": 30, "warmup_steps": 10,
                 "repeats": 3, "sync_steps": 20},
        "pytest": {"budget_s": 90, "target": "tests"},  # 43-49 s on an H200 (2026-12-04)
        # the torchvision-fed row is left out: its workers (one per DALI thread) start by importing torch, which
        # alone overran the 60 s budget (2026-12-04) and, its rows interleaved with the others, left none finished.
        # Without it the part still took 93 s when run alone (2026-12-04, fourth session): 100 s.
        "train": {"budget_s": 100, "device": "cuda", "models": ["resnet18"], "batch_size": 128, "steps": 30,
                  "warmup_steps": 5, "repeats": 3, "num_samples": 4096, "feeds": ["synthetic", "dali"]},
        "augment": {"budget_s": 60, "presets": ["none", "weak", "standard", "weak+autoaugment"], "device": "all",
                    "batch_sizes": [128, 1024], "repeats": 3, "num_samples": 10_240},
        "dali_train": {"budget_s": 45, "args": ["--device", "cuda", "--model", "resnet18", "--num-samples", "4096",
                                                "--amp", "--amp-dtype", "float16"]},
    },
    "smoke": {
        "step": {"budget_s": 120, "model": "resnet20", "batch_size": 8, "steps": 2, "warmup_steps": 1,
                 "repeats": 1, "sync_steps": 2, "cpu": True},
        "pytest": {"budget_s": 120, "target": "tests/test_gpu.py"},
        "train": {"budget_s": 150, "device": "cpu", "models": ["resnet20"], "batch_size": 4, "steps": 1,
                  "warmup_steps": 1, "repeats": 1, "num_samples": 8, "augment": "none"},
        "augment": {"budget_s": 120, "presets": ["none", "weak"], "device": "cpu", "batch_sizes": [8, 16],
                    "repeats": 1, "num_samples": 32},
        "dali_train": {"budget_s": 150, "args": ["--device", "cpu", "--model", "resnet20", "--num-samples", "64",
                                                 "--batch-size", "16", "--amp", "--amp-dtype", "bfloat16",
                                                 "--augment", "none"]},
    },
}


# ------------------------------------------------------------------------------------------------ parts (children)
def _writer(path: Path) -> Callable[[dict], None]:
    return lambda report: write_text_atomic(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def part_augment(sizes: dict, out: Path) -> None:
    from benchmarks import augment_throughput as aug

    write = _writer(out)
    # DALI rows and the batched peers only: the torchvision rows (tuning included) would not fit the part's budget
    report = aug.measure(sizes["presets"], device=sizes["device"], workers=[], tuned_workers=[],
                         batch_sizes=sizes["batch_sizes"],
                         repeats=sizes["repeats"], num_samples=sizes["num_samples"], progress=_say, on_update=write)
    write(report)
    print(aug.format_table(report), flush=True)


def part_train(sizes: dict, out: Path) -> None:
    from benchmarks import train_throughput as tt

    write = _writer(out)
    keys = ("device", "models", "batch_size", "steps", "warmup_steps", "repeats", "num_samples", "augment", "feeds")
    report = tt.measure(**{k: sizes[k] for k in keys if k in sizes}, progress=_say, on_update=write)
    write(report)
    print(tt.format_table(report), flush=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


STEP_ROWS = ("fp16", "fp16 foreach", "bf16", "fp32")  # "foreach": SGD without fused kernels, as before issue 20


def _step_setup(precision: str, sizes: dict, device: Any) -> tuple[Any, tuple[Any, Any]]:
    """The training step dali-train builds for `precision` (training.recipe.factory), without mixing, and one synthetic
    batch on the device."""
    import dataclasses

    import torch

    from training.config import TrainConfig
    from training.distributed import World
    from training.recipe.factory import build_model, step_context

    amp = precision != "fp32"
    cfg = TrainConfig(dataset="synthetic", model=sizes["model"], batch_size=sizes["batch_size"], amp=amp,
                      amp_dtype="bfloat16" if precision == "bf16" else "float16", mixup_alpha=0.0, cutmix_alpha=0.0,
                      clip_grad=sizes.get("clip_grad", 0.0), device=device.type)
    torch.manual_seed(0)
    model = build_model(cfg, 10, device)
    ctx = step_context(cfg, model, num_classes=10, steps_per_epoch=1000, device=device, world=World())
    if precision.endswith("foreach"):
        ctx = dataclasses.replace(ctx, optimizer=torch.optim.SGD(
            model.parameters(), lr=cfg.scaled_lr(1), momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov, foreach=True))
    g = torch.Generator(device=device).manual_seed(1)
    batch = (torch.randn(cfg.batch_size, 3, 32, 32, device=device, generator=g),
             torch.randint(0, 10, (cfg.batch_size,), device=device, generator=g))
    return ctx, batch


def _sync_debug_epoch(sizes: dict, device: Any) -> dict:
    """A full fp16 epoch of dali-train's step (fused SGD, clipping, Mixup/CutMix per sample) on device batches,
    every step under ``set_sync_debug_mode("error")``: "ok", or the synchronising call that raised."""
    import itertools
    import traceback

    import torch

    from training.recipe.engine import train_one_epoch
    from training.recipe.mixing import MixConfig, Mixer

    ctx, batch = _step_setup("fp16", {**sizes, "clip_grad": 1.0}, device)
    ctx.mixer = Mixer(MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1,
                                num_classes=10), generator=torch.Generator().manual_seed(2))
    steps = sizes["sync_steps"]
    train_one_epoch(ctx, itertools.repeat(batch, 3), log_every=10**9)  # warm: cuDNN autotuning, lazy inits

    def checked():
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from itertools.repeat(batch, steps)
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    try:
        stats = train_one_epoch(ctx, checked(), log_every=10**9)
    except RuntimeError as e:
        frames = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)]
        return {"status": "failed", "error": one_line(e), "where": frames[-6:]}
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {"status": "ok", "steps": stats["steps"], "skipped_steps": stats["skipped_steps"]}


def _loader_sync_count(sizes: dict, device: Any) -> dict:
    """Synchronising calls per batch of the DALI loader (GPU graph, `standard`), counted under sync-debug "warn":
    the loader's share, apart from the step's (needs DALI)."""
    import warnings

    import torch

    from dali_pipes import create_loader

    loader = create_loader(dataset="synthetic", split="train", batch_size=sizes["batch_size"], device=device,
                           augment="standard", num_samples=sizes["batch_size"] * sizes["sync_steps"], download=False)
    loader.set_epoch(0)
    for _ in loader:  # build and warm the pipeline
        pass
    loader.set_epoch(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            batches = sum(1 for _ in loader)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return {"status": "ok", "batches": batches, "sync_warnings": len(syncs),
            "per_batch": len(syncs) / max(batches, 1),
            "first": one_line(syncs[0].message) if syncs else None}


def _step_times(sizes: dict, device: Any) -> dict:
    """ms per step of dali-train's step per precision, interleaved repeats, median (CUDA synchronized before the
    clock is read, by train_one_epoch); fp16 vs bf16 is the cost of GradScaler on top of the same kernels."""
    import itertools
    import statistics

    from training.recipe.engine import train_one_epoch

    rows = {name: _step_setup(name, sizes, device) for name in STEP_ROWS}
    for ctx, batch in rows.values():
        train_one_epoch(ctx, itertools.repeat(batch, sizes["warmup_steps"]), log_every=10**9)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for rep in range(sizes["repeats"]):
        order = list(rows)[rep % len(rows):] + list(rows)[:rep % len(rows)]
        for name in order:
            ctx, batch = rows[name]
            stats = train_one_epoch(ctx, itertools.repeat(batch, sizes["steps"]), log_every=10**9)
            times[name].append(1000 * stats["epoch_time_s"] / sizes["steps"])
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"status": "ok", "model": sizes["model"], "batch_size": sizes["batch_size"], "steps": sizes["steps"],
            "median_step_ms": med, "runs_ms": times,
            "fp16_vs_bf16_time": med["fp16"] / med["bf16"],
            "fp16_foreach_vs_fp16_time": med["fp16 foreach"] / med["fp16"]}


def _fused_sgd_skip(device: Any) -> dict:
    """The built (fused) SGD after an overflowing first fp16 step and a finite one, against foreach SGD: fused
    SGD leaves uninitialised momentum when its first step is skipped, unless create_optimizer zeroes it."""
    import math as m

    import torch

    from training.config import TrainConfig
    from training.recipe.engine import scaler_step
    from training.recipe.factory import create_optimizer

    ends = []
    for fused in (True, False):
        torch.manual_seed(0)
        layer = torch.nn.Linear(64, 64).to(device)
        opt = (create_optimizer(TrainConfig(lr=0.1), layer) if fused else torch.optim.SGD(
            layer.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True))
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10)
        for x in (torch.full((2, 64), m.inf, device=device), torch.ones(2, 64, device=device)):
            opt.zero_grad(set_to_none=True)
            scaler_step(layer(x).sum(), opt, scaler, params=list(layer.parameters()))
        ends.append([p.detach().double() for p in layer.parameters()])
    diff = max(float((a - b).abs().max()) for a, b in zip(*ends))
    finite = all(bool(torch.isfinite(p).all()) for p in ends[0])
    return {"status": "ok" if finite and diff < 1e-5 else "failed", "finite": finite, "max_abs_diff": diff}


def part_step(sizes: dict, out: Path) -> None:
    """The training step alone (torch and this repository; DALI only for the loader count): the fp16 epoch under
    sync-debug "error", fp16 vs bf16 step time, fused SGD after a skipped first step, the loader's syncs. The JSON
    is rewritten after each; one that fails is recorded and the next runs."""
    import torch

    from training.machine import machine_info

    cuda = torch.cuda.is_available() and not sizes.get("cpu")
    device = torch.device("cuda" if cuda else "cpu")
    report: dict[str, Any] = {"machine": machine_info(), "config": sizes, "results": [], "complete": False}
    write = _writer(out)
    checks = [("fp16 epoch under sync-debug error", lambda: _sync_debug_epoch(sizes, device) if cuda else
               {"status": "skipped", "error": "sync-debug mode needs CUDA"}),
              ("step time per precision", lambda: _step_times(sizes, device)),
              ("fused SGD after a skipped first step", lambda: _fused_sgd_skip(device)),
              ("DALI loader syncs per batch", lambda: _loader_sync_count(sizes, device) if cuda else
               {"status": "skipped", "error": "sync-debug mode needs CUDA"})]
    for name, check in checks:
        _say(f"[step] {name}")
        try:
            row = check()
        except Exception as e:  # noqa: BLE001 - one check's failure is its row's, the next runs
            row = {"status": "failed", "error": one_line(e)}
        report["results"].append({"row": name, **row})
        write(report)
    report["complete"] = True
    write(report)
    print(json.dumps(report["results"], indent=1), flush=True)


CHILD_PARTS = {"augment": part_augment, "train": part_train, "step": part_step}


# ------------------------------------------------------------------------------------------------ plan (parent)
@dataclass(frozen=True)
class Part:
    """A command with a time budget, and how to read what it left behind into ``{"status", "error", "summary",
    "result"}`` (status and error already set from the exit code and output)."""

    name: str
    budget_s: float
    command: list[str]
    read: Callable[[dict], None]


def _last_error_line(output: str) -> str | None:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):  # the exception line of a traceback, or a CLI's "error: ..." line
        if re.match(r"^([\w.]+(Error|Exception|Interrupt)|error)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pytest_part(sizes: dict, tmp: Path) -> Part:
    xml = tmp / "pytest.xml"

    def read(res: dict) -> None:
        counts = _junit_counts(xml) or _summary_counts(res.get("output_tail", ""))
        res["result"] = counts
        if counts is None:
            res["summary"] = "no test counts (pytest ended before reporting)"
            return
        res["summary"] = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
                          f"{counts['skipped']} skipped")
        if res["status"] == "failed" and counts["failures"]:
            res["error"] = "failing: " + ", ".join(counts["failures"][:5])
        if res["status"] == "ok" and counts["passed"] + counts["skipped"] == 0:
            res["status"], res["error"] = "failed", "no test ran"

    command = [sys.executable, "-m", "pytest", "-m", "gpu", sizes["target"], "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
    return Part("pytest", sizes["budget_s"], command, read)


def _junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname', '')}::{case.get('name', '')}" for case in root.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"],
            "failures": failing}


def _summary_counts(output: str) -> dict | None:
    found = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", output))
    if not found:
        return None
    return {"passed": found.get("passed", 0), "failed": found.get("failed", 0),
            "errors": found.get("errors", found.get("error", 0)), "skipped": found.get("skipped", 0),
            "failures": []}


def _bench_part(name: str, sizes: dict, tmp: Path, smoke: bool) -> Part:
    out = tmp / f"{name}.json"

    def read(res: dict) -> None:
        report = _read_json(out)
        res["result"] = report
        if report is None:
            res["summary"] = "no rows finished"
            if res["status"] == "ok":
                res["status"], res["error"] = "failed", "exited without writing its report"
            return
        rows = report.get("results", [])
        bad = [r for r in rows if r.get("status") not in ("ok", "skipped")]  # skipped: not on this device
        res["summary"] = (f"{len(rows) - len(bad)} of {len(rows)} rows ok"
                          + ("" if report.get("complete") else " (incomplete)") + _bench_highlights(name, report))
        if bad and res["status"] == "ok":
            res["status"] = "failed"
        if bad and res["error"] is None:
            res["error"] = f"{bad[0].get('row')}: {bad[0].get('error')}"

    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--part-output", str(out)]
    return Part(name, sizes["budget_s"], command + (["--cpu-smoke"] if smoke else []), read)


def _fmt(x: Any, spec: str) -> str:
    return "-" if not isinstance(x, (int, float)) or not math.isfinite(x) else format(x, spec)


def _step_highlights(report: dict) -> str:
    rows = {r.get("row"): r for r in report.get("results", [])}
    out = []
    sync = rows.get("fp16 epoch under sync-debug error")
    if sync:
        out.append(f"sync-debug fp16 epoch {sync['status']}")
    times = rows.get("step time per precision")
    if times and times.get("status") == "ok":
        med = times["median_step_ms"]
        out.append(f"ms/step fp16 {_fmt(med['fp16'], '.2f')}, bf16 {_fmt(med['bf16'], '.2f')} (fp16/bf16 "
                   f"{_fmt(times['fp16_vs_bf16_time'], '.2f')}x), fp16 foreach {_fmt(med['fp16 foreach'], '.2f')}")
    loader = rows.get("DALI loader syncs per batch")
    if loader and loader.get("status") == "ok":
        out.append(f"loader syncs/batch {_fmt(loader['per_batch'], '.1f')}")
    return "; " + "; ".join(out) if out else ""


def _bench_highlights(name: str, report: dict) -> str:
    if name == "step":
        return _step_highlights(report)
    if name == "augment":
        ratios = [q for q in report.get("batch_ratios", []) if q.get("ratio") is not None]
        if not ratios:
            return ""
        q0 = ratios[0]
        return (f"; batch {q0['small_batch']}/{q0['large_batch']} img/s: "
                + ", ".join(f"{q['preset']} {q['row']} {q['ratio']:.2f}x" for q in ratios))
    parts = []
    for q in report.get("ratios", []):
        if q.get("kind") == "amp_vs_fp32" and "+cl" in q.get("row", ""):
            parts.append(f"{q['row']} {_fmt(q.get('speedup'), '.2f')}x {q['vs']}")
        elif q.get("kind") == "loader":
            parts.append(f"loader overhead {_fmt(q.get('loader_overhead_pct'), '.0f')}%")
    return "; " + "; ".join(parts) if parts else ""


def _dali_train_part(sizes: dict, tmp: Path) -> Part:
    run_dir = tmp / "dali-train-run"
    command = [sys.executable, "-m", "training", "--dataset", "synthetic", "--epochs", "2", "--output", str(run_dir),
               *sizes["args"]]

    def read(res: dict) -> None:
        summary = _read_json(run_dir / "summary.json")
        metrics = []
        try:
            with open(run_dir / "metrics.csv", newline="") as f:
                metrics = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except OSError:
            pass
        res["result"] = {"summary": summary, "metrics": metrics}
        if summary is None:
            if res["status"] == "ok":
                res["status"], res["error"] = "failed", "no summary.json written"
            res["summary"] = f"{len(metrics)} epoch(s) in metrics.csv, no summary.json"
            return
        last = metrics[-1] if metrics else {}
        res["summary"] = (f"{summary.get('epochs_run')} epochs, best val acc "
                          f"{_fmt(100 * (summary.get('best_val_acc') or math.nan), '.1f')}%, last epoch "
                          f"{_fmt(last.get('images_per_s'), ',.0f')} img/s, cuda peak alloc "
                          f"{_fmt(last.get('max_mem_allocated_mib'), ',.0f')} MiB"
                          + (f", process GPU memory {_fmt(last['gpu_mem_process_max_mib'], ',.0f')} MiB"
                             if last.get("gpu_mem_process_max_mib") is not None else ""))
        if summary.get("epochs_run") != 2 and res["status"] == "ok":
            res["status"], res["error"] = "failed", f"ran {summary.get('epochs_run')} of 2 epochs"

    return Part("dali_train", sizes["budget_s"], command, read)


def _number(value: str | None) -> float | str | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return value or None
    return x if math.isfinite(x) else None


def plan(smoke: bool, tmp: Path) -> list[Part]:
    sizes = SIZES["smoke" if smoke else "full"]
    # Most informative first: the step alone needs only torch (a failed DALI install still leaves it), then the
    # GPU tests, then the throughputs, then a whole run.
    return [_bench_part("step", sizes["step"], tmp, smoke), _pytest_part(sizes["pytest"], tmp),
            _bench_part("train", sizes["train"], tmp, smoke), _bench_part("augment", sizes["augment"], tmp, smoke),
            _dali_train_part(sizes["dali_train"], tmp)]


# ------------------------------------------------------------------------------------------------ running
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _stop_group(proc: subprocess.Popen) -> None:
    """End the part's process group (the child and what it started: DALI threads, workers, pytest's runs)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(part: Part, budget_s: float, log_dir: Path, say: Callable[[str], None]) -> dict:
    """Run one part within `budget_s` seconds; never raises for what the part does."""
    log = log_dir / f"{part.name}.log"
    res: dict[str, Any] = {"name": part.name, "status": "ok", "budget_s": round(budget_s, 1), "wall_s": None,
                           "returncode": None, "error": None, "summary": "", "result": None,
                           "command": part.command, "output_tail": ""}
    say(f"[gpu-check] {part.name}: started (budget {budget_s:.0f} s)")
    started = time.perf_counter()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(part.command, cwd=ROOT, env=_child_env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                res["returncode"] = proc.wait(max(budget_s, 1))
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                res["status"], res["error"] = "timeout", f"stopped at its {budget_s:.0f} s budget"
            except BaseException:  # the check itself interrupted: leave nothing running
                _stop_group(proc)
                raise
    except OSError as e:
        res["status"], res["error"] = "failed", one_line(e)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    output = log.read_text(errors="replace") if log.exists() else ""
    res["output_tail"] = output[-4000:]
    if res["status"] == "ok" and res["returncode"] != 0:
        res["status"] = "failed"
        res["error"] = _last_error_line(output) or f"exit status {res['returncode']}"
    try:
        part.read(res)
    except Exception as e:  # noqa: BLE001 - a part whose files cannot be read is that part's failure
        res["status"], res["error"] = "failed", f"reading its results: {one_line(e)}"
    say(f"[gpu-check] {part.name}: {res['status']} in {res['wall_s']:.0f} s"
        + (f" - {res['error']}" if res["error"] else ""))
    return res


def environment() -> dict[str, Any]:
    """What the parts will import, found without importing it (an import could start CUDA in this process)."""
    def present(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    import platform

    return {"python": platform.python_version(), "executable": sys.executable,
            "missing_modules": [m for m in NEEDED if not present(m)],
            "pythonpath": os.environ.get("PYTHONPATH", ""), "cuda_visible_devices":
            os.environ.get("CUDA_VISIBLE_DEVICES")}


def run_check(parts: Sequence[Part], *, total_budget_s: float, output: Path | None, mode: str,
              say: Callable[[str], None] = print, log_dir: Path) -> dict:
    """Run every part in turn within its budget and what is left of `total_budget_s`; the report is rewritten to
    `output` after each part."""
    report: dict[str, Any] = {"mode": mode, "environment": environment(), "machine": None, "parts": [],
                              "complete": False}
    deadline = time.monotonic() + total_budget_s
    for part in parts:
        left = deadline - time.monotonic() - KILL_GRACE_S
        if left < 1:
            res = {"name": part.name, "status": "skipped", "budget_s": part.budget_s, "wall_s": 0,
                   "returncode": None, "error": "the total budget was spent", "summary": "", "result": None,
                   "command": part.command, "output_tail": ""}
        else:
            res = run_part(part, min(part.budget_s, left), log_dir, say)
        report["parts"].append(res)
        machine = (res.get("result") or {}).get("machine") if isinstance(res.get("result"), dict) else None
        if machine and report["machine"] is None:
            report["machine"] = machine
        if output is not None:
            write_text_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
    report["complete"] = True
    report["ok"] = all(p["status"] == "ok" for p in report["parts"])
    if output is not None:
        write_text_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def format_table(report: dict) -> str:
    m = report.get("machine") or {}
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    head = (f"gpu check ({report['mode']}): {gpus}" + (f" (driver {m['driver']})" if m.get("driver") else "")
            + f", torch {m.get('torch', '?')}, DALI {m.get('dali', '?')}, {m.get('cores_available', '?')} cores")
    rows = [("part", "status", "time", "budget", "result")]
    for p in report["parts"]:
        rows.append((p["name"], p["status"], f"{_fmt(p['wall_s'], '.0f')} s", f"{_fmt(p['budget_s'], '.0f')} s",
                     p["summary"] or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head, ""]
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for p in report["parts"]:
        if p["error"]:
            lines.append(f"{p['name']}: {p['error']}")
    missing = report["environment"]["missing_modules"]
    if missing:
        lines.append(f"missing modules: {', '.join(missing)}")
    return "\n".join(lines)


def _details(report: dict) -> str:
    """The benchmark parts' own tables (from their output), for reading the numbers without the JSON."""
    out = []
    for p in report["parts"]:
        if p["name"] in CHILD_PARTS and isinstance(p.get("result"), dict) and p["result"].get("results"):
            if p["name"] == "step":  # no module table: its rows as they are
                out += ["", "== step"] + [json.dumps(r, allow_nan=False) for r in p["result"]["results"]]
                continue
            try:
                module = __import__(f"benchmarks.{p['name']}_throughput", fromlist=["format_table"])
                out += ["", f"== {p['name']}", module.format_table(p["result"])]
            except Exception as e:  # noqa: BLE001 - the summary table and the JSON still hold the numbers
                out += ["", f"== {p['name']}: table unavailable ({one_line(e)})"]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CLI
def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line naming the option, exit status 2 (as the other scripts)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None,
                        help="The report (JSON) [default: $OUT/gpu_check.json when $OUT is set, else none].")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="Run the same plan on the CPU with tiny sizes (checks this script's plumbing).")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S,
                        help=f"Seconds for all parts together [default: {TOTAL_BUDGET_S}].")
    parser.add_argument("--part", choices=sorted(CHILD_PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--part-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SIZES["smoke" if args.cpu_smoke else "full"]
    if args.part:  # a child: one benchmark part
        if not args.part_output:
            parser.error("--part needs --part-output")
        CHILD_PARTS[args.part](sizes[args.part], Path(args.part_output))
        return 0
    if not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        parser.error(f"--budget-s={args.budget_s}: expected seconds > 0")
    output = args.output or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    if output is not None:
        out_dir = Path(output).expanduser().resolve().parent
        if not out_dir.is_dir():
            parser.error(f"--output: directory {str(out_dir)!r} does not exist")
    if not args.cpu_smoke and not _cuda_visible():
        print(f"error: {NO_CUDA}: gpu_check measures a GPU; run it on a CUDA machine, or pass --cpu-smoke to "
              "check its plumbing on the CPU", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        report = run_check(plan(args.cpu_smoke, tmp), total_budget_s=args.budget_s,
                           output=Path(output) if output else None, mode="cpu-smoke" if args.cpu_smoke else "cuda",
                           say=_say, log_dir=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(format_table(report))
    details = _details(report)
    if details:
        print(details)
    print(f"\njson: {output}" if output else "\njson: not written (pass --output or set $OUT)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
