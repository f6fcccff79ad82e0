"""TensorBoard events of a run: metrics.csv's figures once per epoch, the loss every `log_every` steps, the first
batch's grid; a resumed run reads as one run; `--no-tensorboard` writes none and trains the same."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter

from dali_pipes import ConfigError
from training import loop as run_mod
from training.outputs import METRIC_FIELDS, TOP5_FIELDS, read_metrics
from training.loop import folder
from training.loop.checkpoint import load_checkpoint
from training.cli import main
from training.config import TrainConfig
from training.outputs.tensorboard_log import FIRST_BATCH, STEP_LOSS, EventLog, TensorBoardLog, open_event_log, tag

EVERY = 2  # steps between two per-step points; 4 steps per epoch below
# figures that depend on the machine's speed, not on the training
TIMING = {"images_per_s", "data_time_s", "epoch_time_s", "host_rss_peak_mib"}


def tiny_config(out: Path, **changes) -> TrainConfig:
    base = dict(dataset="synthetic", model="resnet20", batch_size=64, num_samples=256, epochs=2, lr=0.05,
                warmup_epochs=1.0, augment="weak", mix_prob=1.0, output=str(out), num_threads=2, patience=0)
    return TrainConfig(**(base | changes))


def train(cfg: TrainConfig, stop_after: int = 10**9, **options) -> run_mod.Run:
    run = run_mod.build_run(cfg, run_dir=Path(cfg.output))
    run_mod.train_epochs(run, StopAfter(stop_after), log=lambda *_: None, log_every=EVERY, **options)
    return run


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def points(acc, name: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(name)]


def event_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if folder.EVENTS.match(p.name))


@pytest.fixture(scope="module")
def on_and_off(tmp_path_factory):
    """The same tiny run trained with TensorBoard and the grid, and with neither."""
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("tb")
    (root / "on").mkdir(), (root / "off").mkdir()
    on = train(tiny_config(root / "on"))
    off = train(tiny_config(root / "off", tensorboard=False), grid_tiles=0)
    return on, off


@pytest.mark.slow
def test_events_hold_metrics_csv_per_epoch_and_the_loss_every_few_steps(on_and_off) -> None:
    on, _ = on_and_off
    rows = read_metrics(on.run_dir / "metrics.csv")
    assert len(event_files(on.run_dir)) == 1
    acc = events(on.run_dir)
    # the CPU has no CUDA figures; 10 classes have top-5 accuracy
    columns = [c for c in METRIC_FIELDS + TOP5_FIELDS if not np.isnan(rows[0][c])]
    assert set(acc.Tags()["scalars"]) == {tag(c) for c in columns} | {STEP_LOSS}
    assert tag("val_acc") == "accuracy/val_acc" and tag("host_rss_peak_mib") == "resources/host_rss_peak_mib"
    for column in columns:  # one point per epoch, at the step it ended on, holding metrics.csv's number (% there)
        got = points(acc, tag(column))
        percent = 100 if tag(column).startswith("accuracy/") else 1
        assert [step for step, _ in got] == [4, 8], column
        assert [value for _, value in got] == pytest.approx([percent * r[column] for r in rows], rel=1e-6), column
    steps = points(acc, STEP_LOSS)
    assert [step for step, _ in steps] == [2, 4, 6, 8]
    # equal windows of 2 full batches: their mean over an epoch is the epoch's training loss
    for epoch, row in enumerate(rows):
        window = [v for s, v in steps if 4 * epoch < s <= 4 * (epoch + 1)]
        assert np.mean(window) == pytest.approx(row["train_loss"], rel=1e-5)
    (image,) = acc.Images(FIRST_BATCH)
    assert image.step == 0
    from PIL import Image

    with Image.open(on.run_dir / "first_batch.png") as png:
        assert (image.width, image.height) == png.size  # the same picture as the run directory's


@pytest.mark.slow
def test_no_tensorboard_and_no_grid_write_nothing_and_train_the_same(on_and_off) -> None:
    on, off = on_and_off
    assert event_files(off.run_dir) == [] and not (off.run_dir / "first_batch.png").exists()
    assert (on.run_dir / "first_batch.png").is_file()
    for (name, a), b in zip(on.model.state_dict().items(), off.model.state_dict().values()):
        assert torch.equal(a, b), name
    rows_on = read_metrics(on.run_dir / "metrics.csv")
    rows_off = read_metrics(off.run_dir / "metrics.csv")
    for a, b in zip(rows_on, rows_off, strict=True):
        same = [c for c in METRIC_FIELDS if c not in TIMING and not np.isnan(a[c])]
        assert {c: a[c] for c in same} == {c: b[c] for c in same}
    assert torch.equal(on.ctx.mixer.generator.get_state(), off.ctx.mixer.generator.get_state())


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_reads_as_one_run(on_and_off, tmp_path) -> None:
    on, _ = on_and_off
    cfg = tiny_config(tmp_path)
    with pytest.raises(run_mod.Interrupted):
        train(cfg, stop_after=7)  # 4 steps and one end-of-epoch poll per epoch: batch 2 of epoch 2, step 6
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 6)
    grid = (tmp_path / "first_batch.png").stat().st_mtime_ns
    # what a process killed after that checkpoint would have left: points past step 6
    from torch.utils.tensorboard import SummaryWriter

    time.sleep(1.1)  # event files are read in name order, whose first field is the second they were created
    with SummaryWriter(str(tmp_path)) as crashed:
        crashed.add_scalar(STEP_LOSS, 99.0, 8)
        crashed.add_scalar(tag("val_acc"), 99.0, 8)
    time.sleep(1.1)
    resumed = run_mod.build_run(cfg, run_dir=tmp_path)
    resumed.load_state(state)
    run_mod.train_epochs(resumed, StopAfter(10**9), log=lambda *_: None, log_every=EVERY)

    assert len(event_files(tmp_path)) == 3
    acc = events(tmp_path)
    for name in acc.Tags()["scalars"]:  # one point per step, in order, none of the dead process's
        steps = [s for s, _ in points(acc, name)]
        assert steps == sorted(set(steps)), name
        assert 99.0 not in [v for _, v in points(acc, name)], name
    rows = read_metrics(tmp_path / "metrics.csv")
    assert points(acc, tag("val_acc")) == [(s, pytest.approx(100 * r["val_acc"], rel=1e-6))
                                           for s, r in zip((4, 8), rows)]
    # the interrupt fell on a point, so every window is the straight run's
    assert points(acc, STEP_LOSS) == [(s, pytest.approx(v, rel=1e-4)) for s, v in points(events(on.run_dir),
                                                                                          STEP_LOSS)]
    assert [v for _, v in points(acc, tag("val_acc"))] == [v for _, v in points(events(on.run_dir), tag("val_acc"))]
    assert len(acc.Images(FIRST_BATCH)) == 1  # drawn by the new run, not again on resume
    assert (tmp_path / "first_batch.png").stat().st_mtime_ns == grid


class Recorder:
    """Stands in for a SummaryWriter: records the scalars it is given."""

    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))


def test_the_step_loss_is_the_mean_since_the_previous_point_and_the_bar_still_updates() -> None:
    writer, bar = Recorder(), []
    hook = TensorBoardLog(writer).progress(100, also=lambda position, stats: bar.append(position), every=2)
    hook(2, {"loss": 3.0, "acc": 0.1, "images": 128})  # the engine's running means over this epoch (part)
    hook(3, {"loss": 9.0, "acc": 0.1, "images": 192})  # the display's refresh between two points: no point
    hook(4, {"loss": 2.0, "acc": 0.2, "images": 256})  # the last 128 images averaged 1.0
    assert writer.scalars == [(STEP_LOSS, 3.0, 102), (STEP_LOSS, 1.0, 104)] and bar == [2, 3, 4]
    assert EventLog().progress(0, None) is None  # off: the engine reads nothing it would not read anyway


def test_accuracy_is_in_percent_like_the_console_and_curves_png() -> None:
    writer = Recorder()
    writer.flush = lambda: None
    TensorBoardLog(writer).epoch(8, {"epoch": 2, "lr": 0.05, "train_acc": 0.25, "val_acc": 0.5, "val_acc5": 0.875,
                                     "ema_val_acc": 0.625, "val_loss": 1.5})
    assert sorted(writer.scalars) == sorted([
        ("schedule/epoch", 2, 8), ("schedule/lr", 0.05, 8), ("accuracy/train_acc", 25.0, 8),
        ("accuracy/val_acc", 50.0, 8), ("accuracy/val_acc5", 87.5, 8), ("accuracy/ema_val_acc", 62.5, 8),
        ("loss/val_loss", 1.5, 8)])


def test_without_the_tensorboard_package_a_run_says_so_once_and_goes_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` sees when it is missing
    said = []
    log = open_event_log(tmp_path, enabled=True, resume_step=0, log=said.append)
    log.epoch(4, {"epoch": 1, "val_acc": 0.5})
    log.close()
    assert len(said) == 1 and "tensorboard is not installed" in said[0] and "\n" not in said[0]
    assert list(tmp_path.iterdir()) == []


def test_the_option_is_saved_and_a_config_without_it_loads() -> None:
    assert TrainConfig.from_dict({"model": "resnet20"}).tensorboard is True  # a config.yaml from before the option
    assert TrainConfig(tensorboard=False).to_dict()["tensorboard"] is False
    with pytest.raises(ConfigError, match="--tensorboard"):
        TrainConfig.from_dict({"tensorboard": "sometimes"})
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())  # unwrapped
    assert "--tensorboard / --no-tensorboard" in text and "[default: tensorboard]" in text


def test_event_files_and_the_grid_are_a_runs_outputs(tmp_path) -> None:
    (tmp_path / "events.out.tfevents.1795966386.host.1.0").write_bytes(b"")
    (tmp_path / "first_batch.png").write_bytes(b"")
    assert folder.classify(tmp_path) == folder.LEFTOVERS  # not somebody else's folder
    (tmp_path / "config.yaml").write_text("model: resnet20\n")
    assert folder.classify(tmp_path) == folder.UNSTARTED
    folder.clear_outputs(tmp_path, keep=("config.yaml",))  # a restart from config.yaml starts the events over
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
