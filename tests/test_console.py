"""Issue #24: what the console says and what the run directory keeps of it — skipped data, interrupts, progress,
train.log — and outputs that say what ran."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_image_folder
from helpers import HostReads, StopAfter, signals

from training import loop as run_mod
from training.cli import _run_guarded, eval_main, main
from training.config import TrainConfig
from training.loop.checkpoint import load_checkpoint
from training.outputs import read_metrics

FOLDER = ["--dataset", "folder", "--model", "resnet20", "--batch-size", "4", "--num-threads", "1", "--image-size",
          "16", "--no-channels-last", "--backend", "dali", "--device", "cpu", "--epochs", "1",
          "--augment", "none"]


def invoke_main(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


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
    assert [line for line in (out / "train.log").read_text().splitlines() if line.startswith("warning:")] == notices
    assert evaluated.exit_code == 0, evaluated.output
    assert f"warning: val: skipped 1 empty, truncated or corrupt image files, e.g. {bad_val} (" in evaluated.stderr


def _tiny(out: Path, **changes) -> TrainConfig:
    base = {"dataset": "synthetic", "model": "resnet20", "batch_size": 16, "num_samples": 64, "epochs": 2,
            "lr": 0.05, "augment": "none", "output": str(out), "num_threads": 1, "device": "cpu",
            "channels_last": False}
    return TrainConfig(**(base | changes))


def test_ctrl_c_is_reported_as_an_interrupt_with_the_way_to_resume(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        _run_guarded(lambda: run_mod.fit(_tiny(out), log=lambda line: None, build=signals(train=[(1, 1)])))
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 130, err
    assert err[-1] == f"interrupted in epoch 2 after batch 2: last.pth saved; resume with: dali-train --resume {out}"
    assert not any(line.startswith("error:") for line in err), err


class FakeClock:
    """A clock that moves `tick` seconds each time it is read."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_progress_of_a_forty_step_epoch_is_shown_by_time_before_it_ends(tmp_path) -> None:
    """Without a terminal, a plain line every 30 s of the clock (here every third batch), then the validation's."""
    shown = io.StringIO()
    run = run_mod.build_run(_tiny(tmp_path, epochs=1, batch_size=4, num_samples=160, tensorboard=False))
    run_mod.train_epochs(run, StopAfter(10**9), log=lambda line: None, grid_tiles=0, clock=FakeClock(tick=10.0),
                         stream=shown)
    lines = shown.getvalue().splitlines()
    train = [line for line in lines if line.startswith("epoch 1/1: ")]
    val = [line for line in lines if line.startswith("epoch 1/1 val: ")]
    assert train and train[0].startswith("epoch 1/1: 3/40 batches, loss ") and "%" in train[0], lines
    assert all(" 40/40 " not in line for line in train) and len(train) >= 10, lines
    assert val and val[0].endswith("/8 batches"), lines


def test_each_refresh_of_the_training_figures_is_one_host_read() -> None:
    from test_step import _device_batches, _small_context

    from training.recipe import train_one_epoch

    counts, shown = [], []
    for due in (False, True):
        ctx, batches = _small_context(torch.device("cpu"), fused=False, mix=False), _device_batches(
            torch.device("cpu"), 6)
        with HostReads() as reads:
            train_one_epoch(ctx, batches, report_due=lambda position, due=due: due,
                            on_progress=lambda position, stats: shown.append(position))
        counts.append(reads.count)
    assert shown == [1, 2, 3, 4, 5, 6] and counts[1] - counts[0] == 6, (counts, shown)


def test_on_a_terminal_the_bar_shows_the_running_figures(tmp_path) -> None:
    from training.outputs import ProgressDisplay

    stream = io.StringIO()
    bar = ProgressDisplay(40, "epoch 1/2", stream=stream, clock=FakeClock(tick=0.5), tty=True)
    assert [bar.due() for _ in range(4)] == [False, True, False, True]  # about once a second
    bar.update(7, {"loss": 2.25, "acc": 0.125})
    bar.close()
    assert "epoch 1/2" in stream.getvalue() and "7/40" in stream.getvalue() and "loss=2.250" in stream.getvalue()


