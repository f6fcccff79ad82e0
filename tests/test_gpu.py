"""The DALI GPU graph (marked `gpu`: skipped with a reason where no CUDA device is visible, run wherever one is)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_image_folder

from dali_pipes import Loader, create_loader
from dali_pipes.config import AugmentConfig, resolve_augment
from dali_pipes.sources import ArrayDataset

pytestmark = pytest.mark.gpu


def loader_on(device: str, data: ArrayDataset, cfg: AugmentConfig, batch_size: int = 32,
              dali_batch_size: int | None = None) -> Loader:
    return Loader(data, train=True, cfg=cfg, backend="dali", device=torch.device(device), batch_size=batch_size,
                  seed=1, shard_id=0, num_shards=1, drop_last=False, return_index=True, num_threads=2,
                  num_workers=0, size=(32, 32), dali_batch_size=dali_batch_size)


def random_data(n: int) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset("r", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n).astype(np.int64), tuple(str(k) for k in range(10)))


def test_gpu_graph_matches_cpu_graph_without_augmentation() -> None:
    data = random_data(77)
    out = {}
    for device in ("cuda", "cpu"):
        batches = list(loader_on(device, data, AugmentConfig()))
        assert batches[0][0].device.type == device and batches[0][1].device.type == device
        assert [len(b[0]) for b in batches] == [32, 32, 13]
        out[device] = (torch.cat([b[0] for b in batches]).cpu(), torch.cat([b[2] for b in batches]).cpu())
    assert torch.equal(out["cuda"][1], out["cpu"][1])
    assert torch.allclose(out["cuda"][0], out["cpu"][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["standard", "strong", "weak+autoaugment", "weak+randaugment",
                                    "weak+trivialaugment"])
def test_gpu_presets_cover_the_epoch_and_agree_with_cpu_statistics(preset: str) -> None:
    from dali_pipes.synthetic import make_synthetic

    data = make_synthetic("val", num_samples=1000)
    cfg = resolve_augment(preset)
    stats = {}
    for device in ("cuda", "cpu"):
        loader = loader_on(device, data, cfg, batch_size=128)
        loader.set_epoch(1)
        images, _, index = zip(*loader)
        x = torch.cat(images).cpu()
        assert sorted(torch.cat(index).cpu().tolist()) == list(range(1000))
        stats[device] = (x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    assert (stats["cuda"][0] - stats["cpu"][0]).abs().max() < 0.06
    assert ((stats["cuda"][1] - stats["cpu"][1]).abs() / stats["cpu"][1]).max() < 0.06


@pytest.mark.parametrize("dali_batch_size", [32, 96, None])
def test_gpu_dali_batches_from_gpu_memory_split_back_into_training_batches(dali_batch_size) -> None:
    data = random_data(203)
    cpu = list(loader_on("cpu", data, AugmentConfig()))
    reference, reference_index = torch.cat([b[0] for b in cpu]), torch.cat([b[2] for b in cpu])
    loader = loader_on("cuda", data, AugmentConfig(), dali_batch_size=dali_batch_size)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [32] * 6 + [11]
    assert all(b[0].is_cuda and b[1].is_cuda for b in batches)
    index = torch.cat([b[2] for b in batches]).cpu()
    assert torch.equal(index, reference_index) and sorted(index.tolist()) == list(range(203))
    assert torch.allclose(torch.cat([b[0] for b in batches]).cpu(), reference, atol=1e-5, rtol=0)


def test_gpu_resume_is_exact() -> None:
    data = random_data(64)
    cfg = resolve_augment("standard")
    straight = loader_on("cuda", data, cfg)
    epochs = []
    for e in range(2):
        straight.set_epoch(e)
        epochs.append(torch.cat([b[0] for b in straight]))
    first = loader_on("cuda", data, cfg)
    list(first)
    resumed = loader_on("cuda", data, cfg)
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(1)
    assert torch.equal(torch.cat([b[0] for b in resumed]), epochs[1])


@pytest.mark.parametrize("hw_decoder_load", [0.0, "chosen", 1.0])
def test_gpu_folder_decodes_with_nvjpeg_like_libjpeg_turbo(tmp_path, hw_decoder_load) -> None:
    # 0: nvJPEG's CUDA path only; 1: every image on the hardware JPEG engines (where the GPU has them); "chosen":
    # dali_graph.HW_DECODER_LOAD, what training runs. PIL writes 4:2:0 JPEGs, where chroma upsampling matters.
    from dali_pipes.dali_graph import HW_DECODER_LOAD

    write_image_folder(tmp_path, classes=("a", "b"), per_class=5, shape=(40, 48), ext="jpg", seed=2)
    out = {}
    for device in ("cuda", "cpu"):
        loader = create_loader("folder", tmp_path, "val", batch_size=4, device=device, augment="none",
                               image_size=32)
        loader._backend.hw_decoder_load = HW_DECODER_LOAD if hw_decoder_load == "chosen" else hw_decoder_load
        out[device] = torch.cat([x.cpu() for x, _ in loader])
    assert out["cuda"].shape == (10, 3, 32, 32)
    # nvJPEG and libjpeg-turbo may differ by a level or two per pixel (IDCT rounding); chroma upsampled another
    # way would move every edge
    assert (out["cuda"] - out["cpu"]).abs().mean() < 0.05


def test_gpu_arrays_follow_torchs_current_stream(tmp_path) -> None:
    # The image source's copy reads torch's current stream at each feed (cuda_stream=None), so a loop running
    # under a side stream gets the same batches as on the default stream.
    data, cfg = random_data(96), resolve_augment("standard")
    default = torch.cat([b[0] for b in loader_on("cuda", data, cfg)])
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        batches = [b[0].clone() for b in loader_on("cuda", data, cfg)]
    side.synchronize()
    assert torch.equal(torch.cat(batches), default)


def test_gpu_random_resized_crop_is_fused_with_nvjpeg_and_draws_like_the_cpu(tmp_path) -> None:
    from test_folder_resolution import boxes, probe_folder

    root = probe_folder(tmp_path, 300)
    draws = {}
    for device in ("cuda", "cpu"):
        loader = create_loader("folder", root, "train", batch_size=50, device=device, num_threads=2,
                               augment=AugmentConfig(crop="resized", flip_p=0.5), image_size=32, return_index=True)
        images, _, index = (torch.cat([t.cpu() for t in part]) for part in zip(*loader))
        assert sorted(index.tolist()) == list(range(300))
        mean = torch.tensor(loader.cfg.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(loader.cfg.std).view(1, 3, 1, 1) * 255
        draws[device] = boxes(images * std + mean)
    # 300 draws each: standard error of a mean area ~0.016
    assert abs(draws["cuda"]["area"].mean() - draws["cpu"]["area"].mean()) < 0.05
    assert abs(draws["cuda"]["flipped"].mean() - 0.5) < 0.1


def test_gpu_shards_decode_on_mixed_and_agree_with_the_cpu(tmp_path) -> None:
    # dataset="shards" on a GPU: fn.readers.webdataset on the CPU, nvJPEG ("mixed") decoding; every sample of the
    # split once, the same order as the CPU graph, pixels within nvJPEG's rounding of libjpeg-turbo's.
    from dali_pipes.shard_cli import pack

    write_image_folder(tmp_path / "ds", classes=("a", "b", "c"), per_class=6, shape=(40, 48), ext="jpg", seed=3)
    pack(tmp_path / "ds", tmp_path / "sh", shard_size=12 << 10, seed=1, progress=False)
    out = {}
    for device in ("cuda", "cpu"):
        loader = create_loader("shards", tmp_path / "sh", "val", batch_size=4, device=device, augment="none",
                               image_size=32, return_index=True, num_threads=2)
        images, labels, index = (torch.cat([t.cpu() for t in part]) for part in zip(*loader))
        assert sorted(index.tolist()) == list(range(len(loader.data)))
        out[device] = (images, labels, index)
        train = create_loader("shards", tmp_path / "sh", "train", batch_size=5, device=device, augment="standard",
                              image_size=32, return_index=True, num_threads=2)
        seen = torch.cat([b[2].cpu() for b in train])
        assert sorted(seen.tolist()) == list(range(len(train.data)))
    assert torch.equal(out["cuda"][2], out["cpu"][2]) and torch.equal(out["cuda"][1], out["cpu"][1])
    assert (out["cuda"][0] - out["cpu"][0]).abs().mean() < 0.05
