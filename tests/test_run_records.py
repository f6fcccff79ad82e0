"""Issue #24's outputs: top-5 accuracy (metrics.csv, summary.json, dali-eval), the best K checkpoints of a run
(--keep-best), and dali-quantize's float accuracy beside dali-eval's for the same best.pth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_image_folder
from helpers import signals
from test_step import _device_batches, _small_context

from training import loop
from training.cli import eval_main
from training.config import TrainConfig
from training.loop import folder
from training.loop.checkpoint import load_checkpoint
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


@pytest.mark.slow  # trains
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


@pytest.mark.slow  # trains
def test_two_classes_have_no_top5_anywhere(tmp_path) -> None:
    write_image_folder(tmp_path / "ds", classes=("a", "b"), per_class=4, shape=(20, 24), ext="png")
    out = tmp_path / "run"
    summary = loop.fit(tiny(out, dataset="folder", data_dir=str(tmp_path / "ds"), image_size=16, batch_size=4,
                            epochs=1), log=quiet)
    assert "train_acc5" not in (out / "metrics.csv").read_text() and "best_reloaded_val_acc5" not in summary
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--num-threads", "1"])
    assert result.exit_code == 0 and "val_acc5" not in result.output, result.output


# ------------------------------------------------------------------------------------------------- --keep-best


def test_the_best_epochs_rank_by_the_better_weights_and_ties_keep_the_earlier_epoch() -> None:
    from training.loop.checkpoint import best_epochs, epoch_score

    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.6,
                                                                           "ema_val_acc": 0.8},
               {"epoch": 4, "val_acc": 0.7}, {"epoch": 5, "val_acc": 0.2}]
    assert best_epochs(history, 3) == [3, 2, 4] and best_epochs(history, 1) == [3]
    assert epoch_score(history[2]) == (0.8, "ema") and epoch_score(history[1]) == (0.7, "model")


def _kept(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.name.startswith("best")}


def _expected(run_dir: Path, k: int) -> list[str]:
    """The K best epochs' files by metrics.csv, best first (ties: the earlier epoch)."""
    rows = sorted(read_metrics(run_dir / "metrics.csv"), key=lambda r: (-r["val_acc"], r["epoch"]))
    return [f"best-epoch{int(r['epoch']):03d}.pth" for r in rows[:k]]


@pytest.mark.slow  # trains
def test_keep_best_keeps_the_k_best_epochs_and_best_pth_is_the_best_of_them(tmp_path) -> None:
    out = tmp_path / "run"
    summary = loop.fit(tiny(out, epochs=5, keep_best=2), log=quiet)
    expected = _expected(out, 2)
    assert _kept(out) == {"best.pth", *expected} and summary["best_checkpoints"] == expected
    assert (out / "best.pth").samefile(out / expected[0])  # a link, not a second copy
    for name in expected:
        assert load_checkpoint(out / name)["epoch"] == int(name[len("best-epoch"):-len(".pth")])
    assert folder.classify(out) == folder.RUN
    (out / "last.pth").unlink()
    assert folder.classify(out) == folder.RESULTS_ONLY  # results, never restarted over


@pytest.mark.slow  # trains
def test_keep_best_one_is_best_pth_alone(tmp_path) -> None:
    out = tmp_path / "run"
    summary = loop.fit(tiny(out, epochs=2), log=quiet)
    assert _kept(out) == {"best.pth"} and "best_checkpoints" not in summary


