"""The batch contract of create_loader on both backends (CPU): coverage, sharding, seeds, resume, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_pipes import ConfigError, DataError, Loader, create_loader, draws
from dali_pipes.cifar import write_cifar
from dali_pipes.config import resolve_augment
from dali_pipes.sources import ArrayDataset

BACKENDS = ["dali", "torchvision"]


def tiny(n: int, num_classes: int = 10, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return ArrayDataset("tiny", images, labels, tuple(str(k) for k in range(num_classes)))


def make(data: ArrayDataset, backend: str, *, train: bool = True, augment: str = "standard", batch_size: int = 10,
         seed: int = 0, shard_id: int = 0, num_shards: int = 1, drop_last: bool = False, workers: int = 0,
         even_shards: bool = False, dali_batch_size: int | None = None) -> Loader:
    cfg = resolve_augment(augment)
    return Loader(data, train=train, cfg=cfg, backend=backend, device=torch.device("cpu"), batch_size=batch_size,
                  seed=seed, shard_id=shard_id, num_shards=num_shards, drop_last=drop_last, return_index=True,
                  num_threads=2, num_workers=workers, size=(32, 32), even_shards=even_shards,
                  dali_batch_size=dali_batch_size)


def run_epoch(loader: Loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    loader.set_epoch(epoch)
    images, labels, index, sizes = [], [], [], []
    for x, y, i in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        images.append(x), labels.append(y), index.append(i), sizes.append(len(x))
    return torch.cat(images), torch.cat(labels), torch.cat(index), sizes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch_with_a_partial_last_batch(backend: str, drop_last: bool) -> None:
    data = tiny(103)  # 103 = 10 * 10 + 3: no batch size used here divides it
    loader = make(data, backend, drop_last=drop_last)
    _, labels, index, sizes = run_epoch(loader, 0)
    assert len(sizes) == len(loader)
    if drop_last:
        assert sizes == [10] * 10 and len(set(index.tolist())) == 100
    else:
        assert sizes == [10] * 10 + [3]
        assert sorted(index.tolist()) == list(range(103))
    assert torch.equal(labels, torch.from_numpy(data.labels)[index])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_are_disjoint_and_cover_the_dataset(backend: str) -> None:
    data = tiny(103)
    seen = []
    for shard in range(3):
        loader = make(data, backend, batch_size=7, shard_id=shard, num_shards=3)
        _, _, index, sizes = run_epoch(loader, 2)
        assert len(sizes) == len(loader) and sum(sizes) == loader.shard_size
        seen.append(set(index.tolist()))
    assert seen[0].isdisjoint(seen[1]) and seen[1].isdisjoint(seen[2]) and seen[0].isdisjoint(seen[2])
    assert set().union(*seen) == set(range(103))


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_sees_each_sample_once_unshuffled_and_unaugmented(backend: str) -> None:
    data = tiny(53)
    shards = [make(data, backend, train=False, shard_id=s, num_shards=2, augment="none") for s in range(2)]
    epochs = [[run_epoch(loader, e) for e in (0, 1)] for loader in shards]
    all_index = torch.cat([ep[0][2] for ep in epochs])
    assert sorted(all_index.tolist()) == list(range(53)) and len(all_index) == 53  # no padding counted
    assert torch.equal(epochs[0][0][2], torch.arange(0, 53, 2))  # in dataset order
    assert torch.equal(epochs[0][0][0], epochs[0][1][0])  # same tensors every epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_batches_and_epochs_reshuffle(backend: str) -> None:
    data = tiny(60)
    a0, _, ia0, _ = run_epoch(make(data, backend, seed=3), 0)
    b = make(data, backend, seed=3)
    b0, _, ib0, _ = run_epoch(b, 0)
    b1, _, ib1, _ = run_epoch(b, 1)
    assert torch.equal(ia0, ib0) and torch.equal(a0, b0)
    assert not torch.equal(ib0, ib1)  # a new order each epoch
    _, _, ic0, _ = run_epoch(make(data, backend, seed=4), 0)
    assert not torch.equal(ia0, ic0)


def test_both_backends_follow_the_same_epoch_plan() -> None:
    data = tiny(45)
    plans = [run_epoch(make(data, backend, seed=9, batch_size=8), 1)[2] for backend in BACKENDS]
    assert torch.equal(plans[0], plans[1])


@pytest.mark.slow  # starts worker processes / runs every part of the plan: over 5 s here
def test_reference_batches_do_not_depend_on_the_worker_count() -> None:
    data = tiny(24)
    x0 = run_epoch(make(data, "torchvision", workers=0, batch_size=8), 1)[0]
    x2 = run_epoch(make(data, "torchvision", workers=2, batch_size=8), 1)[0]
    assert torch.equal(x0, x2)


def test_dali_resumes_the_augmentation_stream_exactly() -> None:
    data = tiny(40)
    straight = make(data, "dali", augment="strong")
    epochs = [run_epoch(straight, e)[0] for e in range(3)]
    assert not torch.equal(epochs[1], epochs[2])

    first = make(data, "dali", augment="strong")
    run_epoch(first, 0)
    state = first.state_dict()
    first.set_epoch(1)
    next(iter(first))  # an epoch abandoned halfway (interrupted run) must not shift later draws
    assert torch.equal(run_epoch(first, 1)[0], epochs[1])

    resumed = make(data, "dali", augment="strong")
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    assert torch.equal(run_epoch(resumed, 1)[0], epochs[1])
    assert torch.equal(run_epoch(resumed, 2)[0], epochs[2])


# None: about 2**20 pixels (1020 samples of 32x32) capped at one epoch's 11 training batches
@pytest.mark.parametrize("dali_batch_size, expected", [(None, 110), (10, 10), (35, 30), (4, 10), (5000, 110)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_dali_batches_are_whole_training_batches_split_back_exactly(dali_batch_size, expected, drop_last) -> None:
    data = tiny(103)
    loader = make(data, "dali", augment="none", drop_last=drop_last, dali_batch_size=dali_batch_size)
    assert loader.dali_batch_size == expected  # rounded down to whole training batches, at least one, an epoch at most
    _, labels, index, sizes = run_epoch(loader, 1)
    assert sizes == [10] * 10 + ([] if drop_last else [3]) and len(sizes) == len(loader)
    assert torch.equal(index, torch.from_numpy(loader.epoch_indices()[:sum(sizes)]))
    assert torch.equal(labels, torch.from_numpy(data.labels)[index])
    # Without random operations the pixels cannot depend on how samples were batched for DALI.
    plain, _, plain_index, _ = run_epoch(make(data, "dali", augment="none", drop_last=drop_last,
                                              dali_batch_size=10), 1)
    images, _, _, _ = run_epoch(loader, 1)
    assert torch.equal(plain_index, index) and torch.equal(plain, images)


def test_the_default_dali_batch_holds_about_a_million_pixels() -> None:
    from dali_pipes.loader import default_dali_batch_size

    assert default_dali_batch_size(128, (32, 32)) == 1024
    assert default_dali_batch_size(100, (32, 32)) == 1000
    assert default_dali_batch_size(1024, (32, 32)) == 1024
    assert default_dali_batch_size(4096, (32, 32)) == 4096  # never below one training batch
    assert default_dali_batch_size(64, (224, 224)) == 64


def test_an_interrupted_epoch_inside_a_dali_batch_resumes_exactly() -> None:
    data = tiny(95)
    straight = make(data, "dali", augment="strong", dali_batch_size=40)
    epochs = [run_epoch(straight, e)[0] for e in range(2)]

    first = make(data, "dali", augment="strong", dali_batch_size=40)
    run_epoch(first, 0)
    state = first.state_dict()  # what a checkpoint written in epoch 1 holds
    first.set_epoch(1)
    it = iter(first)
    for _ in range(6):  # stop inside the second DALI batch (training batches 5..8)
        next(it)
    del it

    # A new process (default DALI batch) adopts the saved DALI batch size, then skips what was trained.
    resumed = make(data, "dali", augment="strong")
    resumed.load_state_dict(state)
    assert resumed.dali_batch_size == 40
    resumed.set_epoch(1)
    batches = [b[0] for b in resumed]
    assert torch.equal(torch.cat(batches[6:]), epochs[1][60:])
    assert torch.equal(torch.cat(batches), epochs[1])


def test_state_from_another_backend_is_refused() -> None:
    state = make(tiny(8), "dali").state_dict()
    with pytest.raises(ConfigError, match="backend"):
        make(tiny(8), "torchvision").load_state_dict(state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cifar_and_synthetic_through_create_loader(tmp_path, backend: str) -> None:
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 23))
    test = (rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 7))
    write_cifar("cifar10", tmp_path, train, test)
    loader = create_loader("cifar10", tmp_path, "val", batch_size=4, backend=backend, device="cpu",
                           augment="strong", return_index=True, num_workers=0, download=False)
    x, y, i = next(iter(loader))
    assert torch.equal(y, torch.as_tensor(test[1][:4], dtype=torch.int64)) and torch.equal(i, torch.arange(4))
    assert len(loader) == 2 and loader.classes == tuple(f"class_{k}" for k in range(10))

    syn = create_loader("synthetic", split="train", batch_size=16, backend=backend, device="cpu",
                        num_samples=50, num_workers=0)
    assert sum(len(b[0]) for b in syn) == 50


@pytest.mark.parametrize("kwargs, option", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"), ({"shard_id": 2, "num_shards": 2},
                                                                             "shard_id"),
    ({"num_shards": 0}, "num_shards"), ({"backend": "ffcv"}, "backend"), ({"dataset": "mnist"}, "dataset"),
    ({"split": "test"}, "split"), ({"augment": "heavy"}, "augment"), ({"seed": -1}, "seed"),
    ({"device": "tpu"}, "device"), ({"image_size": 64}, "image_size"), ({"num_threads": 0}, "num_threads"),
    ({"dali_batch_size": 0}, "dali_batch_size"), ({"dali_batch_size": "big"}, "dali_batch_size"),
])
def test_bad_arguments_are_refused_naming_the_option(kwargs: dict, option: str) -> None:
    args = dict(dataset="synthetic", device="cpu", num_samples=10) | kwargs
    with pytest.raises(ConfigError, match=rf"{option}"):
        create_loader(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_cuda_requested_without_cuda_says_use_cpu() -> None:
    with pytest.raises(ConfigError, match="device='cpu'"):
        create_loader("synthetic", device="cuda", num_samples=10)


def test_missing_cifar_offline_names_the_folder(tmp_path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        create_loader("cifar10", tmp_path, device="cpu", download=False)


def test_even_shards_have_equal_sizes_and_leave_out_fewer_than_num_shards() -> None:
    data = tiny(103)
    seen = []
    for shard in range(3):
        loader = make(data, "dali", batch_size=10, shard_id=shard, num_shards=3, even_shards=True)
        _, _, index, sizes = run_epoch(loader, 1)
        assert sum(sizes) == loader.shard_size == 34 and len(sizes) == len(loader) == 4
        seen.append(set(index.tolist()))
    union = set().union(*seen)
    assert len(union) == 102 and sum(len(s) for s in seen) == 102  # disjoint, one sample left out this epoch


def test_a_restored_dali_pipeline_logs_nothing_and_leaves_the_root_logger_as_it_was(caplog) -> None:
    import logging

    data = tiny(40)
    first = make(data, "dali", augment="weak")
    run_epoch(first, 0)
    resumed = make(data, "dali", augment="weak")
    resumed.load_state_dict(first.state_dict())
    with caplog.at_level(logging.WARNING):
        run_epoch(resumed, 1)  # DALI warns about iterator state when it wraps a restored pipeline
    assert "Iterator data was not saved" not in caplog.text
    assert not logging.getLogger().filters  # the filter is scoped to the iterator's construction


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_one_thread_rule_leaves_a_gpu_graph_all_cores_but_the_training_loops(cores) -> None:
    from dali_pipes.loader import default_num_threads
    from training.config import TrainConfig
    from training.recipe.factory import loader_threads

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert default_num_threads(cuda, cores) == max(1, cores - 1)  # no fixed cap: 15 on a 16-core machine
    assert default_num_threads(cpu, cores) == cores
    # training asks the same rule, and --num-threads wins over it
    assert loader_threads(TrainConfig(), cpu) == default_num_threads(cpu)
    assert loader_threads(TrainConfig(num_threads=3), cuda) == 3


def test_the_epoch_plan_reaches_the_device_once_per_epoch_and_each_batch_gathers_a_slice_of_it() -> None:
    data = tiny(50)
    plain, on_device = (make(data, "dali", batch_size=10, dali_batch_size=20) for _ in range(2))
    backend = on_device._backend
    # a CPU stand-in for the dataset in GPU memory: the same gather path, with the plan copied to `device` (the CPU)
    backend._device_images = torch.from_numpy(data.images.copy())
    copies, gathered = [], []
    plan_on_device, source = backend._plan_on_device, backend._source
    backend._plan_on_device = lambda chunks: copies.append(plan_on_device(chunks)) or copies[-1]

    def recording_source(info):
        out = source(info)  # StopIteration past the epoch's end, as before
        gathered.append(backend._device_chunks[info.iteration])
        return out.numpy()  # DALI asks CUDA for torch's current stream when fed any torch tensor, even a CPU one

    backend._source = recording_source
    for epoch in (0, 1):
        assert torch.equal(run_epoch(on_device, epoch)[0], run_epoch(plain, epoch)[0])
        assert len(copies) == epoch + 1  # one copy per epoch, not one per DALI batch
        plan = [index for index, _ in copies[-1]]  # each DALI batch's indices, with its samples' flips
        assert [len(s) for s in plan] == [20, 20, 10]
        assert len({s.untyped_storage().data_ptr() for s in plan}) == 1  # slices of one tensor
        assert torch.equal(torch.cat(plan), torch.from_numpy(on_device.epoch_indices()))
        flips = torch.cat([f for _, f in copies[-1]]).numpy()  # drawn as the graph's flips are, sent with them
        assert np.array_equal(flips, draws.flips(backend.cfg, backend.seed, epoch, on_device.epoch_indices()))
        assert 0 < flips.sum() < len(flips)
    assert len(gathered) == 6 and all(any(g is s for s in copies[0] + copies[1]) for g in gathered)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")
def test_one_device_rule_for_loaders_training_and_tools() -> None:
    # dali_pipes.loader.resolve_device is the only device rule: "auto" in the API as on the command line, and the
    # error names the option the user wrote.
    from dali_pipes.loader import resolve_device
    from training.recipe import resolve_device as run_device

    assert resolve_device("auto") == run_device("auto") == torch.device("cpu")
    assert create_loader("synthetic", split="val", batch_size=4, device="auto", num_samples=8).device.type == "cpu"
    with pytest.raises(ConfigError, match=r"^device='cuda' but no CUDA device is visible; use device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^--device=cuda but no CUDA device is visible; use --device cpu \(or auto\)$"):
        run_device("cuda")
    with pytest.raises(ConfigError, match=r"^--device=tpu is invalid: use auto, cuda, cuda:N or cpu$"):
        run_device("tpu")
