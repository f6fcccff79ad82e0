"""Sharded datasets: the dali-shard packer, dataset="shards" on both backends, and bad shard folders."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import write_image_folder

from dali_pipes import create_loader
from dali_pipes.errors import ConfigError, DataError
from dali_pipes.plan import assign_files
from dali_pipes.shard_cli import main as shard_main
from dali_pipes.shard_cli import pack, parse_size, verify
from dali_pipes.shards import load_shards

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning"
)
BACKENDS = ("dali", "torchvision")
CLASSES = ("ant", "bee", "cat", "dog")
SHARD = 12 << 10  # ~2 samples of these ~3.5 KB JPEGs per shard: many shards from few images


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("img") / "ds"
    write_image_folder(root, classes=CLASSES, per_class=5, shape=(36, 48), ext="jpg")
    (root / "train" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "train" / "bee" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sh") / "out"
    pack(folder, out, shard_size=SHARD, seed=3, progress=False)
    return out


def _copy(shards: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shards, tmp_path / "copy"))


def make(shards: Path, backend: str, split: str = "train", **kw):
    opts = dict(batch_size=3, backend=backend, device="cpu", augment="none", return_index=True, num_workers=0,
                image_size=32, num_threads=1)
    return create_loader("shards", shards, split, **{**opts, **kw})


def epoch(loader, e: int = 0):
    loader.set_epoch(e)
    batches = list(loader)
    return (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]),
            torch.cat([b[2] for b in batches]), [len(b[2]) for b in batches])


# ---- the packer ----------------------------------------------------------------------------------------------------

def test_packing_writes_webdataset_tars_whose_index_files_dali_can_follow(folder, shards) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["classes"] == list(CLASSES)
    assert manifest["splits"]["train"]["samples"] == 20 and manifest["splits"]["val"]["samples"] == 20
    train = manifest["splits"]["train"]["shards"]
    assert len(train) >= 6 and sum(s["samples"] for s in train) == 20
    seen_labels = set()
    start = 0
    for shard in train:
        with tarfile.open(shards / shard["tar"]) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        keys = [f"{start + k:09d}" for k in range(shard["samples"])]
        assert names == [n for key in keys for n in (f"{key}.jpg", f"{key}.cls")]  # <key>.<ext> + <key>.cls
        lines = (shards / shard["index"]).read_text().splitlines()
        assert lines[0] == f"v1.2 {shard['samples']}"
        for line, (image, cls) in zip(lines[1:], zip(members[::2], members[1::2])):
            # DALI's v1.2 index: ext, data offset, size, name per component, as tarfile reads the headers
            assert line.split() == ["jpg", str(image.offset_data), str(image.size), image.name,
                                    "cls", str(cls.offset_data), str(cls.size), cls.name]
        seen_labels.update(shard["labels"])
        start += shard["samples"]
    assert seen_labels == set(range(len(CLASSES)))
    skipped = (shards / "skipped.txt").read_text()
    assert "broken.jpg" in skipped and "empty.png" in skipped and "empty file" in skipped


def test_packing_is_reproducible_and_shuffled_once_by_the_seed(folder, shards, tmp_path) -> None:
    again = pack(folder, tmp_path / "again", shard_size=SHARD, seed=3, progress=False)
    other = pack(folder, tmp_path / "other", shard_size=SHARD, seed=4, progress=False)
    assert again["samples"] == 40
    sha = lambda d: [s["sha256"] for s in json.loads((d / "manifest.json").read_text())["splits"]["train"]["shards"]]
    labels = lambda d: sum((s["labels"] for s in json.loads((d / "manifest.json").read_text())["splits"]["train"]
                            ["shards"]), [])
    assert sha(shards) == sha(tmp_path / "again")
    assert labels(shards) != labels(tmp_path / "other")
    assert labels(shards) != sorted(labels(shards))  # classes mixed across shards


def test_an_interrupted_packing_leaves_no_half_shard_and_a_rerun_finishes_it(folder, shards, tmp_path) -> None:
    import dali_pipes.shard_cli as cli

    real, calls = cli.write_shard, []

    def killed_on_the_third(out, shard, progress=None):
        calls.append(shard.tar)
        if len(calls) == 3:  # killed while writing: a partial file, under its temporary name only
            (out / f".{shard.tar}.partial").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        return real(out, shard, progress)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pack(folder, out, shard_size=SHARD, seed=3, progress=False, write=killed_on_the_third)
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(calls[:2])  # whole shards only
    with pytest.raises(DataError, match="no manifest.json"):
        load_shards(out, "train")
    summary = pack(folder, out, shard_size=SHARD, seed=3, progress=False)
    assert summary["written"] == summary["shards"] - 2  # the two whole shards were kept
    assert not list(out.glob(".*.partial"))
    ours, clean = (json.loads((d / "manifest.json").read_text()) for d in (out, shards))
    assert [s["sha256"] for s in ours["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in clean["splits"]["train"]["shards"]]
    with pytest.raises(DataError, match="another packing"):
        pack(folder, out, shard_size=SHARD, seed=9, progress=False)


def test_the_command_prints_one_summary_line_and_one_line_errors(folder, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(shard_main, [str(folder), str(tmp_path / "o"), "--shard-size", "16K", "--no-progress"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("packed 40 samples (train 20, val 20) into ") and "skipped" in line
    assert runner.invoke(shard_main, ["--verify", str(tmp_path / "o")]).exit_code == 0
    bad = runner.invoke(shard_main, [str(folder), str(tmp_path / "p"), "--shard-size", "12Q"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--shard-size" in bad.output
    assert parse_size("256M") == 256 << 20 and parse_size("1g") == 1 << 30 and parse_size("4096") == 4096


def test_the_console_script_is_declared() -> None:
    import tomllib

    from training import entry

    scripts = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dali-shard"] == "training.entry:shard" and callable(entry.shard)


# ---- the loader's guarantees on shards, both backends ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch_across_ranks_on_disjoint_tar_shards(shards, backend, drop_last) -> None:
    data = load_shards(shards, "train")
    seen, files = [], []
    for rank in range(2):
        loader = make(shards, backend, num_shards=2, shard_id=rank, drop_last=drop_last)
        _, labels, index, sizes = epoch(loader, 1)
        assert len(sizes) == len(loader) and all(s == 3 for s in sizes[:-1])
        assert torch.equal(labels, torch.from_numpy(data.labels[index.numpy()]))
        if not drop_last:
            assert sum(sizes) == loader.shard_size  # the short last batch is kept
        seen.append(index.tolist())
        files.append({int(data.shard[i]) for i in index})
    assert not files[0] & files[1]  # no tar shard read by both ranks
    if not drop_last:
        assert sorted(seen[0] + seen[1]) == list(range(20))
    else:
        assert len(set(seen[0]) | set(seen[1])) == sum(len(s) for s in seen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_order_is_reproducible_from_the_seed_and_changes_each_epoch(shards, backend) -> None:
    a0, a1 = (epoch(make(shards, backend, seed=5), e)[2] for e in (0, 1))
    b0 = epoch(make(shards, backend, seed=5), 0)[2]
    c0 = epoch(make(shards, backend, seed=6), 0)[2]
    assert torch.equal(a0, b0) and not torch.equal(a0, a1) and not torch.equal(a0, c0)
    assert sorted(a0.tolist()) == sorted(a1.tolist()) == list(range(20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_sees_every_sample_once_in_a_fixed_order(shards, backend) -> None:
    loader = make(shards, backend, "val")
    first, second = epoch(loader, 0), epoch(loader, 3)
    assert first[2].tolist() == second[2].tolist() == list(range(20))
    assert torch.equal(first[0], second[0])


def test_both_backends_follow_one_plan_and_agree_with_the_folder_images(folder, shards) -> None:
    dali, ref = (epoch(make(shards, b, augment="standard"), 2) for b in BACKENDS)
    assert torch.equal(dali[2], ref[2]) and torch.equal(dali[1], ref[1])
    # validation on the shards holds the folder's images: the same set of (label, image), within one grey level
    shard_val = epoch(make(shards, "dali", "val"), 0)
    folder_val = create_loader("folder", folder, "val", batch_size=8, backend="dali", device="cpu", augment="none",
                               image_size=32, num_threads=1)
    f_images, f_labels = (torch.cat(t) for t in zip(*list(folder_val)))
    key = lambda images, labels: sorted(zip(labels.tolist(), images.sum((1, 2, 3)).tolist()))
    for (fl, fs), (sl, ss) in zip(key(f_images, f_labels), key(shard_val[0], shard_val[1])):
        assert fl == sl and abs(fs - ss) < 1e-3 * abs(fs) + 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_interrupted_midway_resumes_exactly(shards, backend) -> None:
    straight = make(shards, backend, augment="standard", dali_batch_size=6)
    epochs = [epoch(straight, e) for e in range(2)]
    first = make(shards, backend, augment="standard", dali_batch_size=6)
    epoch(first, 0)
    state = first.state_dict()
    first.set_epoch(1)
    it = iter(first)
    for _ in range(3):
        next(it)
    del it
    resumed = make(shards, backend, augment="standard")
    resumed.load_state_dict(state)
    _, _, index, _ = rest = epoch(resumed, 1)
    assert torch.equal(rest[0], epochs[1][0]) and torch.equal(index, epochs[1][2])


def test_more_ranks_than_train_shards_is_refused(shards) -> None:
    with pytest.raises(ConfigError, match="--shard-size"):
        make(shards, "torchvision", num_shards=64, shard_id=0)


def test_rank_assignment_is_disjoint_covering_and_balanced() -> None:
    counts = [5, 3, 3, 2, 2, 2, 1]
    ranks = assign_files(counts, 3)
    assert sorted(f for r in ranks for f in r) == list(range(7))
    held = [sum(counts[f] for f in r) for r in ranks]
    assert max(held) - min(held) <= max(counts)


# ---- bad shard folders: one line naming the file and the fix --------------------------------------------------------

def _one_line(exc: pytest.ExceptionInfo, *names: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and all(n in text for n in names), text
    assert "dali-shard" in text or "repack" in text


def test_missing_manifest_or_folder(tmp_path) -> None:
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path, "train")
    _one_line(exc, "manifest.json", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_shards(tmp_path / "nope", "train")
    _one_line(exc, "nope")


def test_a_truncated_tar(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    tar = out / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    with pytest.raises(DataError) as exc:
        make(out, "dali")
    _one_line(exc, str(tar), "truncated")


def test_a_missing_index(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    (out / "train-000002.idx").unlink()
    with pytest.raises(DataError) as exc:
        make(out, "torchvision")
    _one_line(exc, "train-000002.idx", "missing")


def test_an_index_of_another_tar(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    shutil.copy(out / "train-000000.idx", out / "train-000001.idx")
    with pytest.raises(DataError) as exc:
        make(out, "dali")
    _one_line(exc, "train-000001.idx")


def test_a_sample_without_label_or_image(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    index = out / "train-000000.idx"
    lines = index.read_text().splitlines()
    original = lines[1]
    lines[1] = " ".join(original.split()[:4])  # the image alone
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        make(out, "dali")
    _one_line(exc, "no label", str(index))
    lines[1] = " ".join(original.split()[4:])  # the label alone
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        make(out, "dali")
    _one_line(exc, "no image", str(index))


def test_a_manifest_from_another_dataset(folder, shards, tmp_path) -> None:
    other_folder = tmp_path / "other"
    write_image_folder(other_folder, classes=CLASSES, per_class=3, shape=(20, 20), ext="png", seed=1)
    other = tmp_path / "other-shards"
    pack(other_folder, other, shard_size=SHARD, seed=3, progress=False)
    out = _copy(shards, tmp_path)
    shutil.copy(other / "manifest.json", out / "manifest.json")
    with pytest.raises(DataError) as exc:
        make(out, "dali")
    _one_line(exc, "another packing")


def test_a_checksum_mismatch_is_found_by_verify(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    tar = out / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # inside the first image: same size, same headers
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        verify(out)
    _one_line(exc, str(tar), "checksum")
    assert verify(shards) == len(list(shards.glob("*.tar")))


def test_an_undecodable_sample_is_one_line_on_both_backends(shards, tmp_path) -> None:
    out = _copy(shards, tmp_path)
    data = load_shards(out, "val")
    tar = Path(data.tars[0])
    raw = bytearray(tar.read_bytes())
    start = int(data.offsets[0])
    raw[start + 2:start + int(data.sizes[0])] = b"\0" * (int(data.sizes[0]) - 2)  # garbage after the JPEG magic
    tar.write_bytes(bytes(raw))
    with pytest.raises(DataError) as exc:  # DALI's decoder does not name the sample: the reference does
        epoch(make(out, "dali", "val"))
    assert "\n" not in str(exc.value) and "backend 'torchvision'" in str(exc.value) and str(out) in str(exc.value)
    with pytest.raises(DataError) as exc:
        epoch(make(out, "torchvision", "val"))
    text = str(exc.value)
    assert "\n" not in text and "000000000" in text and str(tar) in text, text


def test_even_shards_say_how_many_samples_each_epoch_leaves_out(folder, tmp_path, capsys) -> None:
    # Ranks read whole tar shards, so with even_shards (what distributed training uses) every rank stops at the
    # smallest rank's count: the samples left out are printed with the fix, not dropped silently. Five shards of
    # 4 samples (20 KB each) over 2 ranks: 12 and 8.
    out = tmp_path / "five"
    pack(folder, out, shard_size=20 << 10, seed=3, progress=False)
    counts = load_shards(out, "train").counts
    held = sorted(sum(counts[f] for f in files) for files in assign_files(counts, 2))
    assert held[0] < held[1]
    capsys.readouterr()
    make(out, "dali", shard_id=0, num_shards=2, even_shards=True)
    err = capsys.readouterr().err
    assert f"{sum(held) - 2 * held[0]} of {sum(held)} samples are left out" in err and "--shard-size" in err
    make(out, "dali", shard_id=1, num_shards=2, even_shards=True)  # one rank says it
    make(out, "dali", shard_id=0, num_shards=2, even_shards=False)
    assert "left out" not in capsys.readouterr().err


@pytest.mark.slow  # trains three short runs per backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupted_shards_run_resumes_to_the_straight_runs_weights(shards, tmp_path, backend) -> None:
    # The whole job on shards (fit, a SIGINT in the middle of epoch 1 and again in epoch 2, resume twice) ends with
    # the weights and metrics (epoch .. train_images) of the run that was never stopped, on the CPU, both backends.
    from helpers import signals

    from training import loop as run_mod
    from training.config import TrainConfig
    from training.loop.checkpoint import load_checkpoint

    def cfg(out: Path) -> TrainConfig:
        return TrainConfig(dataset="shards", data_dir=str(shards), image_size=32, model="resnet20", batch_size=4,
                           epochs=2, lr=0.05, warmup_epochs=0.5, augment="standard", mixup_alpha=0.2,
                           cutmix_alpha=1.0, drop_path=0.1, output=str(out), num_threads=1, patience=0,
                           device="cpu", backend=backend, tensorboard=False)

    straight, out = tmp_path / "straight", tmp_path / "chain"
    run_mod.fit(cfg(straight), log=lambda _line: None)
    with pytest.raises(run_mod.Interrupted):
        run_mod.fit(cfg(out), log=lambda _line: None, build=signals(train=[(0, 2)]))
    with pytest.raises(run_mod.Interrupted):
        run_mod.resume(out, log=lambda _line: None, build=signals(train=[(1, 3)]))
    run_mod.resume(out, log=lambda _line: None)
    a, b = (load_checkpoint(run / "last.pth")["model"] for run in (straight, out))
    assert all(torch.equal(a[key], b[key]) for key in a)
    columns = lambda run: [line.split(",")[:7] for line in (run / "metrics.csv").read_text().splitlines()]
    assert columns(out) == columns(straight)
