"""Issue #24: what the console says and what the run directory keeps of it — skipped data, interrupts, progress,
train.log — and outputs that say what ran."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_image_folder
from helpers import signals

from training import loop as run_mod
from training.cli import _run_guarded, eval_main, main
from training.config import TrainConfig

FOLDER = ["--dataset", "folder", "--model", "resnet20", "--batch-size", "4", "--num-threads", "1", "--image-size",
          "16", "--no-channels-last", "--backend", "dali", "--device", "cpu", "--epochs", "1",
          "--augment", "none"]


def _folder_with_corrupt_images(root: Path) -> tuple[Path, Path]:
    """An image folder with one truncated JPEG in each split."""
    write_image_folder(root, classes=("a", "b"), per_class=2, shape=(20, 24), ext="jpg")
    bad = root / "train" / "b" / "truncated.jpg", root / "val" / "a" / "truncated.jpg"
    for path in bad:
        path.write_bytes((root / "train" / "a" / "0.jpg").read_bytes()[:100])
    return bad


def test_skipped_images_are_printed_whatever_the_warning_filters_and_listed_in_the_run(tmp_path) -> None:
    bad, bad_val = _folder_with_corrupt_images(tmp_path / "ds")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore, or a library that silences warnings
        trained = CliRunner().invoke(main, [*FOLDER, "--data-dir", str(tmp_path / "ds"), "--output", str(out)])
        evaluated = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--device", "cpu", "--num-threads",
                                                   "1"])
    assert trained.exit_code == 0, trained.output
    notices = [line for line in trained.stderr.splitlines() if line.startswith("warning:")]
    assert [n.split(" (")[0] for n in notices] == [
        f"warning: train: skipped 1 empty, truncated or corrupt image files, e.g. {bad}",
        f"warning: val: skipped 1 empty, truncated or corrupt image files, e.g. {bad_val}"], trained.stderr
    (header,) = [line for line in trained.output.splitlines() if line.startswith("dali-train:")]
    assert "2 files skipped (listed in skipped.txt)" in header, header
    assert (out / "skipped.txt").read_text() == f"{bad}\n{bad_val}\n"
    assert json.loads((out / "summary.json").read_text())["skipped_files"] == 2
    assert evaluated.exit_code == 0, evaluated.output
    assert f"warning: val: skipped 1 empty, truncated or corrupt image files, e.g. {bad_val} (" in evaluated.stderr


def _tiny(out: Path, **changes) -> TrainConfig:
    base = dict(dataset="synthetic", model="resnet20", batch_size=16, num_samples=64, epochs=2, lr=0.05,
                augment="none", output=str(out), num_threads=1, device="cpu", channels_last=False)
    return TrainConfig(**(base | changes))


def test_ctrl_c_is_reported_as_an_interrupt_with_the_way_to_resume(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        _run_guarded(lambda: run_mod.fit(_tiny(out), log=lambda line: None, build=signals(train=[(1, 1)])))
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 130, err
    assert err[-1] == f"interrupted in epoch 2 after batch 2: last.pth saved; resume with: dali-train --resume {out}"
    assert not any(line.startswith("error:") for line in err), err
