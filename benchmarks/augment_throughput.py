"""Augmentation throughput: torchvision DataLoader workers vs DALI on CPU (and GPU) over the synthetic CIFAR split.

    python benchmarks/augment_throughput.py --device cpu --json bench.json
    python benchmarks/augment_throughput.py --device cpu --full --json bench.json

The defaults (presets none, standard, weak+autoaugment; 2,048 images; the reference at as many workers as cores)
finish in a few minutes on 2 cores; ``--full`` is the long grid (every preset, 10,000 images, the reference at
0..cores workers: over an hour on 2 cores).
    python benchmarks/augment_throughput.py --device all --workers none --batch-sizes 128,1024 --json bench.json

``--json`` also writes the rows as CSV beside it (same name, ``.csv``); ``--plot`` draws bars on a linear axis from
zero.

How it measures (the numbers decide which backend users pick, so every row is measured the same way, through
training.harness):

- every row builds its loader once; one full epoch per row is run first and not timed (DALI pipeline build,
  the first worker start, caches);
- a repeat times ``--epochs-per-repeat`` full epochs (``set_epoch`` each epoch, every batch consumed; CUDA rows
  synchronize before the clock is read); images/s = images delivered / seconds;
- rows of a preset are measured interleaved (each repeat runs every row once, starting at a rotating row), so
  machine noise hits all rows alike; median and min..max are over repeats;
- a row whose repeats spread more than 1.5x (max / min) is warned about after the table and marked in the JSON
  (``spread``, ``spread_warning``, ``warnings``): its median and the ratios built on it may not repeat;
- torchvision, two ways: ``torchvision-tuned``, the plain v2 pipeline a user writes (benchmarks/torchvision_peer.py:
  torchvision draws its own parameters, no per-sample re-seeding), in a DataLoader with one torch thread per
  worker, at the fastest of ``--tuned-workers`` worker counts (each tried for one untimed and one timed epoch
  while the rows are set up; the table states what it picked); and ``torchvision-ref w=<k>``, the deterministic
  reference backend (dali_pipes.reference: the DALI graph's draws, torch re-seeded per sample) at each
  ``--workers`` count. Every row reports ``vs tuned tv`` (row median / the tuned row's) and ``vs reference``
  (row median / the best reference row's), both of the same preset and batch size, and each DALI row's two
  ratios are printed side by side below the table;
- every row runs at each ``--batch-sizes`` training batch size (rows of all sizes interleaved as above); with
  several sizes, ``vs batch L`` = row median / the same row's median at the largest size L (batch 128 / batch 1024 shows what
  small training batches cost each backend). ``--dali-batch-size`` sets the batch the DALI graph runs on
  (split into training batches by the loader); unset, the loader chooses;
- peers, for the presets they implement (crop, flip, colour jitter, erasing): ``torch-batched-<device>``, the
  recipe as batched torch ops with the DALI graph's draws (benchmarks/batched_torch.py), and ``kornia-<device>``,
  kornia's batched augmentation with its own draws (benchmarks/kornia_peer.py; when kornia is installed: the test
  extra has it, ``pip install -e .[bench]`` for users);
- threads: DALI rows by training's rule (``dali_pipes.loader.default_num_threads``: every core of this process's
  share for the CPU graph, one fewer for the GPU graph) unless ``--dali-threads`` says otherwise; each batched-torch
  peer gets the same number of torch intra-op threads as its device's DALI row; the header's ``threads`` line and
  the JSON's ``config.threads`` state what every row used;
- a row that fails (build, warm-up or a timed epoch) is reported as failed with its one-line error, and the
  other rows go on; ``--json`` is rewritten after each preset, so a run stopped midway keeps the finished
  presets (``"complete": false``).

``--dataset folder`` measures the image-folder path instead (random-resized-crop to ``--image-size`` for presets with
a random crop, resize + centre crop for ``none``) on a folder of JPEGs generated into a temporary directory
(``--folder-images`` files of ``--image-shape`` WxH, smooth noise at quality 90, as photos compress), plus
decode-only rows (the files decoded and nothing else: DALI's CPU decoder with ``dali_threads`` threads, and the
reference's decode_image_rgb in one process, what each DataLoader worker pays per image):

    python benchmarks/augment_throughput.py --dataset folder --device cpu --presets none,standard

``--dataset shards`` packs the same generated JPEGs with dali-shard (4 MiB tar shards) and reads them from the
shards. Folder and shards rows report the files each epoch opened under the data folder (``files opened/epoch``:
the kernel's count of opens, inotify, DataLoader workers and DALI's C++ readers included; JSON
``files_opened_per_epoch``):

    python benchmarks/augment_throughput.py --dataset shards --device cpu --presets none,standard

Rows are timed exactly as a training loop over ``create_loader`` would see them: whatever the backend pays per
epoch (worker start-up, if its workers do not persist) is part of the timed epochs.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click  # noqa: E402
import torch  # noqa: E402

from benchmarks._outputs import json_updater, output_options, write_outputs  # noqa: E402
from benchmarks.augment_folder import format_decode, make_jpeg_folder, measure_folder  # noqa: E402
from benchmarks.augment_report import format_header, format_table, plot_figure  # noqa: E402
from dali_pipes import BACKENDS, ConfigError, DaliTrainError, resolve_augment  # noqa: E402
from dali_pipes.loader import cpu_count, create_loader, default_num_threads  # noqa: E402
from dali_pipes.checks import check_choice  # noqa: E402
from training.harness import Arm, Stats, interleaved, ratio, set_up, spread_warnings, to_json  # noqa: E402
from training.machine import machine_info  # noqa: E402

__all__ = ["NO_CUDA", "format_decode", "format_header", "format_table", "json_updater", "machine_info", "main",
           "make_jpeg_folder", "measure", "measure_folder", "plot_figure", "to_json"]

DEFAULT_PRESETS = ("none", "weak", "standard", "strong", "weak+autoaugment", "weak+randaugment",
                   "weak+trivialaugment")
# What the command line measures unless told otherwise: under 5 minutes on 2 cores. --full: the long grid.
QUICK = {"presets": ("none", "standard", "weak+autoaugment"), "num_samples": 2048, "reference_workers": "cores"}
FULL = {"presets": DEFAULT_PRESETS, "num_samples": 10_000, "reference_workers": "0..cores"}
NO_CUDA = "no CUDA device visible"
DEVICES = ("cpu", "cuda", "all")  # which rows: CPU-delivering, GPU-delivering, or both
BENCH_DATASETS = ("synthetic", "folder", "shards")


# ------------------------------------------------------------------------------------------------------ rows
def plan_rows(device: str, workers: Sequence[int], dali_threads: int | None, cuda: bool,
              cores: int | None = None, tuned_workers: Sequence[int] = ()) -> tuple[list[dict], list[dict]]:
    """The rows of every preset, and the skipped rows with their reason.

    ``cpu``: torchvision rows and dali-cpu, all delivering CPU tensors. ``cuda``: torchvision rows delivering to the
    GPU (pinned memory) and dali-gpu. ``all``: the cpu rows plus dali-gpu (when CUDA is visible). The torchvision
    rows: the deterministic reference at each of `workers` (``torchvision-ref w=<k>``), and the plain pipeline
    tuned over `tuned_workers` (``torchvision-tuned``, when any are given).

    Threads: `dali_threads` for every DALI row when given, else training's rule per device
    (``dali_pipes.loader.default_num_threads``: a GPU graph leaves one core to the step). Each batched-torch peer
    runs with as many torch intra-op threads as the DALI row of its device, so the two use the same cores.
    """
    rows: list[dict] = []
    skipped: list[dict] = []
    tv_device = "cuda" if device == "cuda" else "cpu"

    def threads(dev: str) -> int:
        return int(dali_threads) if dali_threads is not None else default_num_threads(torch.device(dev), cores)

    def add(row: dict) -> None:
        if row["device"] == "cuda" and not cuda:
            skipped.append({"row": row["row"], "reason": NO_CUDA})
        else:
            rows.append(row)

    for k in workers:
        add({"row": f"torchvision-ref w={k}", "backend": "torchvision", "device": tv_device, "workers_or_threads": k})
    if tuned_workers:
        add({"row": "torchvision-tuned", "backend": TUNED, "device": tv_device, "workers_or_threads": None,
             "grid": [int(k) for k in tuned_workers]})
    if device in ("cpu", "all"):
        add({"row": "dali-cpu", "backend": "dali", "device": "cpu", "workers_or_threads": threads("cpu")})
    if device in ("cuda", "all"):
        add({"row": "dali-gpu", "backend": "dali", "device": "cuda", "workers_or_threads": threads("cuda")})
    # Peers: the recipe as batched torch ops, and as kornia's batched augmentation (when installed), on each
    # delivering device, on as many threads as DALI gets there
    from benchmarks import kornia_peer

    devices = (["cpu"] if device in ("cpu", "all") else []) + (["cuda"] if device in ("cuda", "all") else [])
    for dev in devices:
        add({"row": f"torch-batched-{dev}", "backend": PEER, "device": dev, "workers_or_threads": threads(dev)})
    for dev in devices:
        if kornia_peer.available():
            add({"row": f"kornia-{dev}", "backend": KORNIA, "device": dev, "workers_or_threads": threads(dev)})
    if not kornia_peer.available():
        skipped.append({"row": "kornia", "reason": "kornia is not installed (optional, benchmark only: "
                                                   "pip install kornia)"})
    return rows, skipped


LOADER_BACKENDS = BACKENDS
PEER = "torch-batched"  # benchmarks.batched_torch: the recipe as whole-batch torch ops, not a loader backend
KORNIA = "kornia"  # benchmarks.kornia_peer: kornia.augmentation over whole batches (optional)
TUNED = "torchvision-tuned"  # benchmarks.torchvision_peer: plain torchvision v2 in a DataLoader, best worker count
SYNTHETIC_ONLY = (PEER, KORNIA, TUNED)  # peers that read the synthetic arrays, not folders or shards


def _build(row: dict, preset: str, batch_size: int, num_samples: int, options: Mapping[str, Any],
           make_loader: Callable[..., Any], say: Callable[[str], None] = lambda _m: None):
    if row["backend"] == TUNED:
        from benchmarks.torchvision_peer import PlainTorchvisionLoader, tune

        def make(k: int) -> PlainTorchvisionLoader:
            return PlainTorchvisionLoader(augment=preset, batch_size=batch_size, device=row["device"],
                                          num_samples=num_samples, num_workers=k)

        loader, trials = tune(make, row["grid"], on_result=lambda k, ips: say(
            f"[{preset}] torchvision-tuned b{batch_size}: tuning w={k}: {ips:,.0f} img/s"))
        loader.trials = trials
        return loader
    if row["backend"] in (PEER, KORNIA):
        from benchmarks.batched_torch import BatchedTorchLoader
        from benchmarks.kornia_peer import KorniaLoader

        peer = BatchedTorchLoader if row["backend"] == PEER else KorniaLoader
        return peer(augment=preset, batch_size=batch_size, device=row["device"], num_samples=num_samples,
                    num_threads=row["workers_or_threads"])
    own = ({"num_workers": row["workers_or_threads"]} if row["backend"] == "torchvision"
           else {"num_threads": row["workers_or_threads"]})
    return make_loader(dataset="synthetic", split="train", batch_size=batch_size, backend=row["backend"],
                       device=row["device"], augment=preset, num_samples=num_samples, **{**own, **options})


def _run_epochs(loader, epochs: Sequence[int], cuda: bool) -> tuple[int, float]:
    """Consume whole epochs; returns (images, seconds)."""
    if cuda:
        torch.cuda.synchronize()
    images = 0
    start = time.perf_counter()
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            images += int(batch[0].shape[0])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    expected = loader.shard_size * len(epochs)
    if images != expected:  # a throughput over a short or long epoch would mislead: stop instead
        raise RuntimeError(f"loader delivered {images} images over {len(epochs)} epoch(s), expected {expected}")
    return images, seconds


def _check_sizes(name: str, values: Sequence[int] | None, lo: int = 1) -> list[int]:
    try:
        out = [int(v) for v in values or ()]
    except (TypeError, ValueError):
        out = []
    if not out or any(isinstance(v, bool) or v < lo for v in out):
        raise ConfigError(f"--{name.replace('_', '-')}={values!r} is invalid: expected integers >= {lo}")
    return list(dict.fromkeys(out))


def measure(presets: Sequence[str] = DEFAULT_PRESETS, *, device: str = "all", workers: Sequence[int] | None = None,
            batch_sizes: Sequence[int] = (256,), repeats: int = 3, epochs_per_repeat: int = 1,
            num_samples: int = 10_000, dali_threads: int | None = None, dali_batch_size: int | None = None,
            loader_options: Mapping[str, Mapping[str, Any]] | None = None,
            make_loader: Callable[..., Any] = create_loader, progress: Callable[[str], None] | None = None,
            on_update: Callable[[dict[str, Any]], None] | None = None, peers: bool = True,
            open_counter: Any | None = None, tuned_workers: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report {"machine", "config", "results", "batch_ratios",
    "torchvision_ratios", "warnings", "skipped", "complete"}.

    Torchvision rows: the deterministic reference at each of `workers` (None: 0..cores), and the plain pipeline
    tuned over `tuned_workers` (None: 0..cores; empty: no tuned row). ``torchvision_ratios``: each DALI row over
    the tuned row and over the best reference row of its preset and batch size. ``warnings``: the rows whose
    repeats spread more than ``training.harness.SPREAD_LIMIT`` (max / min), also marked on the rows.

    Every row is measured at every training batch size in `batch_sizes`, interleaved with the preset's other rows.
    `dali_batch_size` (when given) and `loader_options` (``{"dali"|"torchvision": {keyword: value}}``) are passed to
    the rows' `make_loader` (``create_loader``). A row that fails (build, warm-up or a timed epoch) is reported
    with ``status: "failed"`` and its one-line ``error``; the other rows go on. `on_update` receives the partial
    report each time a preset's rows finish. `open_counter` (a :class:`benchmarks.open_count.OpenCounter`, entered):
    each row's ``files_opened_per_epoch``, the median over its timed repeats.

    Raises :class:`dali_pipes.DaliTrainError` for invalid presets or sizes (before anything is measured).
    """
    ncores = cpu_count()
    workers = list(range(ncores + 1)) if workers is None else [int(w) for w in workers]
    tuned_workers = list(range(ncores + 1)) if tuned_workers is None else [int(w) for w in tuned_workers]
    if any(w < 0 for w in [*workers, *tuned_workers]):
        raise ConfigError(f"worker counts must be >= 0: {workers}, {tuned_workers}")
    dali_threads = None if dali_threads is None else int(dali_threads)
    check_choice("--device", device, DEVICES)
    batch_sizes = _check_sizes("batch_sizes", batch_sizes)
    _check_sizes("repeats", [repeats])
    _check_sizes("epochs_per_repeat", [epochs_per_repeat])
    _check_sizes("num_samples", [num_samples])
    options = {b: dict((loader_options or {}).get(b, {})) for b in LOADER_BACKENDS}
    unknown = set(loader_options or {}) - set(LOADER_BACKENDS)
    if unknown:
        raise ConfigError(f"loader_options: unknown backend(s) {sorted(unknown)}; expected {list(LOADER_BACKENDS)}")
    if dali_batch_size is not None:
        options["dali"]["dali_batch_size"] = _check_sizes("dali_batch_size", [dali_batch_size])[0]
    for preset in presets:
        resolve_augment(preset)  # ConfigError (a DaliTrainError) now, not after minutes of measuring
    say = progress or (lambda _msg: None)
    cuda = bool(torch.cuda.is_available())
    rows, skipped_rows = plan_rows(device, workers, dali_threads, cuda, tuned_workers=tuned_workers)
    used = {r["row"]: r["workers_or_threads"] for r in rows if r["backend"] not in ("torchvision", TUNED)}
    config = {"presets": list(presets), "device": device, "workers": workers, "tuned_workers": tuned_workers,
              "dali_threads": dali_threads if dali_threads is not None else "default_num_threads", "threads": used,
              "batch_sizes": batch_sizes, "dali_batch_size": dali_batch_size, "repeats": repeats,
              "epochs_per_repeat": epochs_per_repeat, "num_samples": num_samples, "dataset": "synthetic",
              "split": "train", "warmup_epochs": 1,
              "loader_options": {b: {k: repr(v) for k, v in o.items()} for b, o in options.items() if o}}
    report: dict[str, Any] = {"machine": machine_info(), "config": config, "results": [], "batch_ratios": [],
                              "torchvision_ratios": [], "warnings": [],
                              "skipped": [{**s, "preset": p} for p in presets for s in skipped_rows],
                              "complete": False}

    for preset in presets:
        preset_rows = []
        for row in rows:
            why = _peer_gap(row, preset, peers)
            if why:
                report["skipped"].append({"row": row["row"], "reason": why, "preset": preset})
            else:
                preset_rows.append(row)
        report["results"] += _measure_preset(preset, preset_rows, batch_sizes, repeats, epochs_per_repeat,
                                             num_samples, options, make_loader, say, open_counter)
        report["batch_ratios"] = _batch_ratios(report["results"], batch_sizes)
        report["torchvision_ratios"] = _torchvision_ratios(report["results"])
        report["warnings"] = spread_warnings(
            report["results"], lambda r: f"{r['preset']} batch {r['batch_size']} {r['row']}")
        if on_update is not None:
            on_update(report)
    report["complete"] = True
    return report


