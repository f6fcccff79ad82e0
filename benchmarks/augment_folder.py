"""The image-folder rows of the augmentation benchmark (``--dataset folder|shards``): a generated folder of JPEGs
(smooth noise, as photos compress), optionally packed into dali-shard tars, measured through
:func:`benchmarks.augment_throughput.measure`, plus decode-only rows (DALI's CPU decoder, and the reference's decode
in one process: what each DataLoader worker pays per image), and the files each row opened per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dali_pipes.loader import create_loader, default_num_threads
from training.harness import Arm, Stats, interleaved, set_up

__all__ = ["format_decode", "make_jpeg_folder", "measure_decode", "measure_folder"]


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
    from nvidia.dali import fn, pipeline_def, types

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
    from benchmarks.augment_throughput import measure  # that module's CLI imports this one

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

