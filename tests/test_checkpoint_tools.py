"""The tools that start from a checkpoint (dali-eval, dali-prune, dali-quantize) on a model trained on an image
folder at 64 px: the input side travels with the checkpoint's config into every model they build, so a folder
model is evaluated, pruned and quantized at the side it was trained at, and a CIFAR-stem model whose config says
224 px is refused by each tool as dali-train refuses it."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_image_folder

from dali_pipes import ConfigError
from training.loop.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from training.tools.checkpoint_tools import ValModel, read_checkpoint
from training.cli import eval_main, prune_main, quantize_main
from training.config import TrainConfig
from training.tools.quantize_int8 import load_quantized
from training.loop import fit
from training.outputs import read_metrics

SIDE = 64  # the largest side a CIFAR-stem model accepts (models.CIFAR_STEM_MAX_SIZE)
DATA = ["--batch-size", "8", "--num-threads", "2"]


def invoke(cmd, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cmd, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple:
    """best.pth of a one-epoch ResNet-20 on a two-class JPEG folder (80x72 images cropped to 64 px)."""
    root = tmp_path_factory.mktemp("folder-ckpt")
    write_image_folder(root / "data", classes=("a", "b"), per_class=8, shape=(72, 80), ext="jpg")
    cfg = TrainConfig(dataset="folder", data_dir=str(root / "data"), model="resnet20", image_size=SIDE, epochs=1,
                      batch_size=8, augment="none", mixup_alpha=0.0, cutmix_alpha=0.0, num_threads=2, patience=0,
                      output=str(root / "run"))
    summary = fit(cfg, log=lambda *_: None)
    return root / "run" / "best.pth", summary, root


@pytest.mark.slow  # trains (the module's checkpoint)
def test_dali_eval_measures_a_folder_model_at_its_training_side(folder_run) -> None:
    ckpt, summary, _ = folder_run
    state, cfg = read_checkpoint(ckpt, device="cpu", num_threads=2)
    val = ValModel.from_checkpoint(state, ckpt, cfg)
    assert val.image_size == SIDE and next(iter(val.val_loader))[0].shape[-2:] == (SIDE, SIDE)
    code, text = invoke(eval_main, ["--checkpoint", str(ckpt), "--device", "cpu", *DATA])
    assert code == 0, text
    result = json.loads(text.strip().splitlines()[-1])
    assert result["val_images"] == 16
    assert result["val_acc"] == pytest.approx(summary["best_reloaded_val_acc"], abs=1e-6)


@pytest.mark.slow  # trains (the module's checkpoint)
def test_dali_quantize_exports_calibrates_and_reloads_at_the_training_side(folder_run, tmp_path) -> None:
    ckpt, _, _ = folder_run
    out = tmp_path / "q"
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(out), "--no-latency",
                                        "--calibration-batches", "1", *DATA])
    assert code == 0, text
    r = json.loads((out / "quantize.json").read_text())
    assert r["image_size"] == SIDE and r["val_images"] == 16 and r["calibration_images"] == 8
    gm, state = load_quantized(out / "model_int8.pth")
    assert state["image_size"] == SIDE
    with torch.no_grad():
        assert gm(torch.zeros(3, 3, SIDE, SIDE)).shape == (3, 2)


@pytest.mark.slow  # trains (the module's checkpoint) and fine-tunes
def test_dali_prune_fine_tunes_and_evaluates_at_the_training_side(folder_run, tmp_path) -> None:
    ckpt, _, _ = folder_run
    out = tmp_path / "p"
    code, text = invoke(prune_main, ["--checkpoint", str(ckpt), "--output", str(out), "--device", "cpu",
                                     "--amount", "0.3", "--finetune-epochs", "1", *DATA])
    assert code == 0, text
    rows = read_metrics(out / "prune.csv", key="stage")
    assert [r["stage"] for r in rows] == [0, 1] and abs(rows[1]["sparsity"] - 0.3) <= 0.01
    stage_cfg = load_checkpoint(out / "stage1-0.3" / "stage.pth")["config"]
    assert (stage_cfg["dataset"], stage_cfg["image_size"]) == ("folder", SIDE)
    code, text = invoke(eval_main, ["--checkpoint", str(out / "pruned.pth"), "--device", "cpu", *DATA])
    assert code == 0, text
    assert json.loads(text.strip().splitlines()[-1])["val_acc"] == pytest.approx(rows[1]["val_acc"], abs=1e-6)


@pytest.mark.slow  # trains (the module's checkpoint)
def test_a_cifar_stem_checkpoint_whose_config_says_224_px_is_refused_by_every_tool(folder_run, tmp_path) -> None:
    ckpt, _, _ = folder_run
    state = load_checkpoint(ckpt)
    state["config"] = {**state["config"], "image_size": 0}  # 0: the folder default, 224 px
    relabelled = tmp_path / "at224.pth"
    save_checkpoint(state, relabelled)
    _, cfg = read_checkpoint(relabelled)
    with pytest.raises(ConfigError, match="CIFAR stem"):
        model_from_checkpoint(state, relabelled, cfg, 2, image_size=224)
    for cmd, extra in ((eval_main, ["--device", "cpu"]),
                       (prune_main, ["--device", "cpu", "--output", str(tmp_path / "p")]),
                       (quantize_main, ["--no-latency", "--output", str(tmp_path / "q")])):
        code, text = invoke(cmd, ["--checkpoint", str(relabelled), *DATA, *extra])
        lines = [line for line in text.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and "CIFAR stem" in lines[0] and "Traceback" not in text, text


@pytest.mark.slow  # trains (the module's checkpoint)
def test_dali_quantize_stopped_says_so_and_the_same_command_redoes_it(folder_run, tmp_path) -> None:
    # A SIGTERM (a job's time limit) mid-way: one line, exit 143, and the folder it left (whole files, no
    # quantize.json) is redone by the same command; a folder holding anything else is still refused.
    import signal
    import subprocess
    import sys
    import time

    ckpt, _, _ = folder_run
    out = tmp_path / "q"
    proc = subprocess.Popen([sys.executable, "-c", "from training.cli import quantize_main; quantize_main()",
                             "--checkpoint", str(ckpt), "--output", str(out), "--calibration-batches", "1", *DATA],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the latency timing (compiling both models) runs after both files are written
        if "calibrating" in line:
            break
    while not (out / "model_int8.pth").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # while it compiles both models to time them (seconds)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [err.strip().splitlines()[0]], err  # one line
    assert err.startswith("error: SIGTERM: interrupted before quantize.json was written"), err
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.pth", "model_int8.pth"]
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(out), "--no-latency",
                                        "--calibration-batches", "1", *DATA])
    assert code == 0 and (out / "quantize.json").is_file(), text
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, text = invoke(quantize_main, ["--checkpoint", str(ckpt), "--output", str(tmp_path / "other"),
                                        "--no-latency", *DATA])
    assert code == 2 and "is not empty" in text