def _peer_gap(row: dict, preset: str, peers: bool) -> str | None:
    """Why a peer row is not measured for `preset` (None: it is, or the row is not a peer)."""
    if row["backend"] not in SYNTHETIC_ONLY:
        return None
    if not peers:
        return f"the {row['backend']} peer runs on the synthetic arrays only"
    if row["backend"] == TUNED:
        return None  # torchvision has every op of the recipe
    from benchmarks.batched_torch import supports

    why = supports(resolve_augment(preset))
    return why.replace("batched-torch", row["backend"]) if why else None


def _measure_preset(preset: str, rows: Sequence[dict], batch_sizes: Sequence[int], repeats: int,
                    epochs_per_repeat: int, num_samples: int, options: Mapping[str, Mapping[str, Any]],
                    make_loader: Callable[..., Any], say: Callable[[str], None],
                    open_counter: Any | None = None) -> list[dict]:
    """Every row at every batch size for one preset, interleaved (training.harness); epoch 0 warms up, untimed."""
    arms = [Arm(f"{row['row']} b{bs}", spec=(row, bs)) for bs in batch_sizes for row in rows]
    opens: dict[str, list[float]] = {arm.name: [] for arm in arms}

    def build(arm: Arm) -> Any:
        row, bs = arm.spec
        say(f"[{preset}] {arm.name}: build + warm-up epoch" + (" per worker count" if row["backend"] == TUNED
                                                                else ""))
        loader = _build(row, preset, bs, num_samples, options.get(row["backend"], {}), make_loader, say)
        if row["backend"] != TUNED:  # the tuned row's loader has run its untimed epoch while tuning
            _run_epochs(loader, [0], row["device"] == "cuda")
        return loader

    def timed(arm: Arm, r: int) -> float:
        epochs = [1 + r * epochs_per_repeat + j for j in range(epochs_per_repeat)]
        if open_counter is not None:
            open_counter.drain()
        images, seconds = _run_epochs(arm.state, epochs, arm.spec[0]["device"] == "cuda")
        if open_counter is not None:
            opens[arm.name].append(open_counter.drain() / epochs_per_repeat)
        return images / seconds if seconds > 0 else float("inf")

    def failed(arm: Arm) -> None:
        say(f"[{preset}] {arm.name}: failed: {arm.error}")

    set_up(arms, build, on_fail=failed)
    # what tuning picked, kept with the row (its loader goes below)
    tuned = {arm.name: {"workers_or_threads": arm.state.num_workers, "setting": arm.state.setting,
                        "tuning": arm.state.trials} for arm in arms if arm.ok and arm.spec[0]["backend"] == TUNED}
    interleaved(arms, repeats, timed, on_fail=failed,
                on_result=lambda arm, r, ips: say(f"[{preset}] repeat {r + 1}/{repeats} {arm.name}: {ips:,.0f} img/s"))
    for arm in arms:  # free this preset's DALI pipelines and worker processes before the next preset runs
        arm.state = None
    gc.collect()
    results = _preset_results(preset, arms)
    for arm, res in zip(arms, results):
        res.update(tuned.get(arm.name, {}))
    if open_counter is not None:
        for arm, res in zip(arms, results):
            res["files_opened_per_epoch"] = Stats.of(opens[arm.name]).median if opens[arm.name] else None
    return results


