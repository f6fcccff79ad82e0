"""``create_loader``: the one batch contract over both backends (see DESIGN.md).

The epoch plan (which indices, in which batches) comes from :mod:`dali_pipes.plan`; a backend only turns a list of
index batches into (normalized images, dataset indices). Labels are looked up from the indices on the device here,
so nothing downstream knows which backend produced a batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .config import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD,
                     AugmentConfig, eval_config, resolve_augment, resolve_crop)
from . import cuda_fit, damage, draws
from .checks import check_choice, check_int
from .choices import BACKENDS, DATASETS, SPLITS
from .errors import ConfigError
from .plan import derive_seed, file_shard_indices, num_batches, rank_sample_counts, shard_indices, split_batches
from .shards import ShardDataset
from .sources import ArrayDataset, FolderDataset, fingerprint



class _QuietRestoreFilter(logging.Filter):
    """DALI's iterator logs a warning (on the root logger) whenever it wraps a pipeline restored from a checkpoint
    without iterator state; we restore pipelines only at epoch boundaries, where the iterator has no state worth
    saving. Installed only while such an iterator is constructed (where DALI logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Iterator data was not saved in the checkpoint")


@contextlib.contextmanager
def _quiet_restore() -> Iterator[None]:
    root, quiet = logging.getLogger(), _QuietRestoreFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
          "synthetic": (CIFAR10_MEAN, CIFAR10_STD), "folder": (IMAGENET_MEAN, IMAGENET_STD),
          "shards": (IMAGENET_MEAN, IMAGENET_STD)}


