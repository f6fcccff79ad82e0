"""Augmentation throughput: torchvision DataLoader workers vs DALI on CPU (and GPU) over the synthetic CIFAR split.

    python benchmarks/augment_throughput.py --device cpu --presets standard --json bench.json
    python benchmarks/augment_throughput.py --device all --workers none --batch-sizes 128,1024 --json bench.json

How it measures (the numbers decide which backend users pick, so every row is measured the same way, through
training.harness):

- every row builds its loader once; one full epoch per row is run first and not timed (DALI pipeline build,
  the first worker start, caches);
- a repeat times ``--epochs-per-repeat`` full epochs (``set_epoch`` each epoch, every batch consumed; CUDA rows
  synchronize before the clock is read); images/s = images delivered / seconds;
- rows of a preset are measured interleaved (each repeat runs every row once, starting at a rotating row), so
  machine noise hits all rows alike; median and min..max are over repeats;
- every row runs at each ``--batch-sizes`` training batch size (rows of all sizes interleaved as above);
  ratio = row median / best torchvision median of the same preset and batch size; with several sizes,
  ``vs batch L`` = row median / the same row's median at the largest size L (batch 128 / batch 1024 shows what
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
from dali_pipes import BACKENDS, ConfigError, DaliTrainError, resolve_augment  # noqa: E402
from dali_pipes.loader import cpu_count, create_loader, default_num_threads  # noqa: E402
from dali_pipes.checks import check_choice  # noqa: E402
from training.harness import Arm, Stats, interleaved, machine_lines, ratio, set_up, table, to_json  # noqa: E402
from training.machine import machine_info  # noqa: E402

__all__ = ["NO_CUDA", "format_table", "json_updater", "machine_info", "main", "measure", "measure_folder", "plot",
           "to_json"]

DEFAULT_PRESETS = ("none", "weak", "standard", "strong", "weak+autoaugment", "weak+randaugment",
                   "weak+trivialaugment")
NO_CUDA = "no CUDA device visible"
DEVICES = ("cpu", "cuda", "all")  # which rows: CPU-delivering, GPU-delivering, or both
BENCH_DATASETS = ("synthetic", "folder", "shards")


# ------------------------------------------------------------------------------------------------------ rows
def plan_rows(device: str, workers: Sequence[int], dali_threads: int | None, cuda: bool,
              cores: int | None = None) -> tuple[list[dict], list[dict]]:
    """The rows of every preset, and the skipped rows with their reason.

    ``cpu``: torchvision rows and dali-cpu, all delivering CPU tensors. ``cuda``: torchvision rows delivering to the
    GPU (pinned memory) and dali-gpu. ``all``: the cpu rows plus dali-gpu (when CUDA is visible).

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
        add({"row": f"torchvision w={k}", "backend": "torchvision", "device": tv_device, "workers_or_threads": k})
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