def _preset_results(preset: str, arms: Sequence[Arm]) -> list[dict]:
    results = []
    for arm in arms:
        row, bs = arm.spec
        stats = Stats.of(arm.runs)  # a failed row keeps the repeats it finished, and no summary
        results.append({"preset": preset, "batch_size": bs, "row": row["row"], "backend": row["backend"],
                        "device": row["device"], "workers_or_threads": row["workers_or_threads"],
                        "status": "ok" if arm.ok else "failed", "error": arm.error,
                        "median_images_per_s": stats.median if arm.ok else None,
                        "min": stats.min if arm.ok else None, "max": stats.max if arm.ok else None,
                        "runs": stats.runs})
    for res in results:  # the best reference row and the tuned row at the same batch size
        res["ratio_vs_reference"] = ratio(res["median_images_per_s"], _best(results, "torchvision", res)[1])
        res["ratio_vs_tuned_torchvision"] = ratio(res["median_images_per_s"], _best(results, TUNED, res)[1])
    largest = max(r["batch_size"] for r in results) if results else None
    for res in results:
        twin = next((r for r in results if r["row"] == res["row"] and r["batch_size"] == largest), None)
        res["ratio_vs_largest_batch"] = ratio(res["median_images_per_s"], (twin or {}).get("median_images_per_s"))
    return results