def test_train_log_holds_what_the_console_showed_and_a_resume_appends(tmp_path, capsys) -> None:
    out, shown = tmp_path / "run", []
    with pytest.raises(SystemExit):
        _run_guarded(lambda: run_mod.fit(_tiny(out), log=shown.append, build=signals(train=[(1, 1)])))
    shown.append(capsys.readouterr().err.strip().splitlines()[-1])  # the command's last line: the interrupt
    _run_guarded(lambda: run_mod.resume(out, log=shown.append))
    logged = (out / "train.log").read_text().splitlines()
    assert logged == shown, (logged, shown)
    firsts = ("dali-train:", "interrupted in epoch 2 after batch 2:", "best model (epoch")
    assert [next(f for f in firsts if line.startswith(f)) for line in logged if line.startswith(firsts)] == [
        "dali-train:", "interrupted in epoch 2 after batch 2:", "dali-train:", "best model (epoch"], logged
    assert sum(line.startswith("epoch ") for line in logged) == 2 and "resuming epoch 2 at batch 3/4" in logged


def test_config_yaml_holds_what_ran_and_a_resume_continues_it(tmp_path) -> None:
    """device auto, amp_dtype float16 on the CPU and num_threads 0 ran as cpu, bfloat16 (what autocast used) and
    the threads the loaders got; the checkpoint keeps the same config, so the resume is the same run."""
    out = tmp_path / "run"
    code, text = invoke_main(["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "32", "--num-samples",
                              "64", "--epochs", "1", "--augment", "none", "--no-channels-last", "--device", "auto",
                              "--amp-dtype", "float16", "--num-threads", "0", "--output", str(out)])
    assert code == 0, text
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["device"], saved["amp_dtype"]) == ("cpu", "bfloat16") and saved["num_threads"] >= 1, saved
    assert load_checkpoint(out / "last.pth")["config"] == saved
    assert "note: autocast on the CPU uses bfloat16" in text  # the option asked for float16
    code, text = invoke_main(["--resume", str(out), "--epochs", "2"])
    assert code == 0, text
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2]


def test_wall_time_in_summary_counts_every_process_of_a_resumed_run(tmp_path) -> None:
    out = tmp_path / "run"

    def slow_build(cfg, **kwargs):  # the first process spends 3 s more than the second
        time.sleep(3.0)
        return signals(train=[(0, 1)])(cfg, **kwargs)

    with pytest.raises(run_mod.Interrupted):
        run_mod.fit(_tiny(out, epochs=1), log=lambda line: None, build=slow_build)
    started = time.time()
    summary = run_mod.resume(out, log=lambda line: None)
    second = time.time() - started
    assert summary["wall_time_s"] > second + 2.5, (summary["wall_time_s"], second)
    assert json.loads((out / "summary.json").read_text())["wall_time_s"] == summary["wall_time_s"]


def test_the_lr_column_is_the_peak_lr_of_each_epoch(tmp_path) -> None:
    """With a one-epoch warmup the LR rises through epoch 1 (its peak at its last step) and falls after."""
    run = run_mod.build_run(_tiny(tmp_path, epochs=2, warmup_epochs=1.0, tensorboard=False))
    run_mod.train_epochs(run, StopAfter(10**9), log=lambda line: None, grid_tiles=0, stream=io.StringIO())
    steps = len(run.train_loader)
    rows = read_metrics(tmp_path / "metrics.csv")
    peaks = [max(run.ctx.lr_at(s) for s in range(e * steps, (e + 1) * steps)) for e in (0, 1)]
    assert [r["lr"] for r in rows] == pytest.approx(peaks) and peaks[0] > 2 * run.ctx.lr_at(0), (rows, peaks)


def test_help_loads_neither_torch_nor_dali() -> None:
    """--help answers in a fraction of a second: the command line imports torch and DALI only once it runs."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom training.cli import eval_main, main\n"
            "for command in (main, eval_main):\n    assert CliRunner().invoke(command, ['--help']).exit_code == 0\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'nvidia.dali', 'torchvision') if m in sys.modules)\n"
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_a_run_saved_on_cuda_continued_without_one_says_so_without_advising_an_option_resume_refuses(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = _tiny(out, device="cuda")  # config.yaml keeps the device a run resolved "auto" to
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    code, text = invoke_main(["--resume", str(out)])
    assert code == 2 and text.startswith(f"error: {out}: its run uses a CUDA device") and "--device" not in text, text


def test_the_header_prints_the_crop_a_folder_runs_not_the_presets_padding(tmp_path) -> None:
    write_image_folder(tmp_path / "ds", classes=("a", "b"), per_class=2, shape=(20, 24), ext="png")
    args = [a for a in FOLDER if a not in ("--augment", "none")]
    code, text = invoke_main([*args, "--augment", "standard", "--aug", "erase_p=0.25", "--data-dir",
                              str(tmp_path / "ds"), "--output", str(tmp_path / "run"), "--no-tensorboard"])
    assert code == 0, text
    (header,) = [line for line in text.splitlines() if line.startswith("dali-train:")]
    assert "crop_padding" not in header and "(random-resized crop, area 0.08-1, ratio 0.75-1.33)" in header, header