def _build(row: dict, preset: str, batch_size: int, num_samples: int, options: Mapping[str, Any],
           make_loader: Callable[..., Any]):
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
            open_counter: Any | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report {"machine", "config", "results", "batch_ratios",
    "skipped", "complete"}.

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
    rows, skipped_rows = plan_rows(device, workers, dali_threads, cuda)
    used = {r["row"]: r["workers_or_threads"] for r in rows if r["backend"] != "torchvision"}
    config = {"presets": list(presets), "device": device, "workers": workers,
              "dali_threads": dali_threads if dali_threads is not None else "default_num_threads", "threads": used,
              "batch_sizes": batch_sizes, "dali_batch_size": dali_batch_size, "repeats": repeats,
              "epochs_per_repeat": epochs_per_repeat, "num_samples": num_samples, "dataset": "synthetic",
              "split": "train", "warmup_epochs": 1,
              "loader_options": {b: {k: repr(v) for k, v in o.items()} for b, o in options.items() if o}}
    report: dict[str, Any] = {"machine": machine_info(), "config": config, "results": [], "batch_ratios": [],
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
        if on_update is not None:
            on_update(report)
    report["complete"] = True
    return report


def _peer_gap(row: dict, preset: str, peers: bool) -> str | None:
    """Why a peer row is not measured for `preset` (None: it is, or the row is not a peer)."""
    if row["backend"] not in (PEER, KORNIA):
        return None
    if not peers:
        return f"the {row['backend']} peer runs on the synthetic arrays only"
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
        say(f"[{preset}] {arm.name}: build + warm-up epoch")
        loader = _build(row, preset, bs, num_samples, options.get(row["backend"], {}), make_loader)
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
    interleaved(arms, repeats, timed, on_fail=failed,
                on_result=lambda arm, r, ips: say(f"[{preset}] repeat {r + 1}/{repeats} {arm.name}: {ips:,.0f} img/s"))
    for arm in arms:  # free this preset's DALI pipelines and worker processes before the next preset runs
        arm.state = None
    gc.collect()
    results = _preset_results(preset, arms)
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
    for res in results:  # torchvision's best at the same batch size
        tv = [r["median_images_per_s"] for r in results if r["backend"] == "torchvision"
              and r["batch_size"] == res["batch_size"] and r["median_images_per_s"]]
        res["ratio_vs_best_torchvision"] = ratio(res["median_images_per_s"], max(tv) if tv else None)
    largest = max(r["batch_size"] for r in results) if results else None
    for res in results:
        twin = next((r for r in results if r["row"] == res["row"] and r["batch_size"] == largest), None)
        res["ratio_vs_largest_batch"] = ratio(res["median_images_per_s"], (twin or {}).get("median_images_per_s"))
    return results


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


# ------------------------------------------------------------------------------------------------------ output
def format_header(report: dict) -> str:
    c = report["config"]
    batches = ", ".join(map(str, c["batch_sizes"]))
    dali_batch = "" if c.get("dali_batch_size") is None else f", DALI graph batch {c['dali_batch_size']}"
    lines = ["augment throughput benchmark", *machine_lines(report["machine"]),
             f"  config      {_dataset_line(c)} train split, {c['num_samples']} samples, training batch "
             f"{batches}{dali_batch}, {c['repeats']} repeat(s) x {c['epochs_per_repeat']} epoch(s) after 1 warm-up "
             f"epoch, device {c['device']}",
             f"  threads     {_threads_line(c)}"]
    return "\n".join(lines)


def _threads_line(c: dict) -> str:
    """The threads each DALI row and peer ran on, and by which rule."""
    rule = ("dali_pipes.loader.default_num_threads" if c["dali_threads"] == "default_num_threads"
            else f"--dali-threads {c['dali_threads']}")
    used = ", ".join(f"{row} {n}" for row, n in (c.get("threads") or {}).items())
    return f"{used or 'no DALI rows'} ({rule}; torch-batched peers: torch.set_num_threads as their device's DALI row)"


def _dataset_line(c: dict) -> str:
    if c.get("dataset") not in ("folder", "shards"):
        return "synthetic"
    w, h = c["image_shape"]
    packed = f" packed in {c['shards']} train tar shards" if c["dataset"] == "shards" else ""
    return f"{c['dataset']} ({w}x{h} JPEGs{packed} -> {c['image_size']} px)"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(report: dict) -> str:
    sizes = report["config"]["batch_sizes"]
    by_batch = len(sizes) > 1
    head = ["preset", "batch", "row", "median img/s", "min..max", "ratio vs best tv"]
    if by_batch:
        head.append(f"vs batch {max(sizes)}")
    opens = any("files_opened_per_epoch" in r for r in report["results"])
    if opens:
        head.append("files opened/epoch")
    body = []
    for r in report["results"]:
        if r["status"] != "ok":
            cells = [r["preset"], str(r["batch_size"]), r["row"], "failed", "-", "-"] + (["-"] if by_batch else [])
        else:
            cells = [r["preset"], str(r["batch_size"]), r["row"], _num(r["median_images_per_s"]),
                     f"{_num(r['min'])}..{_num(r['max'])}", _x(r["ratio_vs_best_torchvision"])]
            if by_batch:
                cells.append(_x(r["ratio_vs_largest_batch"]))
        if opens:
            n = r.get("files_opened_per_epoch")
            cells.append("-" if n is None else f"{n:,.0f}")
        body.append(cells)
    lines = table(head, body, align="<><>>>>>", group=1)
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"failed {r['preset']} batch {r['batch_size']} {r['row']}: {r['error']}")
    ratios = [q for q in report.get("batch_ratios", []) if q["ratio"] is not None]
    if ratios:
        q0 = ratios[0]
        lines.append(f"images/s at batch {q0['small_batch']} / at batch {q0['large_batch']}: "
                     + ", ".join(f"{q['preset']} {q['row']} {q['ratio']:.2f}x" for q in ratios))
    seen: set[tuple[str, str]] = set()
    for s in report["skipped"]:
        if (s["row"], s["reason"]) not in seen:
            seen.add((s["row"], s["reason"]))
            lines.append(f"skipped {s['row']}: {s['reason']}")
    if not report.get("complete", True):
        lines.append("incomplete: the run stopped before every preset was measured")
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Grouped bars: x = preset, one bar per row (median, min..max whiskers), log-scale images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["results"] if r["median_images_per_s"]]
    by_batch = len(report["config"]["batch_sizes"]) > 1

    def label_of(r: dict) -> str:
        return f"{r['row']} b{r['batch_size']}" if by_batch else r["row"]

    presets = list(dict.fromkeys(r["preset"] for r in measured))
    labels = list(dict.fromkeys(label_of(r) for r in measured))
    by_key = {(r["preset"], label_of(r)): r for r in measured}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(presets) * max(1, len(labels)) / 3 + 2), 4.8))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for i, preset in enumerate(presets):
            r = by_key.get((preset, label))
            if r is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(r["median_images_per_s"])
            lo.append(r["median_images_per_s"] - (r["min"] or r["median_images_per_s"]))
            hi.append((r["max"] or r["median_images_per_s"]) - r["median_images_per_s"])
        ax.bar(xs, ys, width, label=label, yerr=[lo, hi], capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(presets)))
    ax.set_xticklabels(presets, rotation=20, ha="right")
    ax.set_ylabel("images / s (median, min..max)")
    m, c = report["machine"], report["config"]
    ax.set_title(f"augmentation throughput, training batch {', '.join(map(str, c['batch_sizes']))}, "
                 f"{m['cores_available']} cores"
                 + (f", {m['gpus'][0]}" if m.get("gpus") else ""), fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ image folders
def make_jpeg_folder(root: str | Path, *, num_images: int, shape: tuple[int, int] = (500, 375),
                     classes: int = 2, seed: int = 0) -> Path:
    """`num_images` JPEGs of `shape` (width, height) under root/{train,val}/<class>/ (val: one per class).

    Pixels are smooth noise (random values on a grid 1/16 of the size, upsampled), which JPEG compresses about as
    well as photos (~40-80 KB at 500x375, quality 90): decode time depends on the entropy-coded data.
    """
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = shape
    for split, count in (("train", num_images), ("val", classes)):
        for k in range(count):
            folder = root / split / f"c{k % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
            image.save(folder / f"{k:06d}.jpg", quality=90)
    return root


def measure_decode(files: Sequence[str], *, dali_threads: int, repeats: int = 3) -> list[dict]:
    """Decode-only rows: images/s decoding `files` (median over `repeats` interleaved, after one untimed pass)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from dali_pipes.folder import decode_image_rgb

    batch = min(64, len(files))

    @pipeline_def
    def decode_only():
        encoded, _ = fn.readers.file(files=list(files), pad_last_batch=True)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB, jpeg_fancy_upsampling=True)

    pipe = decode_only(batch_size=batch, num_threads=dali_threads, device_id=None)
    pipe.build()
    steps = -(-len(files) // batch)

    def dali_pass() -> None:
        for _ in range(steps):
            pipe.run()

    def reference_pass() -> None:
        for f in files:
            decode_image_rgb(f)

    # DALI's last batch is padded with repeats of the last file: those are decoded too, so they count
    arms = [Arm("decode-only dali-cpu", spec=(dali_threads, steps * batch, dali_pass)),
            Arm("decode-only torchvision (1 process)", spec=(1, len(files), reference_pass))]

    def timed(arm: Arm, _r: int) -> float:
        _, images, run_pass = arm.spec
        start = time.perf_counter()
        run_pass()
        return images / (time.perf_counter() - start)

    set_up(arms, lambda arm: arm.spec[2](), keep_going=False)  # one untimed pass each
    interleaved(arms, repeats, timed, keep_going=False)
    rows = []
    for arm in arms:
        stats = Stats.of(arm.runs)
        rows.append({"row": arm.name, "workers_or_threads": arm.spec[0], "median_images_per_s": stats.median,
                     "min": stats.min, "max": stats.max})
    return rows


def measure_folder(presets: Sequence[str], *, num_images: int = 512, image_shape: tuple[int, int] = (500, 375),
                   image_size: int = 224, root: str | Path | None = None,
                   on_update: Callable[[dict[str, Any]], None] | None = None, dataset: str = "folder",
                   shard_size: int = 4 << 20, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` over a generated JPEG folder at `image_size` (kwargs as measure's), plus decode-only rows.

    `dataset="shards"`: the same images packed by dali-shard (tar shards of about `shard_size` bytes) and read
    from the shards. Either way each row reports the files it opened per epoch under the data folder, counted by
    the kernel (:mod:`benchmarks.open_count`) where the machine has inotify.
    """
    import contextlib
    import tempfile

    from benchmarks import open_count

    with tempfile.TemporaryDirectory(prefix="folder-bench-") as tmp:
        folder = make_jpeg_folder(root or tmp, num_images=num_images, shape=image_shape)
        data_dir = folder
        extra = {"dataset": dataset, "num_samples": num_images, "image_shape": list(image_shape),
                 "image_size": image_size}
        if dataset == "shards":
            from dali_pipes.shard_cli import pack

            data_dir = Path(tmp) / "shards"
            pack(folder, data_dir, shard_size=shard_size, seed=0, progress=False)
            extra["shards"] = len(list(data_dir.glob("train-*.tar")))
            extra["shard_size"] = shard_size

        def make_loader(**kw: Any):
            kw.pop("num_samples", None)
            return create_loader(**{**kw, "dataset": dataset, "data_dir": data_dir, "image_size": image_size})

        def updated(report: dict[str, Any]) -> None:
            report["config"].update(extra)
            if on_update is not None:
                on_update(report)

        counting = open_count.OpenCounter(data_dir) if open_count.available() else contextlib.nullcontext()
        with counting as opens:
            report = measure(presets, make_loader=make_loader, num_samples=num_images, on_update=updated,
                             peers=False, open_counter=opens, **kwargs)
        report["config"].update(extra)
        from dali_pipes.folder import list_image_folder

        files = list(list_image_folder(folder, "train").files)
        threads = report["config"]["threads"].get("dali-cpu") or default_num_threads(torch.device("cpu"))
        report["decode_only"] = measure_decode(files, dali_threads=threads,
                                               repeats=kwargs.get("repeats", 3))
    return report


def format_decode(report: dict) -> str:
    rows = report.get("decode_only") or []
    return "\n".join(f"{r['row']:<40} {r['median_images_per_s']:>10,.0f} img/s  (threads/processes "
                     f"{r['workers_or_threads']}, min {r['min']:,.0f}, max {r['max']:,.0f})" for r in rows)


def _parse_shape(ctx, param, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 500x375") from None
    if w < 1 or h < 1:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    return w, h


# ------------------------------------------------------------------------------------------------------ CLI
def _parse_presets(ctx, param, value: str) -> list[str]:
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
    if value.strip().lower() == "none":
        return []
    try:
        workers = [int(w) for w in value.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2") from None
    if not workers or any(w < 0 for w in workers):
        raise click.BadParameter(f"{value!r}: expected a comma list of integers >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(workers))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(DEVICES), default="all", show_default=True,
              help="Which rows: cpu (torchvision + dali-cpu), cuda (torchvision to GPU + dali-gpu), all.")
@click.option("--presets", default=",".join(DEFAULT_PRESETS), show_default=True, callback=_parse_presets,
              help="Comma list of augmentation presets ('<preset>' or '<preset>+<policy>').")
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
              help="Comma list of torchvision DataLoader worker counts, or 'none' for DALI rows only "
                   "[default: 0..cores available].")
@click.option("--num-samples", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Size of the synthetic training split (one epoch).")
@click.option("--dataset", type=click.Choice(BENCH_DATASETS), default="synthetic", show_default=True,
              help="synthetic CIFAR arrays, or a generated folder of JPEGs (--folder-images, --image-shape).")
@click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True,
              help="--dataset folder: the crop side in pixels.")
@click.option("--image-shape", default="500x375", show_default=True, callback=_parse_shape,
              help="--dataset folder: WIDTHxHEIGHT of the generated JPEGs.")
@click.option("--folder-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="--dataset folder: generated training images (one epoch).")
@output_options
def main(device: str, presets: list[str], batch_sizes: list[int], dali_batch_size: int | None,
         dali_threads: int | None, repeats: int,
         epochs_per_repeat: int, workers: list[int] | None, num_samples: int, dataset: str, image_size: int,
         image_shape: tuple[int, int], folder_images: int, json_path: str | None, plot_path: str | None,
         quiet: bool) -> None:
    """Measure augmentation throughput (images/s) of torchvision workers vs DALI CPU/GPU per preset."""
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    common = dict(device=device, workers=workers, batch_sizes=batch_sizes, repeats=repeats,
                  epochs_per_repeat=epochs_per_repeat, progress=progress, dali_batch_size=dali_batch_size,
                  dali_threads=dali_threads,
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
    if json_path or plot_path:
        click.echo("")
    write_outputs(report, json_path=json_path, plot_path=plot_path, to_json=to_json, plot=plot)


if __name__ == "__main__":
    main()