def dataset_stats(dataset: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The per-channel (mean, std) in [0, 1] units a dataset's recipes normalize with by default."""
    return _STATS[check_choice("dataset", dataset, DATASETS)]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cores_per_process() -> int:
    """This process's share of the cores: torchrun starts LOCAL_WORLD_SIZE processes per node, each with its
    own loaders, and DALI thread pools or DataLoader workers sized to every core would oversubscribe them."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cpu_count() // local)


def default_num_threads(device: torch.device, cores: int | None = None) -> int:
    """DALI's CPU threads when none are asked for: the one rule of training and the benchmarks.

    `cores`: this process's share (default :func:`cores_per_process`). A GPU graph gets every one but one, which is
    left to the training loop that launches the step's kernels (a small-batch step is launch-bound). Its CPU
    operators (per-sample random draws and their scalar arithmetic, ~0.5-1 us per sample per operator) are what
    bounds it on the host, and they spread over the threads: the former cap of 4 left 12 of a 16-core device
    machine's cores idle while the GPU waited. The CPU graph shares every core with the CPU training step."""
    cores = cores_per_process() if cores is None else cores
    return max(1, cores - 1) if device.type == "cuda" else cores


def resolve_device(device: str | torch.device, *, option: str = "device") -> torch.device:
    """'auto', 'cuda', 'cuda:N' or 'cpu' -> torch.device: the one device rule of the loaders, the training job and
    the tools. "auto": CUDA when a device is visible, else the CPU. CUDA asked for on a machine without it is a
    user error, named as `option` ("device" for the API, "--device" on the command line). Where CUDA would be used,
    or an NVIDIA driver is loaded but torch sees no device, DALI's, torch's and the driver's CUDA builds must fit
    (:mod:`dali_pipes.cuda_fit`: one line with the fix where they do not); "cpu" checks nothing."""
    flag = option.startswith("--")
    shown = f"{option}={device}" if flag else f"{option}={device!r}"
    cpu = f"{option} cpu" if flag else f"{option}='cpu'"  # the way to the CPU, as the caller spells options
    if device == "auto":
        if torch.cuda.is_available():
            return resolve_device("cuda", option=option)
        # a driver too old for torch's CUDA hides the GPUs: said, not run on the CPU unasked
        cuda_fit.check(usable=False, cpu=cpu)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cuda", "cpu"):
        raise ConfigError(f"{shown} is invalid: use auto, cuda, cuda:N or cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            cuda_fit.check(usable=False, cpu=cpu)
            fix = f"use {cpu} (or auto)" if flag else f"use {cpu} (or 'auto')"
            raise ConfigError(f"{shown} but no CUDA device is visible; {fix}")
        cuda_fit.check(usable=True)  # DALI's, torch's and the driver's CUDA builds (read once per process)
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    return dev


# Per-operator cost, not per-pixel cost, limits DALI on small images: every operator pays a fixed price per
# iteration (and on a GPU launches kernels per sub-batch of the auto_aug branches), so a graph run on 128 CIFAR
# images spends most of its time in overhead. The loader therefore runs the graph on batches of about this many
# pixels (1024 CIFAR images) and splits them into training batches; above it, larger DALI batches buy little.
DALI_BATCH_PIXELS = 1 << 20
FOLDER_IMAGE_SIZE = 224  # image folders' default crop side (pixels): the ImageNet recipe's


def default_dali_batch_size(batch_size: int, size: tuple[int, int]) -> int:
    """The largest multiple of `batch_size` holding at most DALI_BATCH_PIXELS pixels (one training batch at least)."""
    return batch_size * max(1, DALI_BATCH_PIXELS // (batch_size * size[0] * size[1]))


class _DaliBackend:
    """Runs the DALI graph (GPU or CPU operators) over epoch plans.

    The graph runs on DALI batches of `dali_batch_size` samples, a multiple of the training batch: each DALI batch
    is the concatenation of that many consecutive training batches of the plan, and its output is split back into
    them, so the plan (coverage, the short final batch, shards) is untouched by the choice.

    On CUDA, an array dataset is copied to the GPU once (CIFAR-10's training split: 150 MB of uint8) and each DALI
    batch is gathered there, so no batch is gathered on the host or copied over PCIe.

    One pipeline serves every epoch (a rebuild costs 0.05-2 s, more than a whole CIFAR epoch on a fast GPU). Its
    random draws continue from epoch to epoch, so exact resume uses DALI's checkpointing: the state at the last
    epoch boundary is what :meth:`state_dict` returns, with the DALI batch size it was drawn with (draws depend on
    how samples are batched, so a resumed loader keeps that size). An epoch abandoned halfway discards the
    pipeline; the next one rebuilds it from that boundary state, so the draws still follow the uninterrupted
    sequence.
    """

    def __init__(self, data: ArrayDataset | FolderDataset | ShardDataset, cfg: AugmentConfig, size: tuple[int, int],
                 device: torch.device, batch_size: int, dali_batch_size: int, num_threads: int, seed: int,
                 shard_id: int):
        self.data, self.cfg, self.size, self.batch_size = data, cfg, size, batch_size
        self.dali_batch_size = dali_batch_size
        self.num_threads, self.seed, self.shard_id = num_threads, seed, shard_id
        self.device = device
        self.dali_device = "gpu" if device.type == "cuda" else "cpu"
        self.device_id = device.index if device.type == "cuda" else None  # None: CPU-only DALI, no CUDA needed
        self._folder = isinstance(data, (FolderDataset, ShardDataset))  # graphs that read files (a reader)
        self._shards = isinstance(data, ShardDataset)
        self._index_dir: str | None = None  # this backend's per-epoch DALI index files (shards)
        # The dataset in GPU memory, for GPU graphs over arrays: gathered there per DALI batch.
        self._device_images = (torch.from_numpy(data.images).to(device)
                               if not self._folder and device.type == "cuda" else None)
        self._chunks: list[np.ndarray] = []
        # _chunks as slices of one device tensor (arrays on the GPU), each with its samples' flips (or None)
        self._device_chunks: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._plan_ready = None  # CUDA event: the epoch's index plan has reached the device
        self.hw_decoder_load: float | None = None  # folder graphs on the GPU; None: dali_graph.HW_DECODER_LOAD
        self._epoch = 0  # the epoch whose parameters _params draws
        self._pipe = None
        self._checkpoint: str | None = None  # DALI state at the last epoch boundary (None: a fresh pipeline)

    @property
    def _flips_at_source(self) -> bool:
        """Array graphs gather their images in a callback, which mirrors the flipped samples as it gathers them
        (dali_graph.array_pipeline's `flipped`); file graphs flip in the graph."""
        return not self._folder and self.cfg.flip_p > 0

    def _source(self, info):
        # Batch mode: DALI takes a short final batch as is (per-sample mode would drop it silently).
        if info.iteration >= len(self._chunks):
            raise StopIteration
        chunk = self._chunks[info.iteration]
        if self._device_images is None:
            images = self.data.images[chunk]  # a copy (fancy indexing): mirrored in place below
            if self._flips_at_source:
                flipped = draws.flips(self.cfg, self.seed, self._epoch, chunk)
                images[flipped] = images[flipped, :, ::-1]
            return images
        if self._plan_ready is not None:  # the gather may run on another stream than the plan's copy did
            torch.cuda.current_stream(self.device).wait_event(self._plan_ready)
        index, flipped = self._device_chunks[info.iteration]
        images = self._device_images[index]
        if flipped is not None:
            images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(2), images)
        return images

    def _plan_on_device(self, chunks: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The epoch's DALI batches of indices, and which of their samples are mirrored (None: no flips), as slices
        of one device tensor: one host-to-device copy per epoch (from pinned memory on CUDA, so it is
        asynchronous) instead of one pageable copy per batch."""
        order = np.concatenate(chunks)
        rows = [order] + ([draws.flips(self.cfg, self.seed, self._epoch, order)] if self._flips_at_source else [])
        plan = torch.from_numpy(np.stack(rows).astype(np.int64))
        if self.device.type == "cuda":
            plan = plan.pin_memory()  # torch's pinned allocator keeps it alive until the copy has run
        on_device = plan.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._plan_ready = torch.cuda.Event()
            self._plan_ready.record(torch.cuda.current_stream(self.device))
        sizes = [len(c) for c in chunks]
        flips = on_device[1].bool().split(sizes) if self._flips_at_source else [None] * len(chunks)
        return list(zip(on_device[0].split(sizes), flips))

    def _params(self, info):
        """The drawn parameters of DALI batch `info.iteration`: functions of (seed, epoch, dataset index) only.

        Array graphs end the epoch here as the image source does. A file reader pads its last batch with the last
        file and runs ahead into the next epoch while prefetching (the pipeline is discarded then), so file graphs
        get parameters padded to the full batch, and any batch past the end (never delivered) repeats batch 0.
        """
        from .dali_graph import draw_inputs

        if not self._folder and info.iteration >= len(self._chunks):
            raise StopIteration
        index = self._chunks[info.iteration % max(1, len(self._chunks))] if self._chunks else np.zeros(1, np.int64)
        if self._folder and len(index) < self.dali_batch_size:
            index = np.concatenate([index, np.repeat(index[-1:], self.dali_batch_size - len(index))])
        return draw_inputs(self.cfg, self.size, self.seed, self._epoch, index, self._flips_at_source)

    def define(self, dali_device: str, device_id: int | None, chunks: list[np.ndarray]):
        """The graph this backend runs for `dali_device` over DALI batches `chunks`, defined but not built."""
        from . import dali_graph

        common = dict(cfg=self.cfg, size=self.size, device=dali_device, batch_size=self.dali_batch_size,
                      num_threads=self.num_threads, device_id=device_id, prefetch_queue_depth=2,
                      seed=derive_seed(self.seed, self.shard_id), enable_checkpointing=True,
                      checkpoint=self._checkpoint)
        if self._shards:
            return dali_graph.shards_pipeline(**self._shard_reads(chunks), params=self._params, **common)
        if self._folder:
            # The file list is the epoch plan, so a folder pipeline lives for one epoch; its RNG state carries over.
            order = np.concatenate(chunks) if chunks else np.zeros(1, dtype=np.int64)
            return dali_graph.file_pipeline(files=[self.data.files[i] for i in order], indices=order.tolist(),
                                            params=self._params, **common,
                                            hw_decoder_load=(dali_graph.HW_DECODER_LOAD if self.hw_decoder_load
                                                             is None else self.hw_decoder_load))
        on_gpu = dali_device == "gpu"
        return dali_graph.array_pipeline(source=self._source, source_device="gpu" if on_gpu else "cpu",
                                         params=self._params, flipped=self._flips_at_source, **common)

    def _shard_reads(self, chunks: list[np.ndarray]) -> dict:
        """The reader's tar paths and index files for the epoch plan `chunks`: consecutive samples of one tar shard
        become one entry, with an index file listing them in the planned order (written to a private temporary
        folder, removed with the backend). The plan reads each tar shard of a rank in one run, so a tar is opened
        once per epoch."""
        import tempfile
        import weakref
        from shutil import rmtree

        from .shards import write_index

        data = self.data
        order = np.concatenate(chunks) if chunks else np.zeros(1, dtype=np.int64)
        if self._index_dir is None:
            self._index_dir = tempfile.mkdtemp(prefix="dali-train-shards-")
            weakref.finalize(self, rmtree, self._index_dir, True)
        shard_of = data.shard[order]
        cuts = np.flatnonzero(np.diff(shard_of)) + 1
        files, index_files = [], []
        for k, run in enumerate(np.split(order, cuts)):
            path = os.path.join(self._index_dir, f"{k:06d}.idx")
            write_index(path, [data.index_line(int(i)) for i in run])
            files.append(data.tars[int(data.shard[run[0]])])
            index_files.append(path)
        return {"files": files, "index_files": index_files}

    def state_dict(self) -> dict:
        return {"dali_checkpoint": self._checkpoint, "dali_batch_size": self.dali_batch_size}

    def load_state_dict(self, state: dict) -> None:
        self._checkpoint = state.get("dali_checkpoint")
        # States written before DALI batches were decoupled ran the graph on training batches.
        self.dali_batch_size = int(state.get("dali_batch_size") or self.batch_size)
        self._pipe = None

    @property
    def lookahead(self) -> int:
        """Training batches the graph may decode ahead of the one handed out: its prefetch queue (2), the DALI batch
        being decoded and the file reader's own, each of dali_batch_size // batch_size training batches."""
        return 4 * max(1, self.dali_batch_size // self.batch_size)

    def run(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from .dali_graph import READER_NAME

        if not batches:
            return
        per_chunk = max(1, self.dali_batch_size // self.batch_size)
        groups = [batches[i:i + per_chunk] for i in range(0, len(batches), per_chunk)]
        self._chunks = [np.concatenate(g) for g in groups]
        self._epoch = epoch
        if self._device_images is not None:
            self._device_chunks = self._plan_on_device(self._chunks)
        if self._pipe is None or self._folder:
            self._pipe = None  # release the previous epoch's pipeline (and its decoder memory) before building
            pipe = self.define(self.dali_device, self.device_id, self._chunks)
            pipe.build()
        else:
            pipe = self._pipe
        self._pipe = None  # until the epoch completes, the pipeline holds a half-consumed epoch: not reusable
        # A fresh iterator per epoch over the long-lived pipeline: it schedules nothing until the first batch.
        outputs = ["images", "index"] if self._folder else ["images"]  # shards: "index" is each sample's source
        with _quiet_restore():
            iterator = DALIGenericIterator([pipe], outputs, last_batch_policy=LastBatchPolicy.PARTIAL,
                                           auto_reset=False, prepare_first_batch=False,
                                           **({"reader_name": READER_NAME} if self._folder else {}))
        try:
            for out, group, chunk in zip(iterator, groups, self._chunks):
                images = out[0]["images"]
                if self._shards:
                    index = _keys_of_sources(out[0]["index"])
                else:
                    index = out[0]["index"].reshape(-1) if self._folder else torch.from_numpy(chunk)
                if images.shape[0] != len(chunk) or (self._folder and not torch.equal(index, torch.from_numpy(chunk))):
                    raise RuntimeError(f"DALI returned {images.shape[0]} images for a planned batch of {len(chunk)}; "
                                       "the loader and the pipeline disagree on the epoch plan")
                sizes = [len(b) for b in group]
                yield from zip(images.split(sizes), index.split(sizes))
        except RuntimeError as exc:
            # A file the listing could not vet (damaged compressed data, changed since) fails the pipeline with
            # DALI's multi-line report: one line naming the file instead. Anything else is a bug and stays as is.
            from .folder import dali_file_error
            from .shards import dali_shard_error

            if self._shards:
                error = dali_shard_error(exc, self.data)
            else:
                error = dali_file_error(exc, self.data.files, self.data.root) if self._folder else None
            if error is None:
                raise
            raise error from None
        # Rewind the source past its StopIteration, then record the boundary state before anything is prefetched.
        pipe.reset()
        self._checkpoint = pipe.checkpoint()
        self._pipe = pipe


def _keys_of_sources(sources: torch.Tensor) -> torch.Tensor:
    """Sample keys (indices in the split) from the webdataset reader's source strings "<tar>:<offset>:<key>.<ext>"
    (uint8 rows padded with zeros): the key is the run of digits after the last ':'."""
    rows = sources.cpu().numpy()
    keys = [bytes(row).rstrip(b"\0").rsplit(b":", 1)[-1].split(b".", 1)[0] for row in rows]
    return torch.tensor([int(k) for k in keys], dtype=torch.int64)


class _EpochBatches:
    """A batch sampler whose batches the loader replaces every epoch; items carry the epoch to the workers."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _start_worker_server() -> None:
    """Start multiprocessing's forkserver (and its resource tracker) with the stop signals blocked, as the resource
    tracker starts itself: a mask is inherited across fork and exec, so neither helper dies of a signal sent to the
    whole process group (Ctrl-C, `kill -- -PGID`, SIGHUP from a closed ssh session; the helpers ignore only SIGINT,
    or SIGINT and SIGTERM, themselves). Both end with this process (their pipes close)."""
    import multiprocessing.forkserver
    import signal

    stop = {getattr(signal, name) for name in _STOP_SIGNALS}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_leaves_stops_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker leaves the terminal's and the shell's stop signals to the training process: it moves to
    a process group of its own, so a Ctrl-C, a hangup or `kill -- -PGID` reaches the training process alone, which
    saves its stop and ends the workers itself (a worker that died of the signal would take the loader down mid-
    validation first). SIGTERM stays deadly to the worker when it is sent to it alone: that is how the training
    process ends a worker that does not stop. A worker whose parent has gone exits on its own (torch's worker loop
    watches the parent)."""
    import signal

    os.setpgid(0, 0)
    for name in ("SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {getattr(signal, name) for name in _STOP_SIGNALS})  # the server's mask


@contextlib.contextmanager
def _stop_signals_after() -> Iterator[None]:
    """Within the block, stop signals are held and handed, in order, to the handlers the process had when the
    block ends.

    A DataLoader starts each worker by writing the worker's pickled state (the dataset with it: megabytes for
    array datasets) to a pipe the new process reads; a handler that raises (a second Ctrl-C or SIGTERM aborting the
    run) in the middle of that write leaves the worker a truncated pickle, which it prints as a traceback. Python
    runs handlers in the main thread only, so the handlers are swapped there (other threads: nothing to do)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name)
        handler = signal.getsignal(signum)
        if handler is not None and handler is not signal.SIG_IGN:  # None: not installed from Python, left alone
            previous[signum] = signal.signal(signum, lambda s, _frame: held.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:  # each, in order: a second signal still aborts as the handler says
            signal.raise_signal(signum)


class _TorchvisionBackend:
    """The reference: torchvision v2 transforms per sample in DataLoader workers.

    Workers come from a forkserver and persist across epochs: forking the training process itself is unsafe once
    DALI's thread pools or torch's OpenMP threads run in it (a forked child inherits a lock held by a thread that
    does not exist there, and can wait on it forever), and persistent workers pay the start-up once per loader,
    not once per epoch.
    """

    def __init__(self, data: ArrayDataset | FolderDataset | ShardDataset, cfg: AugmentConfig, size: tuple[int, int],
                 device: torch.device, num_workers: int, seed: int):
        from .reference import ReferenceDataset

        self.sampler = _EpochBatches()
        workers = dict(multiprocessing_context="forkserver", persistent_workers=True,
                       worker_init_fn=_worker_leaves_stops_to_the_trainer) if num_workers > 0 else {}
        # A private generator: the DataLoader draws its workers' base seed from it each epoch instead of from the
        # global torch RNG, which training owns (drop path) and restores on resume. Samples are seeded per index.
        self.loader = torch.utils.data.DataLoader(ReferenceDataset(data, cfg, size, seed), batch_sampler=self.sampler,
                                                  num_workers=num_workers, pin_memory=device.type == "cuda",
                                                  generator=torch.Generator().manual_seed(seed), **workers)

    @property
    def lookahead(self) -> int:
        """Batches the workers may decode ahead of the one handed out (the DataLoader's prefetch_factor 2 each)."""
        return 2 * self.loader.num_workers + 1

    def run(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from .errors import DataError

        if not batches:
            return
        self.sampler.batches = [[(epoch, int(i)) for i in b] for b in batches]
        with _stop_signals_after():  # starting the workers (the first epoch) is not cut in the middle
            if self.loader.num_workers > 0:
                _start_worker_server()  # a no-op once it runs
            epoch_batches = iter(self.loader)
        try:
            yield from epoch_batches
        except DataError as exc:
            from .reference import worker_error  # a worker's DataError arrives with its traceback as the message

            raise worker_error(exc) from None

    def state_dict(self) -> dict:
        return {}  # per-sample seeds are functions of (seed, epoch, index): nothing to carry

    def load_state_dict(self, state: dict) -> None:
        pass


class Loader:
    """Iterable over (images, labels[, indices]) batches of one shard; see :func:`create_loader`."""

    def __init__(self, data: ArrayDataset | FolderDataset | ShardDataset, *, train: bool, cfg: AugmentConfig, backend: str,
                 device: torch.device, batch_size: int, seed: int, shard_id: int, num_shards: int,
                 drop_last: bool, return_index: bool, num_threads: int, num_workers: int, size: tuple[int, int],
                 even_shards: bool = False, dali_batch_size: int | None = None):
        cfg = resolve_crop(cfg, folder=isinstance(data, (FolderDataset, ShardDataset)))
        self.data, self.train, self.cfg, self.backend_name = data, train, cfg, backend
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last, self.return_index = drop_last, return_index
        self.even_shards = even_shards and train  # validation always sees every sample once
        self.image_size = size
        self.epoch = 0
        self._fingerprint: dict[str, object] | None = None
        self._labels = torch.tensor(np.asarray(data.labels), dtype=torch.int64, device=device)
        if backend == "dali":
            # A training batch never holds more than the shard: DALI allocates for its batch size, so a
            # --batch-size far above the dataset would otherwise reserve memory for samples that do not exist.
            held = min(batch_size, max(1, self.shard_size))
            chunk = default_dali_batch_size(held, size) if dali_batch_size is None else dali_batch_size
            epoch_batches = -(-max(1, self.shard_size) // held)
            chunk = held * max(1, min(chunk // held, epoch_batches))  # whole training batches, an epoch at most
            self._backend = _DaliBackend(data, cfg, size, device, held, chunk, num_threads, seed, shard_id)
        else:
            self._backend = _TorchvisionBackend(data, cfg, size, device, num_workers, seed)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.data.classes

    def fingerprint(self) -> dict[str, object]:
        """The whole split's identity (sample count, classes, a digest; not this shard's): see sources.fingerprint."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.data)
        return self._fingerprint

    @property
    def dataset_size(self) -> int:
        return len(self.data)

    @property
    def shard_size(self) -> int:
        """Samples this shard holds per epoch (before drop_last)."""
        n = len(self.data)
        if isinstance(self.data, ShardDataset):  # whole tar shards per rank, the same every epoch
            return len(self.epoch_indices())
        if self.even_shards:
            return n // self.num_shards
        return n // self.num_shards + (1 if self.shard_id < n % self.num_shards else 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the shuffle and the augmentation draws are functions of (seed, epoch, shard)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} is invalid: expected an integer >= 0")
        self.epoch = epoch

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume the augmentation stream exactly at the next epoch boundary."""
        return {"epoch": self.epoch, "backend": self.backend_name, **self._backend.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != self.backend_name:
            raise ConfigError(f"loader state was saved by backend={state.get('backend')!r}, not "
                              f"{self.backend_name!r}; resume with the backend of the original run")
        self.set_epoch(int(state["epoch"]))
        self._backend.load_state_dict(state)

    def __len__(self) -> int:
        return num_batches(self.shard_size, self.batch_size, self.drop_last)

    @property
    def dali_batch_size(self) -> int | None:
        """Samples per DALI graph iteration (a multiple of `batch_size`); None for the torchvision backend."""
        return getattr(self._backend, "dali_batch_size", None)

    def define_graph(self, device: str = "gpu"):
        """The DALI graph this loader runs with `device` ("gpu" | "cpu") operators, defined and not built.

        Definition needs no GPU, so a CPU-only machine can check the GPU graph's operator placement
        (the CPU tests check it with tests/placement.py); only ``build()`` needs CUDA.
        """
        if not isinstance(self._backend, _DaliBackend):
            raise ConfigError("define_graph() needs backend='dali'")
        batches = split_batches(self.epoch_indices(), self.batch_size, self.drop_last)
        return self._backend.define(device, 0 if device == "gpu" else None, batches)

    def epoch_indices(self) -> np.ndarray:
        """This shard's dataset indices for the current epoch, in order (before drop_last)."""
        if isinstance(self.data, ShardDataset):
            return file_shard_indices(self.data.counts, shuffle=self.train, seed=self.seed, epoch=self.epoch,
                                      shard_id=self.shard_id, num_shards=self.num_shards, even=self.even_shards)
        return shard_indices(len(self.data), shuffle=self.train, seed=self.seed, epoch=self.epoch,
                             shard_id=self.shard_id, num_shards=self.num_shards, even=self.even_shards)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        batches = split_batches(self.epoch_indices(), self.batch_size, self.drop_last)
        # an image folder's JPEG damage, which decoders fill in and tell only on stderr, named after the epoch
        folder = isinstance(self.data, FolderDataset) and damage.watching()
        start, handed_out = time.monotonic(), []
        for images, index in self._backend.run(batches, self.epoch):
            images = images.to(self.device, non_blocking=True)
            index = index.to(self.device, non_blocking=True)
            labels = self._labels[index]
            if folder:
                handed_out.append(time.monotonic())
            yield (images, labels, index) if self.return_index else (images, labels)
        if folder:
            files = self.data.files
            damage.attribute(self.data.name.rsplit("/", 1)[-1], [[files[i] for i in b] for b in batches],
                             handed_out, start=start, lookahead=self._backend.lookahead, jobs=cores_per_process())


def load_source(dataset: str, data_dir: str | Path, split: str, *, num_samples: int | None = None,
                download: bool = True) -> ArrayDataset | FolderDataset | ShardDataset:
    """The dataset split as host arrays (CIFAR, synthetic) or a validated file list (folder)."""
    if dataset in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        return load_cifar(dataset, data_dir, split, download=download)
    if dataset == "folder":
        from .folder import list_image_folder

        return list_image_folder(data_dir, split)
    if dataset == "shards":
        from .shards import load_shards

        return load_shards(data_dir, split)
    from .synthetic import make_synthetic

    # The data seed is fixed: runs with different training seeds must see the same synthetic dataset.
    return make_synthetic(split, seed=0, num_samples=num_samples)


def _note_even_shard_surplus(data: ShardDataset, num_shards: int) -> None:
    """Print what even tar shards per rank leave out: every rank stops at the smallest rank's sample count."""
    held = rank_sample_counts(data.counts, num_shards)
    left_out = sum(held) - min(held) * num_shards
    if left_out:
        print(f"note: {data.root}: {num_shards} ranks read whole tar shards holding {min(held)}..{max(held)} training "
              f"samples each; every rank stops at {min(held)}, so {left_out} of {sum(held)} samples are left out of "
              "each epoch (different ones each epoch); repack with a smaller --shard-size to leave out fewer",
              file=sys.stderr, flush=True)


def create_loader(dataset: str = "cifar10", data_dir: str | Path = "./data", split: str = "train",
                  batch_size: int = 128, backend: str = "dali", device: str | torch.device = "cuda",
                  augment: str | AugmentConfig = "standard", seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                  drop_last: bool = False, return_index: bool = False, *, num_threads: int | None = None,
                  num_workers: int | None = None, image_size: int | None = None, num_samples: int | None = None,
                  download: bool = True, even_shards: bool = False, dali_batch_size: int | None = None) -> Loader:
    """Build the loader of the batch contract (DESIGN.md).

    Batches are ``(images, labels)`` (``+ indices`` with ``return_index``): images float32 NCHW normalized and
    labels int64, both on `device`. Training splits are reshuffled per epoch from (seed, epoch) via
    :meth:`Loader.set_epoch`; every sample of the shard appears once per epoch, the short final batch included
    unless `drop_last`. The validation split is not shuffled or augmented: it uses the recipe's normalization only.

    Extra keyword-only options: `num_threads` (DALI CPU threads) and `num_workers` (DataLoader workers), by default
    the cores available to this process divided among the processes of this node (torchrun's LOCAL_WORLD_SIZE),
    one fewer for a GPU graph (:func:`default_num_threads`); `dali_batch_size`
    (samples per DALI graph iteration, rounded down to whole training batches; default: about 2**20 pixels'
    worth, 1024 CIFAR images, see DALI_BATCH_PIXELS); `image_size` (the side folder images are cropped to by the
    recipe's crop, see :mod:`dali_pipes.config`; default FOLDER_IMAGE_SIZE = 224; array datasets keep their size),
    `num_samples` (synthetic split size, default CIFAR-10's), `download`,
    `even_shards` (training split: leave out the n % num_shards surplus of each epoch's permutation so that every
    shard has the same size, as data-parallel ranks need).
    """
    dataset = check_choice("dataset", dataset, DATASETS)
    split = check_choice("split", split, SPLITS)
    backend = check_choice("backend", backend, BACKENDS)
    if backend == "dali":
        cuda_fit.require_dali()
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0, 2**64 - 1)  # torch.Generator's seeds are unsigned 64-bit
    num_shards = check_int("num_shards", num_shards, 1)
    shard_id = check_int("shard_id", shard_id, 0, num_shards - 1)
    cores = cores_per_process()
    threads = None if num_threads is None else check_int("num_threads", num_threads, 1)
    workers = cores if num_workers is None else check_int("num_workers", num_workers, 0)
    if workers > cores and backend == "torchvision":
        # each worker is a process that imports torch and decodes on a core of its own: more workers than cores
        # only queue for them (32 on 2 cores took minutes to start and never finished an epoch)
        if split == "train":
            print(f"note: num_workers={workers} exceeds the {cores} core(s) this process may use: {cores} DataLoader "
                  "workers are used", file=sys.stderr, flush=True)
        workers = cores
    if dali_batch_size is not None:
        check_int("dali_batch_size", dali_batch_size, 1)
    if num_samples is not None:
        check_int("num_samples", num_samples, 1)
    if image_size is not None:
        check_int("image_size", image_size, 8, 4096)
    dev = resolve_device(device)
    mean, std = _STATS[dataset]
    # The crop is checked against the dataset before any data is read or downloaded.
    cfg = resolve_crop(resolve_augment(augment, mean=mean, std=std), folder=dataset in ("folder", "shards"))
    train = split == "train"
    if not train:
        cfg = eval_config(cfg)
    data = load_source(dataset, data_dir, split, num_samples=num_samples, download=download)
    if threads is None:
        threads = default_num_threads(dev, cores)
    if isinstance(data, ShardDataset) and train and len(data.counts) < num_shards:
        raise ConfigError(f"num_shards={num_shards} ranks but {data.root} holds {len(data.counts)} train tar shards; "
                          "a rank reads whole tar shards: repack with a smaller --shard-size (at least one per rank)")
    if isinstance(data, ShardDataset) and train and even_shards and num_shards > 1 and shard_id == 0:
        _note_even_shard_surplus(data, num_shards)
    if isinstance(data, (FolderDataset, ShardDataset)):
        side = image_size or FOLDER_IMAGE_SIZE
    else:
        side = int(data.images.shape[1])
        if image_size is not None and image_size != side:
            raise ConfigError(f"image_size={image_size} does not match the {dataset} images ({side}x{side}); "
                              "leave it unset for array datasets")
    return Loader(data, train=train, cfg=cfg, backend=backend, device=dev, batch_size=batch_size, seed=seed,
                  shard_id=shard_id, num_shards=num_shards, drop_last=bool(drop_last),
                  return_index=bool(return_index), num_threads=threads, num_workers=workers, size=(side, side),
                  even_shards=bool(even_shards), dali_batch_size=dali_batch_size)
