"""dali-prune and dali-quantize on the CPU: sparsity reached, pruned models train and evaluate, int8 size and
accuracy against float, interrupted pruning continues exactly, bad input refused with one line."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter

from benchmarks.compress_example import write_noisy_cifar
from dali_pipes import ConfigError, DataError
from training.tools import prune as prune_mod
from training.tools import prune_masks as masks
from training.loop.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from training.cli import eval_main, prune_main, quantize_main
from training.config import TrainConfig
from training.recipe.factory import data_loader
from training.recipe.models import create_model
from training.tools.quantize_int8 import MODES, load_quantized
from training.loop import fit
from training.outputs import read_metrics
from training.loop.signals import Interrupted

DATA = ["--num-threads", "2", "--batch-size", "128"]


def invoke(cmd, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cmd, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """best.pth of a 3-epoch ResNet-20 on a small real-like task: 2,000/1,000 images in the CIFAR-10 layout, the
    synthetic class patterns at a third of their contrast under heavy noise (near 97%, not 100%), so that
    quantization error can show in the accuracy."""
    root = tmp_path_factory.mktemp("compress")
    write_noisy_cifar(root / "data")
    cfg = TrainConfig(dataset="cifar10", data_dir=str(root / "data"), model="resnet20", epochs=3, batch_size=64,
                      lr=0.05, warmup_epochs=0.5, augment="weak", mixup_alpha=0.0, cutmix_alpha=0.0,
                      drop_path=0.0, label_smoothing=0.0, output=str(root / "run"), num_threads=2, patience=0)
    summary = fit(cfg, log=lambda *_: None)
    assert 0.85 <= summary["best_reloaded_val_acc"] < 1.0, summary  # learnable, and not trivially perfect
    return root / "run" / "best.pth", summary


# ------------------------------------------------------------------------------------------------- pruning units


@pytest.mark.slow
@pytest.mark.parametrize("method", masks.METHODS)
@pytest.mark.parametrize("model_name", ["resnet20", "resnet18"])
def test_each_stage_reaches_the_requested_sparsity_and_keeps_what_was_pruned(method, model_name) -> None:
    torch.manual_seed(0)
    model = create_model(model_name).to(memory_format=torch.channels_last)
    targets = masks.prunable(model, method)
    before = None
    for amount in (0.1, 0.2, 0.3, 0.5, 0.9):
        masks.prune_to(targets, method, amount)
        reached, _ = masks.sparsity(targets)
        assert abs(reached - amount) <= 0.01, (method, amount, reached)
        zero = torch.cat([masks.effective_weight(m, n).flatten() == 0 for m, n in targets])
        if before is not None:
            assert bool(zero[before].all()), "a pruned weight came back"
        before = zero
    if method == "ln-structured":
        for m, n in targets:  # whole filters: every output channel is all zero or untouched
            w = masks.effective_weight(m, n).flatten(1)
            channel_zero = (w == 0).all(1)
            assert bool(((w != 0).any(1) | channel_zero).all())
            assert channel_zero.sum() >= 1
        assert not torch.nn.utils.prune.is_pruned(model.fc), "the classifier must keep all its rows"


def test_making_masks_permanent_changes_no_weight() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    targets = masks.prunable(model, "l1-unstructured")
    masks.prune_to(targets, "l1-unstructured", 0.4)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    effective = [masks.effective_weight(m, n).clone() for m, n in targets]
    masks.make_permanent(targets)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert all(torch.equal(e, m.weight) for e, (m, _) in zip(effective, targets))
    with torch.no_grad():
        assert torch.equal(model(x), masked)
    assert create_model("resnet20").load_state_dict(model.state_dict())  # a plain state dict again


@pytest.mark.parametrize("text", ["0", "1", "0.2,1.0", "-0.1", "1.5", "0.3,0.2", "0.2,0.2", "a,b", "", "nan"])
def test_bad_amounts_are_refused(text) -> None:
    with pytest.raises(ConfigError, match="--amount"):
        prune_mod.parse_amounts(text)
    code, out = invoke(prune_main, ["--checkpoint", "unused.pth", "--amount", text, "--output", "unused"])
    assert code == 2 and out.startswith("error: --amount") and "Traceback" not in out, out


def test_the_method_and_mode_choices_are_the_modules_constants() -> None:
    choices = {cmd.name: {p.name: tuple(p.type.choices) for p in cmd.params if hasattr(p.type, "choices")}
               for cmd in (prune_main, quantize_main)}
    assert choices["prune-main"]["method"] == masks.METHODS and choices["quantize-main"]["mode"] == MODES
    code, out = invoke(prune_main, ["--checkpoint", "unused.pth", "--method", "l2-random", "--output", "unused"])
    assert code == 2 and "--method" in out and all(m in out for m in masks.METHODS), out


# ------------------------------------------------------------------------------------------------- dali-prune


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_gradual_pruning_fine_tunes_each_stage_and_writes_a_plain_pruned_checkpoint(trained, tmp_path) -> None:
    ckpt, _ = trained
    out = tmp_path / "prune"
    code, text = invoke(prune_main, ["--checkpoint", str(ckpt), *DATA, "--amount", "0.2,0.4", "--finetune-epochs",
                                     "1", "--output", str(out)])
    assert code == 0, text
    rows = read_metrics(out / "prune.csv", key="stage")
    assert [r["stage"] for r in rows] == [0, 1, 2]
    assert [r["amount"] for r in rows] == [0.0, 0.2, 0.4]
    for r in rows:
        assert abs(r["sparsity"] - r["amount"]) <= 0.01, r
    assert rows[2]["nonzero_params"] < rows[1]["nonzero_params"] < rows[0]["nonzero_params"] == \
        rows[0]["total_params"]
    assert (out / "prune.png").stat().st_size > 0
    # prune.log keeps what the console showed: the header, each stage's epoch lines, the rows, the last line
    logged = (out / "prune.log").read_text()
    assert logged.startswith("dali-prune: ") and "stage 1 (0.2): epoch 1/1" in logged
    assert "stage 2 (0.4): epoch 1/1" in logged and logged.splitlines()[-1].startswith("done in ")
    # each stage trained (one epoch over every training image) through dali-train's loop
    for stage in ("stage1-0.2", "stage2-0.4"):
        metrics = (out / stage / "metrics.csv").read_text().splitlines()
        assert len(metrics) == 2 and "train_images" in metrics[0]
        assert int(float(metrics[1].split(",")[metrics[0].split(",").index("train_images")])) == 2000
    # The pruned model still classifies (chance: 0.1). After one fine-tuning epoch on 2,000 noisy images the figure
    # depends on the augmentation draws (which change with the DALI batch size), so the floor is six times chance
    # rather than near the trained model's accuracy.
    assert rows[2]["val_acc"] >= 0.6, rows
    assert rows[2]["val_loss"] < rows[2]["val_loss_before_finetune"], rows  # and fine-tuning helped
    # pruned.pth: a plain checkpoint with exact zeros, evaluated by dali-eval to the figure in prune.csv
    state = load_checkpoint(out / "pruned.pth")
    assert not any(k.endswith(("_orig", "_mask")) for k in state["model"])
    assert state["pruning"]["sparsity"] == pytest.approx(rows[2]["sparsity"])
    code, text = invoke(eval_main, ["--checkpoint", str(out / "pruned.pth"), "--device", "cpu", *DATA])
    assert code == 0, text
    assert json.loads(text.strip().splitlines()[-1])["val_acc"] == pytest.approx(rows[2]["val_acc"])
    # a finished output directory is not overwritten
    code, text = invoke(prune_main, ["--checkpoint", str(ckpt), *DATA, "--amount", "0.2,0.4", "--finetune-epochs",
                                     "1", "--output", str(out)])
    assert code == 2 and "finished" in text and "Traceback" not in text


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_an_interrupted_pruning_run_continues_to_the_weights_of_a_straight_one(trained, tmp_path) -> None:
    ckpt, _ = trained
    pcfg = prune_mod.PruneConfig(amounts=(0.2, 0.5), method="l1-global", finetune_epochs=2)
    data = {"num_threads": 2, "batch_size": 128}
    prune_mod.run_prune(ckpt, tmp_path / "straight", pcfg, device="cpu", log=lambda *_: None, **data)

    # Stop in stage 2, epoch 1, after 3 of its 16 steps (last.pth is written mid-epoch). The stop source is polled
    # after every step and once at each epoch's end: stage 1 (2 epochs of 16 steps) takes 34 polls, so the 37th
    # is stage 2's third step.
    with pytest.raises(Interrupted, match="run the same dali-prune command") as stopped:
        prune_mod.run_prune(ckpt, tmp_path / "resumed", pcfg, device="cpu", log=lambda *_: None,
                            stop=StopAfter(37), **data)
    e = stopped.value
    assert (e.run_dir.name, e.epoch, e.batch, e.signum) == ("stage2-0.5", 1, 3, signal.SIGTERM)
    assert e.exit_code == 128 + signal.SIGTERM
    assert len(read_metrics(tmp_path / "resumed" / "prune.csv", key="stage")) == 2  # stage 0 and stage 1 done
    assert not (tmp_path / "resumed" / "pruned.pth").exists()
    rows = prune_mod.run_prune(ckpt, tmp_path / "resumed", pcfg, device="cpu", log=lambda *_: None, **data)
    assert [r["stage"] for r in rows] == [0, 1, 2]
    a = load_checkpoint(tmp_path / "straight" / "pruned.pth")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "pruned.pth")["model"]
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-5
    straight_rows = read_metrics(tmp_path / "straight" / "prune.csv", key="stage")
    assert [r["val_acc"] for r in rows] == pytest.approx([r["val_acc"] for r in straight_rows])
    # the same --output with other settings is refused, naming the record
    with pytest.raises(ConfigError, match="other settings"):
        prune_mod.run_prune(ckpt, tmp_path / "resumed", prune_mod.PruneConfig(amounts=(0.3,)), device="cpu",
                            log=lambda *_: None, **data)


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_prune_refuses_an_occupied_output_and_a_checkpoint_of_another_architecture(trained, tmp_path) -> None:
    ckpt, _ = trained
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, text = invoke(prune_main, ["--checkpoint", str(ckpt), "--output", str(occupied), *DATA])
    assert code == 2 and "not a dali-prune run" in text and (occupied / "notes.txt").read_text() == "mine"

    mislabelled = tmp_path / "mislabelled.pth"
    state = load_checkpoint(ckpt)
    state["config"] = {**state["config"], "model": "resnet18"}  # resnet20 weights, resnet18 named
    save_checkpoint(state, mislabelled)
    for cmd, extra in ((prune_main, []), (quantize_main, ["--no-latency"])):
        code, text = invoke(cmd, ["--checkpoint", str(mislabelled), "--output", str(tmp_path / cmd.name), *DATA,
                                  *extra])
        assert code == 1 and "do not fit model resnet18" in text and "Traceback" not in text, text
        assert len(text.strip().splitlines()) <= 2  # the header line at most, then the one-line error


# ------------------------------------------------------------------------------------------------- dali-quantize


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_static_int8_is_under_30_percent_of_the_float_file_and_within_a_point(trained, tmp_path) -> None:
    ckpt, summary = trained
    out = tmp_path / "q"
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(out), *DATA,
                                        "--latency-repeats", "5"])
    assert code == 0, text
    r = json.loads((out / "quantize.json").read_text())
    assert r["mode"] == "static" and r["calibration_images"] == 2000  # 16 batches: the whole training split
    assert r["float_bytes"] == (out / "model_fp32.pth").stat().st_size
    assert r["int8_bytes"] == (out / "model_int8.pth").stat().st_size
    assert r["int8_bytes"] <= 0.30 * r["float_bytes"], r
    # The run evaluated under its bf16 autocast, dali-quantize evaluates the float model in fp32: a few of the 1,000
    # validation images near the decision boundary may change sides, nothing more.
    assert r["float_acc"] == pytest.approx(summary["best_reloaded_val_acc"], abs=0.005)
    assert abs(r["float_acc"] - r["int8_acc"]) <= 0.01, r
    for name in ("float", "int8"):
        for b in (1, 64):
            assert 0 < r[f"{name}_latency_ms_b{b}"] < 10_000
    assert "CPU latency, batch 64" in text and "model file" in text
    # the int8 file rebuilds the same model every time, and it tracks the float model
    a, state = load_quantized(out / "model_int8.pth")
    b, _ = load_quantized(out / "model_int8.pth")
    cfg = checkpoint_config(state, out / "model_int8.pth", batch_size=500, num_threads=2)
    x, _ = next(iter(data_loader(cfg, torch.device("cpu"), "val")))
    with torch.no_grad():
        qa, qb = a(x), b(x)
        ref = create_model("resnet20")
        ref.load_state_dict(load_checkpoint(out / "model_fp32.pth")["model"])
        fa = ref.eval()(x)
    assert torch.equal(qa, qb)
    assert float((qa.argmax(1) == fa.argmax(1)).float().mean()) >= 0.97  # on 500 validation images
    # every conv/linear weight is stored as int8
    assert sum(v.numel() for v in state["tensors"].values() if v.dtype == torch.int8) >= 0.99 * sum(
        p.numel() for n, p in ref.named_parameters() if n.endswith("weight") and p.ndim > 1)


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_dynamic_int8_needs_no_calibration(trained, tmp_path) -> None:
    ckpt, _ = trained
    out = tmp_path / "d"
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(out), "--mode", "dynamic",
                                        "--no-latency", *DATA])
    assert code == 0, text
    r = json.loads((out / "quantize.json").read_text())
    assert r["mode"] == "dynamic" and r["calibration_images"] == 0
    assert "float_latency_ms_b1" not in r
    assert r["int8_bytes"] <= 0.30 * r["float_bytes"] and abs(r["float_acc"] - r["int8_acc"]) <= 0.01, r
    _, state = load_quantized(out / "model_int8.pth")
    assert state["mode"] == "dynamic"


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
@pytest.mark.parametrize("args, expect", [
    (["--quant-backend", "qnnpack"], "--quant-backend='qnnpack' is not supported"),
    (["--quant-backend", "fbgemm"], "--quant-backend='fbgemm' is not supported"),
    (["--calibration-batches", "0"], "--calibration-batches=0 is invalid"),
    (["--mode", "qat"], "Invalid value for '--mode'"),
])
def test_quantize_refuses_bad_options_in_one_line(trained, tmp_path, args, expect) -> None:
    ckpt, _ = trained
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(tmp_path / "q"), *args])
    assert code == 2 and expect in text and "Traceback" not in text, text
    assert not (tmp_path / "q").exists()


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_quantize_refuses_an_occupied_output_and_untrusted_int8_files(trained, tmp_path) -> None:
    ckpt, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(tmp_path / "busy"), *DATA])
    assert code == 2 and "not empty" in text and (tmp_path / "busy" / "x").read_text() == "keep"

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil_int8.pth"
    torch.save({"format": "dali-train-int8/1", "config": {}, "num_classes": 10, "mode": "static",
                "tensors": Evil(), "qparams": []}, evil)
    with pytest.raises(DataError, match="evil_int8.pth"):
        load_quantized(evil)
    assert not marker.exists()
    with pytest.raises(DataError, match="format dali-train-int8/1 expected"):
        load_quantized(ckpt)  # a float checkpoint is not an int8 file


@pytest.mark.slow  # trains (the module's checkpoint) or fine-tunes
def test_an_int8_file_whose_tensors_do_not_fit_its_graph_is_refused(trained, tmp_path) -> None:
    ckpt, _ = trained
    out = tmp_path / "q"
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(out), "--no-latency",
                                        "--calibration-batches", "1", *DATA])
    assert code == 0, text
    state = torch.load(out / "model_int8.pth", weights_only=True)
    name = next(k for k, v in state["tensors"].items() if v.dtype == torch.int8)
    state["tensors"][name] = state["tensors"][name][:1]
    torch.save(state, out / "cut.pth")
    with pytest.raises(DataError, match="do not fit"):
        load_quantized(out / "cut.pth")
    state = torch.load(out / "model_int8.pth", weights_only=True)
    state["config"]["model"] = "tv_resnet18"
    torch.save(state, out / "relabelled.pth")
    with pytest.raises(DataError, match="do not fit a static tv_resnet18"):
        load_quantized(out / "relabelled.pth")
    assert math.isfinite(json.loads((out / "quantize.json").read_text())["int8_loss"])