def _best(results: Sequence[dict], backend: str, like: dict) -> tuple[dict | None, float | None]:
    """The fastest measured row of `backend` at `like`'s preset and batch size, and its median (None, None)."""
    rows = [r for r in results if r["backend"] == backend and r["preset"] == like["preset"]
            and r["batch_size"] == like["batch_size"] and r["median_images_per_s"]]
    best = max(rows, key=lambda r: r["median_images_per_s"], default=None)
    return best, best["median_images_per_s"] if best else None


def _torchvision_ratios(results: Sequence[dict]) -> list[dict]:
    """Each DALI row over the tuned plain torchvision row and over the best reference row (same preset and batch
    size, measured interleaved in the same run)."""
    out = []
    for r in results:
        if r["backend"] != "dali":
            continue
        tuned, _ = _best(results, TUNED, r)
        reference, _ = _best(results, "torchvision", r)
        out.append({"preset": r["preset"], "batch_size": r["batch_size"], "row": r["row"],
                    "vs_tuned": r["ratio_vs_tuned_torchvision"], "tuned_setting": (tuned or {}).get("setting"),
                    "vs_reference": r["ratio_vs_reference"], "reference_row": (reference or {}).get("row")})
    return out


def _batch_ratios(results: Sequence[dict], batch_sizes: Sequence[int]) -> list[dict]:
    """Per preset and row: images/s at the smallest training batch / at the largest (both measured side by side)."""
    if len(batch_sizes) < 2:
        return []
    small, large = min(batch_sizes), max(batch_sizes)
    by_key = {(r["preset"], r["row"], r["batch_size"]): r for r in results}
    out = []
    for r in results:
        if r["batch_size"] != small:
            continue
        big = by_key.get((r["preset"], r["row"], large))
        a, b = r["median_images_per_s"], big["median_images_per_s"] if big else None
        out.append({"preset": r["preset"], "row": r["row"], "small_batch": small, "large_batch": large,
                    "ratio": ratio(a, b)})
    return out


