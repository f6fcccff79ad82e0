"""`dali-train` / `dali-eval` end to end on the CPU: learning, outputs, resume equivalence, signals, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import StopAfter

from dali_pipes import DataError
from training import loop as run_mod
from training.outputs import read_metrics
from training.loop.checkpoint import load_checkpoint, save_checkpoint
from training.cli import _run_guarded, eval_main, main
from training.config import TrainConfig
from training.recipe import lr_factor

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "64", "--num-threads", "2"]


def tiny_config(out: Path, **changes) -> TrainConfig:
    base = dict(dataset="synthetic", model="resnet20", batch_size=64, num_samples=384, epochs=3, lr=0.05,
                warmup_epochs=1.0, augment="weak", mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5,
                drop_path=0.1, output=str(out), num_threads=2, patience=0)
    return TrainConfig(**(base | changes))


def invoke(args: list[str], cmd=main):
    result = CliRunner().invoke(cmd, args)
    return result.exit_code, result.output


@pytest.mark.slow
def test_learns_the_synthetic_task_and_writes_the_run_directory(tmp_path) -> None:
    out = tmp_path / "run"
    code, text = invoke([*TINY, "--num-samples", "2000", "--epochs", "3", "--augment", "weak", "--lr", "0.05",
                         "--warmup-epochs", "1", "--output", str(out)])
    assert code == 0, text
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.csv", "last.pth", "best.pth", "curves.png",
                                               "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_reloaded_val_acc"] >= 0.9, summary
    assert "training on the CPU" in text and "AMP bfloat16" in text
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["host_rss_peak_mib"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["num_samples"] == 2000 and saved["model"] == "resnet20"
    # dali-eval of the best model reports what the run reported for it
    code, text = invoke(["--checkpoint", str(out), "--device", "cpu"], cmd=eval_main)
    assert code == 0, text
    assert json.loads(text.strip().splitlines()[-1])["val_acc"] == pytest.approx(summary["best_reloaded_val_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dali", "torchvision"])
def test_a_run_interrupted_mid_epoch_and_resumed_lands_where_the_straight_run_lands(tmp_path, backend) -> None:
    straight = run_mod.build_run(tiny_config(tmp_path / "a", backend=backend))
    run_mod.train_epochs(straight, StopAfter(10**9), log=lambda *_: None)

    cfg = tiny_config(tmp_path / "b", backend=backend)
    interrupted = run_mod.build_run(cfg)
    with pytest.raises(run_mod.Interrupted, match="--resume") as stopped:
        # 6 steps per epoch, one poll per step plus one at the end of each epoch: the 9th poll is batch 2 of epoch 2
        run_mod.train_epochs(interrupted, StopAfter(9), log=lambda *_: None)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    state = load_checkpoint(tmp_path / "b" / "last.pth")
    assert (state["epoch"], state["batch"]) == (1, 2)

    resumed = run_mod.build_run(cfg, run_dir=tmp_path / "b")
    resumed.load_state(state)
    run_mod.train_epochs(resumed, StopAfter(10**9), log=lambda *_: None)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), name
    rows_a = read_metrics(tmp_path / "a" / "metrics.csv")
    rows_b = read_metrics(tmp_path / "b" / "metrics.csv")
    assert [r["val_acc"] for r in rows_a] == [r["val_acc"] for r in rows_b]


@pytest.mark.slow
def test_resume_through_the_cli_extends_a_finished_run_and_refuses_a_second_finish(tmp_path) -> None:
    out = tmp_path / "run"
    assert invoke([*TINY, "--num-samples", "256", "--epochs", "1", "--output", str(out)])[0] == 0
    code, text = invoke(["--resume", str(out)])
    assert code == 2 and "finished its 1 epochs" in text and "Traceback" not in text
    code, text = invoke(["--resume", str(out), "--lr", "0.5"])
    assert code == 2 and "--lr" in text
    code, text = invoke(["--resume", str(out), "--epochs", "2"])
    assert code == 0, text
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2]
    (out / "summary.json").unlink()  # as if killed during the final evaluation: resume only finishes it
    code, text = invoke(["--resume", str(out)])
    assert code == 0 and json.loads((out / "summary.json").read_text())["epochs_run"] == 2, text


@pytest.mark.slow
def test_early_stopping_stops_when_val_accuracy_stalls(tmp_path) -> None:
    out = tmp_path / "run"
    code, text = invoke([*TINY, "--num-samples", "256", "--epochs", "5", "--lr", "1e-9", "--warmup-epochs", "0",
                         "--patience", "1", "--output", str(out)])
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs_run"] == 2 and "early stopping" in text


@pytest.mark.slow
def test_sigterm_leaves_a_loadable_last_checkpoint_and_says_how_to_resume(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", *TINY, "--num-samples", "20000", "--epochs", "3", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # inside the first epoch
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert time.time() - sent < 60  # seconds normally; generous for a shared, overloaded CI machine
    assert f"dali-train --resume {out}" in err and "Traceback" not in err
    state = load_checkpoint(out / "last.pth")
    assert state["epoch"] == 0 and state["batch"] > 0


@pytest.mark.slow
def test_config_file_keys_are_option_names_and_the_command_line_wins(tmp_path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("num-samples: 128\nepochs: 1\nlabel_smoothing: 0.2\nmodel: resnet20\ndataset: synthetic\n"
                        "batch_size: 999\nlr: 5e-2\n")
    out = tmp_path / "run"
    code, text = invoke(["--config", str(cfg_file), "--batch-size", "64", "--num-threads", "2", "--output", str(out)])
    assert code == 0, text
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["batch_size"], saved["label_smoothing"], saved["num_samples"], saved["lr"]) == (64, 0.2, 128, 0.05)


@pytest.mark.parametrize("args, option", [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "-4"], "--batch-size"), (["--mixup-alpha", "-1"],
                                                                                "--mixup-alpha"),
    (["--cutmix-alpha", "-0.5"], "--cutmix-alpha"), (["--label-smoothing", "1.0"], "--label-smoothing"),
    (["--model", "vgg16"], "--model"), (["--augment", "heavy"], "--augment"), (["--lr", "0"], "--lr"),
    (["--drop-path", "1.5"], "--drop-path"), (["--mix-prob", "2"], "--mix-prob"), (["--seed", "-1"], "--seed"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"), (["--amp-dtype", "int8"], "--amp-dtype"),
])
def test_bad_options_are_refused_naming_the_option(tmp_path, args: list[str], option: str) -> None:
    code, text = invoke([*TINY, "--output", str(tmp_path / "run"), *args])
    assert code == 2 and option in text and "Traceback" not in text, text
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def test_an_existing_run_is_never_overwritten(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("precious\n")
    (out / "last.pth").write_bytes(b"a checkpoint")
    code, text = invoke([*TINY, "--num-samples", "64", "--epochs", "1", "--output", str(out)])
    assert code == 2 and f"--resume {out}" in text and "already holds a run" in text
    assert (out / "metrics.csv").read_text() == "precious\n" and (out / "last.pth").read_bytes() == b"a checkpoint"
    (out / "last.pth").unlink()  # some outputs of a run, but nothing to resume or restart it from
    code, text = invoke([*TINY, "--num-samples", "64", "--epochs", "1", "--output", str(out)])
    assert code == 2 and "holds a run's results (metrics.csv (unreadable)) but no last.pth" in text, text
    assert "--resume" not in text
    assert (out / "metrics.csv").read_text() == "precious\n"


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path) -> None:
    garbage = tmp_path / "last.pth"
    good = tmp_path / "good.pth"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}, "epoch": 1}, good)
    rng = np.random.default_rng(0)
    for payload in [rng.bytes(300) for _ in range(5)] + [good.read_bytes()[:n] for n in (10, 100, 400)]:
        garbage.write_bytes(payload)  # random bytes, and a real checkpoint cut short at several lengths
        code, text = invoke(["--resume", str(garbage)])
        assert code == 1 and str(garbage) in text and "Traceback" not in text, text
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    code, text = invoke(["--checkpoint", str(foreign)], cmd=eval_main)
    assert code == 1 and "not a dali-train checkpoint" in text
    with pytest.raises(DataError):
        load_checkpoint(tmp_path / "missing.pth")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"format": "dali-train/1", "config": {}, "model": Evil(), "epoch": 0}, path)
    with pytest.raises(DataError, match="evil.pth"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_cifar_offline_fails_fast_with_where_to_put_it(tmp_path, monkeypatch) -> None:
    # A mirror nothing answers on (the discard port of this machine: connection refused at once) is what an
    # offline machine sees: the real download path fails, with where to put the files.
    monkeypatch.setenv("DALI_TRAIN_CIFAR_MIRROR", "http://127.0.0.1:9/cifar/")
    code, text = invoke(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                         "--output", str(tmp_path / "run")])
    assert code == 1 and "cifar-10-batches-py" in text and "Traceback" not in text, text
    assert "downloading http://127.0.0.1:9/cifar/cifar-10-python.tar.gz failed" in text


def test_atomic_checkpoint_write_leaves_no_partial_file(tmp_path) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_file(tmp_path) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, path)
    big = {"config": {}, "model": {"w": torch.zeros(250_000)}, "epoch": 2}
    save_checkpoint(big, tmp_path / "reference.pth")  # the size the failed file needed
    needed = (tmp_path / "reference.pth").stat().st_size
    assert needed > 250_000 * 4
    (tmp_path / "reference.pth").unlink()
    # A real failing write: the process may not write files over 200 kB (RLIMIT_FSIZE), as on a disk near full.
    script = ("import resource, sys, torch\nfrom dali_pipes import DaliTrainError\n"
              "from training.loop.checkpoint import save_checkpoint\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))\n"
              "state = {'config': {}, 'model': {'w': torch.zeros(250_000)}, 'epoch': 2}\n"
              "try:\n    save_checkpoint(state, sys.argv[1])\n"
              "except DaliTrainError as e:\n    print(e)\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = proc.stdout.strip()
    assert len(message.splitlines()) == 1 and str(path) in message and "unexpected pos" not in message, message
    assert "the write failed (File too large)" in message and f"needs {needed:,} bytes" in message, message
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # and the temp file is gone


@pytest.mark.parametrize("raised, line", [
    (run_mod.SecondSignal, "aborted by a second interrupt"),  # a second signal while a safe stop was pending
    (KeyboardInterrupt, "interrupted; what was saved before is kept"),  # a first Ctrl-C where no handler waits
])
def test_only_a_second_signal_is_reported_as_one(capsys, raised, line) -> None:
    def interrupted():
        raise raised

    with pytest.raises(SystemExit) as exited:
        _run_guarded(interrupted)
    err = capsys.readouterr().err
    assert exited.value.code == 130 and err.startswith(f"error: {line}") and len(err.splitlines()) == 1, err


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine_to_zero() -> None:
    f = [lr_factor(s, total_steps=100, warmup_steps=10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(0.5, abs=0.02) and lr_factor(100, total_steps=100, warmup_steps=10) == 0.0


@pytest.mark.slow
def test_no_amp_runs_the_same_step(tmp_path) -> None:
    out = tmp_path / "run"
    code, text = invoke([*TINY, "--num-samples", "128", "--epochs", "1", "--no-amp", "--no-channels-last",
                         "--mix-mode", "elem", "--output", str(out)])
    assert code == 0 and "FP32" in text, text
    # the run trained in float32 with per-sample mixing: finite figures, no scaler at work, the choices saved
    (row,) = read_metrics(out / "metrics.csv")
    assert row["train_images"] == 128 and np.isfinite(row["train_loss"]) and row["nonfinite_losses"] == 0
    assert row["skipped_steps"] == 0 and 0.0 <= row["val_acc"] <= 1.0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["amp"], saved["channels_last"], saved["mix_mode"]) == (False, False, "elem")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["amp_dtype"] is None and summary["epochs_run"] == 1
    state = load_checkpoint(out / "last.pth")
    assert state["step"] == 2 and "scheduler" not in state  # 128 images in batches of 64