@pytest.mark.slow  # trains
def test_a_resumed_run_keeps_the_same_best_checkpoints_as_the_uninterrupted_one(tmp_path) -> None:
    """Stopped twice (mid-epoch and between epochs, with a stale file of a killed process lying there), resumed:
    the files kept are those of the straight run, none lost, none left over."""
    straight = tmp_path / "straight"
    loop.fit(tiny(straight, epochs=5, keep_best=3), log=quiet)
    out = tmp_path / "run"
    with pytest.raises(loop.Interrupted):
        loop.fit(tiny(out, epochs=5, keep_best=3), log=quiet, build=signals(train=[(1, 2)]))
    with pytest.raises(loop.Interrupted):
        loop.resume(out, log=quiet, build=signals(val=[(1, 0)]))  # after epoch 3 (its 2nd validation)
    # what a process killed after writing epoch 4's file, before its last.pth, leaves behind
    (out / "best-epoch004.pth").write_bytes((out / "last.pth").read_bytes())
    loop.resume(out, log=quiet)
    assert _kept(out) == _kept(straight) == {"best.pth", *_expected(straight, 3)}
    assert (out / "best.pth").samefile(out / _expected(out, 3)[0])
    for name in _kept(out):
        a, b = load_checkpoint(out / name), load_checkpoint(straight / name)
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_keep_best_is_checked_and_does_not_make_another_run() -> None:
    from dali_pipes import ConfigError
    from training.loop.rundir import differences

    with pytest.raises(ConfigError, match="--keep-best"):
        TrainConfig(keep_best=0)
    assert differences(TrainConfig(keep_best=3), TrainConfig()) == []


def test_a_kept_epochs_file_is_evaluated_with_the_weights_that_ranked_it() -> None:
    from training.loop.checkpoint import chosen_weights

    state = {"epoch": 2, "batch": 0, "best_epoch": 3, "best_weights": "model", "model": {}, "ema": {},
             "history": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6, "ema_val_acc": 0.7}]}
    assert chosen_weights(state, Path("run/best-epoch002.pth")) == "ema"
    assert chosen_weights(state, Path("run/last.pth")) == "model"  # not a best checkpoint: the trained weights
    assert chosen_weights({**state, "best_epoch": 2, "best_weights": "ema"}, Path("run/best.pth")) == "ema"
    assert chosen_weights(state, Path("run/best-epoch002.pth"), "model") == "model"


# ------------------------------------------------------------------------------------------------- dali-quantize


@pytest.mark.slow  # trains
def test_dali_quantize_reports_the_float_accuracy_dali_eval_reports_and_names_float32s(tmp_path) -> None:
    """Reproduced on a 3-epoch ResNet-20 (1,000 val images): dali-eval and summary.json 95.00% under the run's
    bfloat16 autocast, dali-quantize 94.90% in float32 — one image; channels-last and the batch size move only the
    loss's 7th digit. quantize.json now holds both, the float32 figure being the one int8 is compared with."""
    from training.cli import quantize_main

    out = tmp_path / "run"
    summary = loop.fit(tiny(out), log=quiet)
    data = ["--num-threads", "1", "-b", "32"]
    evaluated = CliRunner().invoke(eval_main, ["--checkpoint", str(out), *data])
    assert evaluated.exit_code == 0, evaluated.output
    ev = json.loads(evaluated.output.strip().splitlines()[-1])
    quantized = CliRunner().invoke(quantize_main, ["--checkpoint", str(out), "--output", str(tmp_path / "q"),
                                                   "--no-latency", "--calibration-batches", "2", *data])
    assert quantized.exit_code == 0, quantized.output
    q = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert ev["amp_dtype"] == q["autocast_dtype"] == "bfloat16" and ev["val_images"] == q["val_images"]
    assert q["float_acc_autocast"] == ev["val_acc"] == summary["best_reloaded_val_acc"]
    assert q["float_loss_autocast"] == pytest.approx(ev["val_loss"], rel=1e-6)
    assert q["float_loss"] != q["float_loss_autocast"]  # float32 is another measurement of the same weights
    assert "bfloat16 autocast" in quantized.output and "as dali-eval measures it" in quantized.output


def test_the_note_names_the_precision_when_the_two_accuracies_differ() -> None:
    from training.tools.quantize import precision_note

    note = precision_note({"float_acc": 0.949, "float_acc_autocast": 0.95, "autocast_dtype": "bfloat16",
                           "val_images": 1000})
    assert note.startswith("note: the float model scores 94.90% in float32") and "95.00% under the run's bfloat16" \
        in note and "a net 1 of the 1,000 validation images" in note, note
