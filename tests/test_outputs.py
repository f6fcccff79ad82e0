"""Run outputs: atomic writes that survive a crash between the temp file and the rename, and failed writes that
are one-line errors naming the file (a full disk), with the previous file intact."""

from __future__ import annotations

import errno
import os

import pytest

from dali_pipes import DaliTrainError
from training.outputs import files as outputs
from training.loop.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.loop.rundir import RunDir
from training.loop.signals import Interrupted

ROWS = [{"epoch": 1, "lr": 0.1, "train_loss": 2.0, "val_acc": 0.5, "not_a_column": 7}]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_metrics_csv_keeps_its_columns_and_reads_back() -> None:
    assert outputs.METRIC_FIELDS[:6] == ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


def test_a_crash_before_the_rename_leaves_the_previous_csv_and_no_temp_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.csv"
    outputs.write_rows(path, ROWS)
    before = path.read_text()
    monkeypatch.setattr(os, "replace", _full_disk)  # the crash: the temp file is written, the rename fails
    with pytest.raises(DaliTrainError) as failed:
        outputs.write_rows(path, ROWS * 2)
    message = str(failed.value)
    assert str(path) in message and "No space left" in message and len(message.splitlines()) == 1
    monkeypatch.undo()
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    rows = outputs.read_metrics(path)
    assert rows[0]["epoch"] == 1 and "not_a_column" not in rows[0]


@pytest.mark.parametrize("write, name", [
    (lambda d: outputs.write_summary(d, {"epochs_run": 1}), "summary.json"),
    (lambda d: RunDir(d).write_config(TrainConfig()), "config.yaml"),
])
def test_summary_and_config_writes_fail_in_one_line_and_keep_the_old_file(tmp_path, monkeypatch, write,
                                                                         name) -> None:
    (tmp_path / name).write_text("old\n")
    monkeypatch.setattr(os, "replace", _full_disk)
    with pytest.raises(DaliTrainError, match=f"{name}: cannot write it"):
        write(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / name).read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [name]
    write(tmp_path)
    assert (tmp_path / name).read_text() != "old\n"


def test_a_checkpoint_write_killed_before_its_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the process dying between fsync and rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the temp file is removed


def test_interrupted_carries_where_the_run_stopped(tmp_path) -> None:
    e = Interrupted.at("stopped", run_dir=tmp_path, epoch=2, batch=3, signum=15)
    assert (e.exit_code, e.run_dir, e.epoch, e.batch, e.signum) == (128 + 15, tmp_path, 2, 3, 15)
    assert e.where() == "stopped in epoch 2 after batch 3"
    assert Interrupted.at("x", run_dir=tmp_path, epoch=2, batch=None, signum=None).where() == "stopped after epoch 2"
    assert Interrupted.at("x", run_dir=tmp_path, epoch=None, batch=None, signum=None).exit_code == 128 + 2


def test_curves_have_a_title_an_lr_panel_and_whole_epoch_ticks() -> None:
    # #24: curves.png had no title, no LR panel and ticks at 1.5 epochs.
    import matplotlib.pyplot as plt

    rows = [{"epoch": e, "lr": lr, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_acc": 0.2 * e,
             "val_acc": 0.18 * e} for e, lr in ((1, 0.05), (2, 0.1), (3, 0.02))]
    fig = outputs.curves_figure(rows, "resnet20 on synthetic — run-1")
    try:
        assert fig.get_suptitle() == "resnet20 on synthetic — run-1"
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["loss", "accuracy", "learning rate"]
        lr_axis = fig.axes[2]
        assert list(lr_axis.lines[0].get_ydata()) == [0.05, 0.1, 0.02]
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def test_skipped_and_damaged_files_are_kept_once_each_in_the_order_reported(tmp_path) -> None:
    from dali_pipes.notices import Skipped
    from training.outputs.skipped import SkippedData

    said = []
    kept = SkippedData(say=said.append)
    kept(Skipped("train", "files", ("/d/a.txt", "/d/b.txt")))
    kept(Skipped("val", "files", ("/d/b.txt", "/d/c.txt")))
    kept(Skipped("train", "JPEG files", ("/d/b.txt",), action="decoded"))
    assert kept.paths == ["/d/a.txt", "/d/b.txt", "/d/c.txt"] and kept.damaged == ["/d/b.txt"]
    kept.keep_in(tmp_path, record=lambda line: None)
    assert (tmp_path / "skipped.txt").read_text() == "/d/a.txt\n/d/b.txt\n/d/c.txt\n"
    assert (tmp_path / "damaged.txt").read_text() == "/d/b.txt\n" and len(said) == 3