# ------------------------------------------------------------------------------------------------------ CLI
def _parse_shape(ctx, param, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 500x375") from None
    if w < 1 or h < 1:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    return w, h


def _parse_presets(ctx, param, value: str | None) -> list[str] | None:
    if value is None:
        return None
    presets = [p.strip() for p in value.split(",") if p.strip()]
    if not presets:
        raise click.BadParameter("give at least one preset")
    for p in presets:
        try:
            resolve_augment(p)
        except DaliTrainError as e:
            raise click.BadParameter(str(e)) from None
    return list(dict.fromkeys(presets))


def _parse_batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(b) for b in value.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 1, e.g. 128,1024")
    return list(dict.fromkeys(sizes))


def _parse_workers(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    if value.strip().lower() in ("none", ""):
        return []
    try:
        workers = [int(w) for w in value.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2") from None
    if not workers or any(w < 0 for w in workers):
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(workers))


def _profile(full: bool, presets: list[str] | None, num_samples: int | None, workers: list[int] | None
             ) -> tuple[list[str], int, list[int]]:
    """The presets, samples and reference worker counts the command measures: those given, else QUICK's (FULL's
    with --full)."""
    base, cores = (FULL if full else QUICK), cpu_count()
    ref = list(range(cores + 1)) if base["reference_workers"] == "0..cores" else [cores]
    return (list(base["presets"]) if presets is None else presets,
            base["num_samples"] if num_samples is None else num_samples, ref if workers is None else workers)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(DEVICES), default="all", show_default=True,
              help="Which rows: cpu (torchvision + dali-cpu), cuda (torchvision to GPU + dali-gpu), all.")
@click.option("--full", is_flag=True,
              help=f"The long grid: presets, --num-samples and --workers not given take {', '.join(FULL['presets'])}; "
                   f"{FULL['num_samples']:,}; 0..cores (hours on 2 cores) instead of the defaults below.")
@click.option("--presets", default=None, callback=_parse_presets,
              help="Comma list of augmentation presets ('<preset>' or '<preset>+<policy>') [default: "
                   f"{','.join(QUICK['presets'])}].")
@click.option("--batch-sizes", default="256", show_default=True, callback=_parse_batch_sizes,
              help="Comma list of training batch sizes; every row is measured at each (e.g. 128,1024), and the "
                   "smallest is compared with the largest.")
@click.option("--dali-batch-size", type=click.IntRange(min=1), default=None,
              help="Batch the DALI graph runs on, split into training batches by the loader [default: the "
                   "loader's choice].")
@click.option("--dali-threads", type=click.IntRange(min=1), default=None,
              help="DALI threads of every DALI row (and torch threads of the batched-torch peers) [default: "
                   "training's rule, dali_pipes.loader.default_num_threads].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repeats per row (median and min..max over these).")
@click.option("--epochs-per-repeat", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--workers", default=None, callback=_parse_workers,
              help="Comma list of DataLoader worker counts of the deterministic reference rows, or 'none' "
                   "[default: the cores available; --full: 0..cores].")
@click.option("--tuned-workers", default=None, callback=_parse_workers,
              help="Worker counts the plain torchvision row is tuned over (1 torch thread each; the fastest is "
                   "measured), or 'none' for no tuned row [default: 0..cores available].")
@click.option("--num-samples", type=click.IntRange(min=1), default=None,
              help=f"Size of the synthetic training split (one epoch) [default: {QUICK['num_samples']:,}; --full: "
                   f"{FULL['num_samples']:,}].")
@click.option("--dataset", type=click.Choice(BENCH_DATASETS), default="synthetic", show_default=True,
              help="synthetic CIFAR arrays, or a generated folder of JPEGs (--folder-images, --image-shape).")
@click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True,
              help="--dataset folder: the crop side in pixels.")
