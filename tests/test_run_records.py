"""Issue #24's outputs: top-5 accuracy (metrics.csv, summary.json, dali-eval), the best K checkpoints of a run
(--keep-best), and dali-quantize's float accuracy beside dali-eval's for the same best.pth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_image_folder
from test_step import _device_batches, _small_context

from training import loop
from training.cli import eval_main
from training.config import TrainConfig
from training.outputs import read_metrics
from training.recipe import dominant_labels, evaluate, train_one_epoch


def tiny(out: Path, **changes) -> TrainConfig:
    """A synthetic run of 10 classes, seconds on a CPU."""
    base = {"dataset": "synthetic", "model": "resnet20", "batch_size": 32, "num_samples": 128, "epochs": 2,
            "lr": 0.05, "augment": "none", "output": str(out), "num_threads": 1, "device": "cpu",
            "channels_last": False, "tensorboard": False}
    return TrainConfig(**(base | changes))


def quiet(line: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------- top-5 accuracy


def test_val_top5_counts_the_label_among_the_five_largest_logits_and_is_absent_for_five_classes() -> None:
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3],  # label 0: top-1
                           [9.0, 8, 7, 6, 5, 4, 3],  # label 4: top-5, not top-1
                           [9.0, 8, 7, 6, 5, 4, 3]])  # label 6: neither
    labels = torch.tensor([0, 4, 6])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    val = evaluate(torch.nn.Identity(), batches, device=torch.device("cpu"), amp_dtype=None, channels_last=False)
    assert (val["val_acc"], val["val_acc5"], val["val_images"]) == pytest.approx((1 / 3, 2 / 3, 3))
    five = evaluate(torch.nn.Identity(), [(logits[:, :5], torch.tensor([0, 4, 1]))], device=torch.device("cpu"),
                    amp_dtype=None, channels_last=False)
    assert "val_acc5" not in five  # with 5 classes or fewer top-5 is 100% by definition: not reported


def test_train_top5_counts_the_dominant_label_of_a_mixed_target_as_top1_does() -> None:
    cpu = torch.device("cpu")
    ctx = _small_context(cpu, fused=False, mix=True)
    ctx.lr_at = lambda step: 0.0  # the weights stay as they were: the logits can be computed again below
    ctx.clip_grad = 0.0
    seen = {}
    stats = train_one_epoch(ctx, _device_batches(cpu, 1, batch=64),
                            on_first_batch=lambda images, labels, targets: seen.update(x=images, y=labels, t=targets))
    with torch.autocast("cpu", dtype=ctx.amp_dtype):
        logits = ctx.model(seen["x"]).float()
    dominant = dominant_labels(seen["y"], seen["t"])
    assert not torch.equal(dominant, seen["y"])  # some samples are mixed towards their partner's label
    in_top5 = (logits.topk(5, 1).indices == dominant[:, None]).any(1)
    assert stats["correct"] == int((logits.argmax(1) == dominant).sum())
    assert stats["correct5"] == int(in_top5.sum()) and stats["correct5"] > stats["correct"]


def test_top5_is_in_metrics_summary_and_dali_eval_where_there_are_more_than_five_classes(tmp_path) -> None:
    out = tmp_path / "run"
    summary = loop.fit(tiny(out), log=quiet)
    rows = read_metrics(out / "metrics.csv")
    assert all(0.0 <= r["train_acc5"] <= 1.0 and r["val_acc"] <= r["val_acc5"] <= 1.0 for r in rows), rows
    assert 0.0 < summary["best_reloaded_val_acc5"] <= 1.0
    assert json.loads((out / "summary.json").read_text())["best_reloaded_val_acc5"] == summary[
        "best_reloaded_val_acc5"]
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--num-threads", "1"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output.strip().splitlines()[-1])
    assert evaluated["val_acc5"] == pytest.approx(summary["best_reloaded_val_acc5"])


def test_two_classes_have_no_top5_anywhere(tmp_path) -> None:
    write_image_folder(tmp_path / "ds", classes=("a", "b"), per_class=4, shape=(20, 24), ext="png")
    out = tmp_path / "run"
    summary = loop.fit(tiny(out, dataset="folder", data_dir=str(tmp_path / "ds"), image_size=16, batch_size=4,
                            epochs=1), log=quiet)
    assert "train_acc5" not in (out / "metrics.csv").read_text() and "best_reloaded_val_acc5" not in summary
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--num-threads", "1"])
    assert result.exit_code == 0 and "val_acc5" not in result.output, result.output
