"""The pipeline most users run: a plain ``torchvision.transforms.v2`` recipe per sample in a ``DataLoader``, tuned.

Unlike the reference backend (dali_pipes.reference), which feeds every sample the DALI graph's drawn parameters and
re-seeds torch's generator per sample to be reproducible (``fork_rng`` + ``manual_seed``: measured in the issue at
990 -> 768 img/s on one thread), this one lets torchvision draw from each worker's own generator, as a training
script written from torchvision's docs does. Tuned as a user would tune it: every worker runs one torch thread
(torch's default of one thread per core, in every worker, oversubscribes the cores), and the benchmark picks the
fastest worker count of a small grid (:func:`tune`); with 0 workers the main process augments on one torch thread.

Workers come from a forkserver and persist across epochs, as in the reference backend: forking a process whose
DALI or OpenMP thread pools run can hang the child, and a per-epoch start would be timed as augmentation.
Benchmark and training-benchmark peer only: dali-train's own torchvision backend is the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from dali_pipes import resolve_augment
from dali_pipes.config import AugmentConfig
from dali_pipes.loader import dataset_stats, load_source

from .batched_torch import _intra_op_threads


def transform(cfg: AugmentConfig, size: tuple[int, int]) -> v2.Compose:
    """The recipe `cfg` as the v2 pipeline a user writes for uint8 CHW tensors (the order of dali_pipes.config);
    torchvision draws every parameter itself, ColorJitter in its own random order."""
    nearest = {"interpolation": v2.InterpolationMode.NEAREST, "fill": cfg.pad_fill}
    steps: list[Callable] = []
    if cfg.crop_padding > 0:
        steps.append(v2.RandomCrop(list(size), padding=cfg.crop_padding, fill=cfg.pad_fill,
                                   padding_mode=cfg.pad_mode))
    if cfg.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.flip_p))
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation, **nearest))
    if cfg.has_affine:
        t = cfg.affine_translate
        steps.append(v2.RandomApply([v2.RandomAffine(cfg.affine_degrees, translate=(t, t) if t > 0 else None,
                                                     scale=cfg.affine_scale, shear=(-cfg.affine_shear,
                                                                                    cfg.affine_shear, 0.0, 0.0),
                                                     **nearest)], p=cfg.affine_p))
    if cfg.has_color_jitter:
        steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None,
                                    saturation=cfg.saturation or None, hue=cfg.hue or None))
    if cfg.has_blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    elif cfg.policy == "randaugment":
        steps.append(v2.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m, num_magnitude_bins=31))
    elif cfg.policy == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(num_magnitude_bins=31))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    if cfg.erase_p > 0:
        steps.append(v2.RandomErasing(p=cfg.erase_p, scale=cfg.erase_scale, ratio=cfg.erase_ratio,
                                      value=float(cfg.erase_value)))
    return v2.Compose(steps)


class _Samples(torch.utils.data.Dataset):
    """index -> (augmented image, label) from uint8 HWC arrays; no seeding of its own."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pipeline: v2.Compose):
        self.images, self.labels, self.pipeline = images, labels, pipeline

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        return self.pipeline(image), int(self.labels[index])


# What a DataLoader worker of this module and of the reference backend imports before its first batch: torch and
# torchvision take 5-10 s to import on a busy 2-core machine, paid by every worker of every loader a benchmark builds.
WORKER_IMPORTS = ("torch", "torchvision.transforms.v2", "benchmarks.torchvision_peer", "dali_pipes.reference")


def preload_worker_imports() -> None:
    """Have the forkserver import WORKER_IMPORTS once, so that each worker it forks starts with them: a benchmark
    process's setting (the benchmark scripts call it when run as scripts), which shortens untimed set-up only. Without effect once
    the forkserver runs."""
    import multiprocessing

    multiprocessing.set_forkserver_preload(list(WORKER_IMPORTS))


def _one_torch_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class PlainTorchvisionLoader:
    """A loader-shaped plain torchvision pipeline over the synthetic training split: ``set_epoch``,
    ``shard_size``, ``len`` and iteration over (images, labels) on `device` (pinned memory on the way to CUDA)."""

    def __init__(self, *, augment: str, batch_size: int, device: str, num_samples: int, num_workers: int,
                 seed: int = 0, dataset: str = "synthetic"):
        data = load_source(dataset, "unused", "train", num_samples=num_samples)
        mean, std = dataset_stats(dataset)
        self.cfg = resolve_augment(augment, mean=mean, std=std)
        self.device = torch.device(device)
        self.num_workers = int(num_workers)
        self.seed, self.epoch = seed, 0
        size = tuple(data.images.shape[1:3])
        self.generator = torch.Generator()  # the shuffle's, reseeded once per epoch (not per sample)
        workers = {"multiprocessing_context": "forkserver", "persistent_workers": True,
                   "worker_init_fn": _one_torch_thread} if self.num_workers > 0 else {}
        images = np.array(data.images)  # a writable copy: the source array is read-only, torch wants to own one
        self.loader = torch.utils.data.DataLoader(
            _Samples(images, np.asarray(data.labels, dtype=np.int64), transform(self.cfg, size)),
            batch_size=batch_size, shuffle=True, generator=self.generator, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", **workers)

    @property
    def setting(self) -> str:
        """The tuned setting, as the report states it."""
        k = self.num_workers
        if k == 0:
            return "0 workers (main process), 1 torch thread"
        return f"{k} worker{'s' if k > 1 else ''}, 1 torch thread each"

    @property
    def shard_size(self) -> int:
        return len(self.loader.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = iter(self.loader)
        cuda = self.device.type == "cuda"
        while True:
            # with 0 workers the main process augments: on one torch thread, as each worker does
            with _intra_op_threads(1 if self.num_workers == 0 else None):
                try:
                    images, labels = next(batches)
                except StopIteration:
                    return
            yield images.to(self.device, non_blocking=cuda), labels.to(self.device, non_blocking=cuda)


def tune(make: Callable[[int], PlainTorchvisionLoader], workers: Sequence[int], *,
         on_result: Callable[[int, float], None] | None = None,
         rate: Callable[[PlainTorchvisionLoader], float] | None = None) -> tuple[PlainTorchvisionLoader, list[dict]]:
    """The fastest loader of `workers` counts, and what each did: every count is built, and `rate(loader)` (by
    default one untimed epoch, for the workers' start and first batches, then one timed epoch: images/s) is its
    figure. A slower loader is dropped (its workers end) before the next is built; the fastest so far waits, its
    workers idle."""
    rate = rate or _epoch_rate
    best: PlainTorchvisionLoader | None = None
    best_rate = -1.0
    trials = []
    for k in workers:
        loader = make(int(k))
        images_per_s = rate(loader)
        trials.append({"workers": int(k), "images_per_s": images_per_s})
        if on_result is not None:
            on_result(int(k), images_per_s)
        if images_per_s > best_rate:
            best, best_rate = loader, images_per_s
        loader = None  # a slower one ends here (refcount), not after the next is built
    if best is None:
        raise ValueError("no worker counts to tune over")
    return best, trials


def _epoch_rate(loader: PlainTorchvisionLoader) -> float:
    """Images/s of one epoch after an untimed one (the workers' start and their first batches)."""
    loader.set_epoch(0)
    for _ in loader:
        pass
    start = time.perf_counter()
    images = sum(int(x.shape[0]) for x, _ in loader)
    seconds = time.perf_counter() - start
    return images / max(seconds, 1e-9)  # finite: the figure goes into the JSON report