@click.option("--image-shape", default="500x375", show_default=True, callback=_parse_shape,
              help="--dataset folder: WIDTHxHEIGHT of the generated JPEGs.")
@click.option("--folder-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="--dataset folder: generated training images (one epoch).")
@output_options
def main(device: str, full: bool, presets: list[str] | None, batch_sizes: list[int], dali_batch_size: int | None,
         dali_threads: int | None, repeats: int, epochs_per_repeat: int, workers: list[int] | None,
         tuned_workers: list[int] | None, num_samples: int | None, dataset: str, image_size: int,
         image_shape: tuple[int, int], folder_images: int, json_path: str | None, plot_path: str | None,
         quiet: bool) -> None:
    """Measure augmentation throughput (images/s) per preset: DALI CPU/GPU against torchvision (a plain pipeline
    tuned over worker counts, and the deterministic reference) and the batched peers."""
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    presets, num_samples, workers = _profile(full, presets, num_samples, workers)
    started = time.perf_counter()
    common = dict(device=device, workers=workers, tuned_workers=tuned_workers, batch_sizes=batch_sizes,
                  repeats=repeats, epochs_per_repeat=epochs_per_repeat, progress=progress,
                  dali_batch_size=dali_batch_size, dali_threads=dali_threads,
                  on_update=json_updater(json_path, to_json))
    try:
        if dataset in ("folder", "shards"):
            report = measure_folder(presets, num_images=folder_images, image_shape=image_shape,
                                    image_size=image_size, dataset=dataset, **common)
        else:
            report = measure(presets, num_samples=num_samples, **common)
    except DaliTrainError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(format_header(report))
    click.echo("")
    click.echo(format_table(report))
    if report.get("decode_only"):
        click.echo("")
        click.echo(format_decode(report))
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    click.echo(f"\nwall time {report['wall_time_s']:.0f} s")
    if json_path or plot_path:
        click.echo("")
    write_outputs(report, json_path=json_path, plot_path=plot_path, to_json=to_json, figure=plot_figure)


if __name__ == "__main__":
    from benchmarks.torchvision_peer import preload_worker_imports

    preload_worker_imports()  # the script's process only: not where main() is called as a function (tests)
    main()
