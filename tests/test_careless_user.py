"""Options and files a careless user gives: a diverging LR, a batch larger than the dataset, another run's
checkpoint copied into a run folder, a crafted checkpoint, an infinite option value; and (second pass) damaged
image data in a DALI training split, YAML aliases and duplicate keys, a seed out of range, NaN weights handed to
the tools, a preview written where it cannot be, a batch whose step does not fit in memory. Each stops with one
line that names the cause and the way out, or runs within what the data and the machine can hold."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner

from dali_pipes import ConfigError, DataError
from training.loop.checkpoint import load_checkpoint
from training.cli import eval_main, main
from training.outputs.figures import DIVERGED_LOSS_FACTOR, divergence
from training.recipe.models import create_model
from training.outputs.files import read_metrics, write_rows
from training.loop.signals import Diverged

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "32", "--num-threads", "2",
        "--augment", "none", "--no-channels-last"]


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def figures(**changes) -> dict:
    base = {"train_loss": 2.0, "val_loss": 2.1, "nonfinite_losses": 0, "train_steps": 10}
    return {**base, **changes}


@pytest.mark.parametrize(("changes", "verdict"), [
    ({}, None),
    ({"nonfinite_losses": 4}, None),  # a few overflowing steps (the fp16 scaler skips them) are not divergence
    ({"nonfinite_losses": 5, "train_loss": math.nan}, "5 of its 10 training losses were inf/nan"),
    ({"val_loss": math.nan}, "the validation loss is nan"),
    ({"val_loss": math.inf}, "the validation loss is inf"),
    ({"train_loss": 8.3e15}, "mean training loss 8.3e+15"),
    ({"train_loss": DIVERGED_LOSS_FACTOR * math.log(10) * 0.99}, None),
])
def test_divergence_is_told_by_the_epochs_figures(changes, verdict) -> None:
    why = divergence(figures(**changes), num_classes=10)
    assert (why is None) if verdict is None else (verdict in why), why


def test_divergence_advice_fits_the_options_in_use(tmp_path) -> None:
    plain = str(Diverged.during(3, "why", lr=1000.0, clip_grad=0.0, float16=False, run_dir=tmp_path))
    assert "epoch 3: why" in plain and "--lr (this run's: 1000)" in plain and "--clip-grad 1.0" in plain
    assert "bfloat16" not in plain and "no checkpoint was written" in plain
    (tmp_path / "last.pth").write_bytes(b"x")
    fp16 = str(Diverged.during(1, "why", lr=0.5, clip_grad=1.0, float16=True, run_dir=tmp_path))
    assert "--amp-dtype bfloat16" in fp16 and "--clip-grad" not in fp16 and "keeps the run from before" in fp16


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["--amp", "--no-amp"])
def test_a_diverging_lr_stops_the_run_with_one_line_under_amp_and_without(tmp_path, amp) -> None:
    out = tmp_path / "run"
    code, text = invoke([*TINY, "--num-samples", "96", "--epochs", "3", "--lr", "1000", amp, "--output", str(out)])
    assert code == 1, text
    (line,) = [t for t in text.splitlines() if t.startswith("error:")]
    assert "training diverged in epoch 1" in line and "--lr (this run's: 1000)" in line, text
    assert "Traceback" not in text and not (out / "summary.json").exists() and not (out / "last.pth").exists()


def test_a_batch_larger_than_the_dataset_holds_only_the_dataset() -> None:
    from dali_pipes import create_loader

    loader = create_loader(dataset="synthetic", split="train", num_samples=40, batch_size=100_000, backend="dali",
                           device=torch.device("cpu"), augment="weak", num_threads=1)
    assert loader.dali_batch_size == 40  # the DALI graph is sized for 40 samples, not 100,000
    loader.set_epoch(0)
    (batch,) = [images.shape[0] for images, _ in loader]
    assert batch == 40 and len(loader) == 1


def test_metrics_rewritten_on_resume_keep_integer_columns(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    write_rows(path, [{"epoch": 1, "lr": 0.1, "train_images": 96, "nonfinite_losses": 0, "train_loss": 2.5}])
    write_rows(path, read_metrics(path))  # what a resume does with the earlier rows
    with open(path, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["epoch"], row["train_images"], row["nonfinite_losses"], row["lr"]) == ("1", "96", "0", "0.1")
    assert math.isnan(read_metrics(path)[0]["val_loss"])  # an empty cell


def test_a_crafted_checkpoint_is_refused_without_torchs_unsafe_advice(tmp_path) -> None:
    import os

    path = tmp_path / "last.pth"
    torch.save({"format": "dali-train/1", "x": os.getcwd}, path)
    code, text = invoke(["--resume", str(path)])
    assert code == 1 and "holds objects other than tensors" in text and "getcwd" in text, text
    assert "weights_only" not in text and len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize(("option", "value"), [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "inf")])
def test_an_infinite_option_is_refused_in_words_that_exclude_it(option, value) -> None:
    code, text = invoke([*TINY, option, value])
    assert code == 2 and f"{option}={value} is invalid: expected a finite number" in text and "inf]" not in text


@pytest.mark.slow
def test_a_checkpoint_copied_in_from_another_run_is_refused_and_changes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    code, text = invoke([*TINY, "--num-samples", "64", "--epochs", "1", "--output", str(out)])
    assert code == 0, text
    # dali-eval's batch: 0 is not "the default" but an invalid value
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size=0 is invalid" in result.output, result.output
    other = tmp_path / "other"
    shutil.copytree(out, other)
    # another run's checkpoint: the same files, but it trained another model with another batch size
    state = load_checkpoint(out / "last.pth")
    state["config"] = {**state["config"], "model": "resnet18", "batch_size": 16}
    torch.save(state, other / "last.pth")
    before = (other / "config.yaml").read_text()
    code, text = invoke(["--resume", str(other), "--epochs", "2"])
    assert code == 1 and "not this folder's run" in text and "model 'resnet18' (config.yaml: 'resnet20')" in text
    assert "batch_size 16" in text and (other / "config.yaml").read_text() == before
    # an extension's config.yaml (only epochs differ: written before its first checkpoint) is the same run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "epochs": 5}, sort_keys=False))
    code, text = invoke(["--resume", str(out), "--epochs", "2"])
    assert code == 0, text
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2]


def test_skipped_data_is_one_warning_line_on_the_command_line(capsys) -> None:
    import warnings

    from dali_pipes.notices import Skipped, report_skipped
    from training.cli import _run_guarded

    def work() -> None:
        report_skipped(Skipped("train", "corrupt image files", ("/d/a/1.jpg", "/d/a/2.jpg")))
        warnings.warn("something else", UserWarning, stacklevel=2)

    with pytest.warns(UserWarning, match="something else") as record:  # other warnings keep Python's handling
        _run_guarded(work)
    assert capsys.readouterr().err == "warning: train: skipped 2 corrupt image files, e.g. /d/a/1.jpg\n"
    assert [w.category for w in record] == [UserWarning]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notice is not a warning under a command: no filter silences it
        _run_guarded(work)
    assert capsys.readouterr().err == "warning: train: skipped 2 corrupt image files, e.g. /d/a/1.jpg\n"


@pytest.mark.slow
def test_an_ablation_arm_that_shortens_the_run_gets_the_default_warmup_of_its_own_length(tmp_path) -> None:
    from training import ablate

    study, out = tmp_path / "short.yaml", tmp_path / "study"
    study.write_text("arms:\n  short:\n    epochs: 1\n")
    # the base's default warmup is 2 epochs (5% of 40); the arm's is 5% of its one epoch, not the base's 2
    result = CliRunner().invoke(ablate.main, ["--study", str(study), *TINY, "--num-samples", "64", "--epochs", "40",
                                              "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "short" / "seed0" / "config.yaml").read_text())
    assert (saved["epochs"], saved["warmup_epochs"]) == (1, 0.05)
    # a warmup given on the command line is the user's: an arm shorter than it is refused before anything runs
    result = CliRunner().invoke(ablate.main, ["--study", str(study), *TINY, "--epochs", "40", "--warmup-epochs",
                                              "2", "--output", str(tmp_path / "other")])
    assert result.exit_code == 2 and "--warmup-epochs=2.0 is invalid: longer than the run (--epochs 1)" in \
        result.output, result.output


def test_a_binary_config_file_is_one_line(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    code, text = invoke(["--config", str(path)])
    assert code == 2 and text.strip() == f"error: --config {path}: not a text file (byte 0 is not UTF-8); give a " \
        "YAML file", text
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00binary")  # a run folder whose config.yaml was overwritten
    code, text = invoke(["--resume", str(run)])
    assert code == 1 and "config.yaml: unreadable" in text and "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------------------------------
# Second pass (#25): nothing lost. A resume never deletes what a run produced, never rewinds over later results,
# never trains on data that is not the run's; a stop signal from the terminal, the job scheduler or a closed session
# saves the run wherever it lands.

def snapshot(folder) -> dict[str, bytes]:
    """Every file of a run folder (but the lock) with its bytes: what "nothing was changed" compares."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".dali-train.lock"}


def finished_results(out) -> None:
    """A run folder as a finished 2-epoch run leaves it once its checkpoints are removed to save space."""
    from training.config import TrainConfig
    from training.loop.rundir import RunDir

    out.mkdir()
    RunDir(out).write_config(TrainConfig(dataset="synthetic", model="resnet20", epochs=2, output=str(out)))
    write_rows(out / "metrics.csv", [{"epoch": e, "lr": 0.1, "train_loss": 2.0, "val_acc": 0.5} for e in (1, 2)])
    (out / "summary.json").write_text('{"epochs_run": 2}\n')
    (out / "curves.png").write_bytes(b"\x89PNG\r\n")


def test_a_folder_with_results_but_no_checkpoint_is_never_started_over(tmp_path) -> None:
    from training.ablate import runner as ablate_runner
    from training.config import TrainConfig

    out = tmp_path / "run"
    finished_results(out)
    before = snapshot(out)
    code, text = invoke(["--resume", str(out)])
    assert code == 1 and "holds a run's results (metrics.csv (2 epochs), summary.json, curves.png)" in text, text
    assert "nothing was changed" in text and "starting it over" not in text and "Traceback" not in text, text
    code, text = invoke([*TINY, "--output", str(out)])
    assert code == 2 and "holds a run's results" in text, text
    assert snapshot(out) == before
    (out / "summary.json").unlink()  # unfinished: dali-ablate would start the arm over
    before = snapshot(out)
    cfg = TrainConfig(dataset="synthetic", model="resnet20", epochs=2, output=str(out))
    with pytest.raises(DataError, match="holds a run's results"):
        ablate_runner.run_one(cfg, "arm", log=lambda *_: None)
    assert snapshot(out) == before


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run (trained once for the tests that copy it)."""
    out = tmp_path_factory.mktemp("two_epochs") / "run"
    code, text = invoke([*TINY, "--num-samples", "64", "--epochs", "2", "--patience", "0", "--output", str(out)])
    assert code == 0, text
    return out


def copy_run(two_epochs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out)
    return out


def at_epoch(state: dict, epoch: int) -> dict:
    return {**state, "epoch": epoch, "best_epoch": epoch}


@pytest.mark.slow
def test_a_run_whose_last_pth_was_removed_continues_from_best_or_is_refused(two_epochs, tmp_path) -> None:
    out = copy_run(two_epochs, tmp_path)
    last = load_checkpoint(out / "last.pth")
    # best.pth behind the results (the best epoch was 1 of 2): continuing from it would overwrite epoch 2
    torch.save(at_epoch(last, 1), out / "best.pth")
    (out / "last.pth").unlink()
    before = snapshot(out)
    code, text = invoke(["--resume", str(out), "--epochs", "3"])
    assert code == 1 and "this checkpoint is at epoch 1, behind the run's results (metrics.csv has epochs up to 2)" \
        in text and "its last.pth is missing" in text and "nothing was changed" in text, text
    assert snapshot(out) == before
    # a checkpoint given by name that is behind the folder's last.pth is refused the same way
    torch.save(last, out / "last.pth")
    before = snapshot(out)
    code, text = invoke(["--resume", str(out / "best.pth"), "--epochs", "3"])
    assert code == 1 and f"{out / 'last.pth'} is at epoch 2" in text, text
    assert snapshot(out) == before
    # best.pth at the latest epoch (the last epoch was the best): the run continues from it, losing nothing
    (out / "last.pth").rename(out / "best.pth")
    code, text = invoke(["--resume", str(out)])
    assert code == 2 and "finished its 2 epochs" in text, text  # finished: refused as with last.pth
    code, text = invoke(["--resume", str(out), "--epochs", "3"])
    assert code == 0 and "continuing" in text and "from best.pth" in text, text
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]


@pytest.mark.slow
def test_a_damaged_or_deleted_metrics_csv_is_rebuilt_from_the_checkpoint(two_epochs, tmp_path) -> None:
    out = copy_run(two_epochs, tmp_path)
    code, text = invoke(["--resume", str(out), "--epochs", "3"])  # intact: nothing to say (the history has more keys)
    assert code == 0 and "metrics.csv" not in text, text
    original = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_bytes(b"epoch,lr\n1,\xff\xfe garbage\n")
    code, text = invoke(["--resume", str(out), "--epochs", "4"])
    assert code == 0 and "rewritten from the checkpoint's history (3 epochs)" in text, text
    rebuilt = (out / "metrics.csv").read_text().splitlines()
    assert rebuilt[:4] == original.splitlines()  # the first three epochs character for character, empty cells kept
    (out / "metrics.csv").unlink()  # deleted: the history is not silently shortened to the epochs trained now
    code, text = invoke(["--resume", str(out), "--epochs", "5"])
    assert code == 0 and "was missing; rewritten" in text, text
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_resume_from_another_directory_reads_the_runs_data_and_refuses_other_data(tmp_path, monkeypatch) -> None:
    from conftest import write_image_folder

    first, second = tmp_path / "first", tmp_path / "second"
    write_image_folder(first / "data", classes=("a", "b"), per_class=4, shape=(32, 32), ext="png")
    write_image_folder(second / "data", classes=("a", "b"), per_class=8, shape=(32, 32), ext="png", seed=1)
    out = tmp_path / "run"
    args = ["--dataset", "folder", "--data-dir", "data", "--image-size", "32", "--model", "resnet20",
            "--batch-size", "4", "--num-threads", "1", "--augment", "none", "--no-channels-last", "--patience", "0"]
    monkeypatch.chdir(first)
    code, text = invoke([*args, "--epochs", "1", "--output", str(out)])
    assert code == 0, text
    assert yaml.safe_load((out / "config.yaml").read_text())["data_dir"] == str(first / "data")
    monkeypatch.chdir(second)  # another ./data here: the run still reads its own
    code, text = invoke(["--resume", str(out), "--epochs", "2"])
    assert code == 0, text
    assert [r["train_images"] for r in read_metrics(out / "metrics.csv")] == [8, 8]
    write_image_folder(first / "data" / "extra", classes=("a",), per_class=2, shape=(32, 32), ext="png")
    shutil.move(first / "data" / "extra" / "train" / "a" / "0.png", first / "data" / "train" / "a" / "new.png")
    before = snapshot(out)
    code, text = invoke(["--resume", str(out), "--epochs", "3"])
    assert code == 1 and f"the train data at {first / 'data'} is not the data this run trained on (8 samples " \
        "then, 9 now)" in text, text
    assert snapshot(out) == before


@contextlib.contextmanager
def read_only(folder):
    """`folder` refuses new and removed entries, even to root (the immutable flag; a plain chmod elsewhere)."""
    import os
    import subprocess

    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.mark.slow
def test_a_run_directory_gone_read_only_is_one_line_and_keeps_the_saved_epoch(tmp_path, capsys) -> None:
    from training import loop as run_mod
    from training.cli import _run_guarded
    from training.config import TrainConfig

    out = tmp_path / "run"
    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=32, num_samples=64, epochs=2, lr=0.05,
                      augment="none", num_threads=1, device="cpu", channels_last=False, output=str(out))
    with contextlib.ExitStack() as stack:
        def build(cfg, **kwargs):
            run = run_mod.build_run(cfg, **kwargs)
            save = run.save

            def save_then_remount(name, state):  # a remount or a quota after epoch 1's last.pth
                save(name, state)
                if name == "last.pth":
                    stack.enter_context(read_only(out))

            run.save = save_then_remount
            return run

        with pytest.raises(SystemExit) as exited:
            _run_guarded(lambda: run_mod.fit(cfg, build=build, log=lambda *_: None))
        err = capsys.readouterr().err
    assert exited.value.code == 1 and err.startswith(f"error: {out / 'metrics.csv'}: cannot write it"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert load_checkpoint(out / "last.pth")["epoch"] == 1


def run_driver(tmp_path, out, how: str, where: str, signame: str, backend: str):
    """One process of a run under tests/group_signal_driver.py, in a session (and process group) of its own."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    cfg = dict(dataset="synthetic", model="resnet20", batch_size=4, num_samples=64, epochs=1, lr=0.05,
               augment="weak", num_threads=1, device="cpu", channels_last=False, backend=backend)
    driver = Path(__file__).with_name("group_signal_driver.py")
    return subprocess.run([sys.executable, str(driver), json.dumps(cfg), str(out), how, where, signame],
                          start_new_session=True, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(("where", "signame", "position"), [
    ("val:0:0", "SIGINT", (1, 0)),  # Ctrl-C in a terminal during validation: the DataLoader workers get it too
    ("train:0:5", "SIGHUP", (0, 6)),  # the ssh session closed mid-epoch: a stop like SIGTERM
    ("val:0:1", "SIGTERM", (1, 0)),  # `kill -- -PGID` during validation
])
def test_a_signal_to_the_whole_process_group_saves_the_run(tmp_path, where, signame, position) -> None:
    import signal as signals

    out = tmp_path / "run"
    ended = run_driver(tmp_path, out, "fit", where, signame, "torchvision")
    # a Ctrl-C is the user's interrupt, reported as one; SIGTERM and SIGHUP stop the run as an error
    lead = "interrupted " if signame == "SIGINT" else "error: "
    errors = [line for line in ended.stderr.splitlines() if line.startswith(("error:", "interrupted "))]
    assert ended.returncode == 128 + getattr(signals, signame), ended.stderr
    assert len(errors) == 1 and errors[0].startswith(lead) and f"--resume {out}" in errors[0] and \
        "Traceback" not in ended.stderr, ended.stderr
    state = load_checkpoint(out / "last.pth")
    assert (state["epoch"], state["batch"]) == position
    resumed = run_driver(tmp_path, out, "resume", "none", "SIGINT", "torchvision")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "summary.json").is_file()


def test_ctrl_c_while_a_command_imports_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from training.entry import _command

    (tmp_path / "slow_to_import.py").write_text("raise KeyboardInterrupt\n")  # a Ctrl-C during `import torch`
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        _command("slow_to_import", "main")()
    err = capsys.readouterr().err
    assert exited.value.code == 130 and err.strip() == "error: interrupted while starting; nothing was written"


class _SignalsWhenPickled(str):
    """A class name whose pickling (a DataLoader worker being started: the dataset goes to it pickled) sends this
    process SIGTERM: a stop signal that lands while a worker is being started."""

    def __reduce__(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return str, (str(self),)


def test_a_stop_signal_while_workers_start_is_handled_once_they_have_started(capfd) -> None:
    # Case 13: a second SIGTERM aborted the run while a worker was being started; the worker read a truncated
    # pickle and printed its traceback. The signal now waits for the start, then goes to the handler as it was.
    import multiprocessing
    import signal

    import numpy as np

    from dali_pipes.config import resolve_augment
    from dali_pipes.loader import Loader
    from dali_pipes.sources import ArrayDataset

    class Abort(Exception):
        pass

    workers_then = []

    def abort(signum, frame):
        workers_then.append(len(multiprocessing.active_children()))
        raise Abort

    data = ArrayDataset("tiny", np.zeros((8, 32, 32, 3), np.uint8), np.array([0, 1] * 4),
                        (_SignalsWhenPickled("a"), "b"))
    loader = Loader(data, train=True, cfg=resolve_augment("none"), backend="torchvision", device=torch.device("cpu"),
                    batch_size=4, seed=0, shard_id=0, num_shards=1, drop_last=False, return_index=False,
                    num_threads=1, num_workers=2, size=(32, 32))
    previous = signal.signal(signal.SIGTERM, abort)
    try:
        with pytest.raises(Abort):
            next(iter(loader))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert workers_then == [2]  # once, with both workers started (before: during the first one's start)
    assert signal.getsignal(signal.SIGTERM) is previous
    images, labels = next(iter(loader))  # the workers are whole
    assert images.shape == (4, 3, 32, 32) and "Traceback" not in capfd.readouterr().err
    # every held signal reaches the handler, in order: two SIGTERMs (one per worker started) are still two, so a
    # second signal still aborts the run
    counted = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: counted.append(
        len(multiprocessing.active_children())))
    try:
        again = Loader(data, train=True, cfg=resolve_augment("none"), backend="torchvision",
                       device=torch.device("cpu"), batch_size=4, seed=0, shard_id=0, num_shards=1, drop_last=False,
                       return_index=False, num_threads=1, num_workers=2, size=(32, 32))
        next(iter(again))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(counted) == 2 and min(counted) >= 2, counted


def test_a_second_signal_says_what_last_pth_holds_and_how_to_continue(tmp_path, capsys) -> None:
    import signal as signals

    from training.cli import _run_guarded
    from training.loop.signals import SecondSignal

    def aborted():
        second = SecondSignal()
        second.run_dir, second.signum = tmp_path, signals.SIGTERM
        raise second

    with pytest.raises(SystemExit) as exited:
        _run_guarded(aborted)
    err = capsys.readouterr().err
    assert exited.value.code == 128 + signals.SIGTERM, err
    assert "last.pth is as it was last written" in err and "holds the last completed epoch" not in err
    assert err.strip().endswith(f"continue with: dali-train --resume {tmp_path}"), err


@pytest.mark.slow
def test_a_checkpoint_with_nan_weights_is_not_resumed_with_advice_about_the_lr(two_epochs, tmp_path) -> None:
    out = copy_run(two_epochs, tmp_path)
    state = load_checkpoint(out / "last.pth")
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    torch.save(state, out / "last.pth")
    before = snapshot(out)
    code, text = invoke(["--resume", str(out), "--epochs", "3"])
    assert code == 1 and f"1 of its weight tensors hold inf/nan (e.g. {name})" in text and "--lr" not in text, text
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------------------------
# Second pass (#25): tracebacks where one line is promised


def _encoded(fmt: str, seed: int = 1) -> bytes:
    """A valid 20x24 image file of random pixels: compression leaves long image data to damage."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _png_with_damaged_idat() -> bytes:
    """Zeros inside the deflate stream, the chunk's CRC recomputed: the listing's structure walk keeps the file."""
    import struct
    import zlib

    data = bytearray(_encoded("PNG"))
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 14:at + 44] = bytes(30)
    data[at + 4 + length:at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + length])))
    return bytes(data)


def _jpeg_with_bogus_huffman_table() -> bytes:
    data = bytearray(_encoded("JPEG"))
    at = data.index(b"\xff\xc4")  # DHT: marker, length (2), class/id (1), 16 counts of codes per length
    data[at + 5:at + 21] = b"\xff" * 16  # more codes than the bit lengths can hold
    return bytes(data)


def _jpeg_with_damaged_scan() -> bytes:
    data = bytearray(_encoded("JPEG"))
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    data[start + 20:start + 60] = bytes(range(40))  # no 0xFF: the markers stay intact, the Huffman codes do not
    return bytes(data)


def _folder_with(root, name: str, data: bytes):
    from conftest import write_image_folder

    write_image_folder(root, classes=("a", "b"), per_class=3, shape=(20, 24), ext=name.rsplit(".", 1)[1])
    (root / "train" / "b" / name).write_bytes(data)
    return root / "train" / "b" / name


FOLDER = ["--dataset", "folder", "--model", "resnet20", "--batch-size", "4", "--num-threads", "1", "--image-size",
          "16", "--no-channels-last", "--backend", "dali", "--device", "cpu", "--epochs", "1"]


@pytest.mark.parametrize(("name", "make"), [("bad.png", _png_with_damaged_idat),
                                            ("bad.jpg", _jpeg_with_bogus_huffman_table)])
def test_damaged_image_data_in_the_dali_training_split_is_one_line_naming_the_file(tmp_path, name, make) -> None:
    bad = _folder_with(tmp_path / "ds", name, make())
    # "weak" crops at random: on a folder the crop is DALI's decoder fused with the random-resized crop
    code, text = invoke([*FOLDER, "--data-dir", str(tmp_path / "ds"), "--augment", "weak",
                         "--output", str(tmp_path / "run")])
    assert code == 1, text
    (line,) = [t for t in text.splitlines() if t.startswith("error:")]
    assert line.startswith(f"error: cannot decode image {bad}: ") and "corrupt" in line, text
    assert "Traceback" not in text and "Current pipeline object" not in text, text


# The torchvision backend as a command of its own: its DataLoader workers come from a forkserver, and one that an
# earlier test started writes to that test's stderr.
@pytest.mark.parametrize("backend", ["dali", pytest.param("torchvision", marks=pytest.mark.slow)])
def test_a_jpeg_whose_scan_data_is_damaged_is_named_and_listed_in_the_run_directory(tmp_path, capfd,
                                                                                     backend) -> None:
    # libjpeg fills in the damage and says "Corrupt JPEG data: ..." on fd 2, naming no file: the run names it
    # (printed whatever the warning filters, listed in damaged.txt and counted in summary.json) and trains on.
    bad = _folder_with(tmp_path / "ds", "bad.jpg", _jpeg_with_damaged_scan())
    # "none": the plain decoder reads the whole scan (the fused random crop of "weak" may stop before the damage)
    args = [*FOLDER, "--backend", backend, "--data-dir", str(tmp_path / "ds"), "--augment", "none",
            "--output", str(tmp_path / "run")]
    if backend == "dali":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, text = invoke(args)
        err = capfd.readouterr().err
    else:
        import os
        import subprocess

        done = subprocess.run([sys.executable, "-c", "from training.entry import train; train()", *args],
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        code, text, err = done.returncode, done.stdout, done.stderr
    assert code == 0, text + err
    lines = [t for t in (text + err).splitlines() if "damaged" in t]
    assert lines == [f"warning: train: decoded 1 JPEG files whose compressed data is damaged (the decoder fills in "
                     f"what it cannot read), e.g. {bad} (Corrupt JPEG data: 302 extraneous bytes before marker "
                     "0xd9); re-encode or remove them"], text + err
    assert "Corrupt JPEG data" not in err.replace(lines[0], "")  # libjpeg's own lines are not shown
    assert (tmp_path / "run" / "damaged.txt").read_text() == f"{bad}\n"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["damaged_files"] == 1
    assert lines[0] in (tmp_path / "run" / "train.log").read_text()


def test_the_stderr_pump_drains_on_when_the_terminal_is_gone() -> None:
    # SIGHUP from a closed ssh session: writes to the terminal fail; the pump must keep reading, or a C library
    # writing to stderr would block on the full pipe
    import os
    import threading

    from dali_pipes.damage import _pump, _Watch

    source_r, source_w = os.pipe()
    gone_r, gone_w = os.pipe()
    os.close(gone_r)  # the terminal: writing to it fails (EPIPE)
    watch, stop = _Watch(), threading.Event()
    pump = threading.Thread(target=_pump, args=(source_r, gone_w, watch, stop), daemon=True)
    pump.start()
    def write() -> None:  # more than a pipe's buffer: blocks forever once the pump stops reading
        os.write(source_w, b"x" * 200_000 + b"\nCorrupt JPEG data: premature end of data segment\n")
        os.close(source_w)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "the writer blocked: the pump stopped reading"
    pump.join(timeout=10)
    assert not pump.is_alive()
    assert [w for _, w in watch.warnings] == ["Corrupt JPEG data: premature end of data segment"]
    os.close(source_r)
    os.close(gone_w)


def test_damage_the_decoders_report_outside_an_epoch_is_still_said(tmp_path, capfd) -> None:
    from dali_pipes.damage import decoder_warnings, find_damaged
    from dali_pipes.notices import skipped_to

    bad, good = tmp_path / "bad.jpg", tmp_path / "good.jpg"
    bad.write_bytes(_jpeg_with_damaged_scan())
    good.write_bytes(_encoded("JPEG"))
    assert find_damaged([str(good), str(bad)]) == {str(bad): "Corrupt JPEG data: 302 extraneous bytes before "
                                                              "marker 0xd9"}
    said = []
    with skipped_to(said.append), decoder_warnings():
        import torch
        from torchvision.io import decode_jpeg

        decode_jpeg(torch.frombuffer(bytearray(bad.read_bytes()), dtype=torch.uint8))
        print("python's own line", file=sys.stderr)
    assert [n.message() for n in said] == ["images: a JPEG decoder reported damaged data 1 time(s) (Corrupt JPEG "
                                           "data: 302 extraneous bytes before marker 0xd9) in files it did not name"]
    assert "python's own line" in capfd.readouterr().err


@pytest.mark.parametrize("seed", [str(2**64), "-1"])
def test_a_seed_outside_torchs_range_is_refused_naming_the_range(seed) -> None:
    code, text = invoke([*TINY, "--seed", seed])
    assert code == 2, text
    assert text.strip() == f"error: --seed={seed} is invalid: expected an integer in [0, {2**64 - 1}] (torch's " \
        "seeds are unsigned 64-bit)", text


def _laughs(levels: int) -> str:
    """YAML whose last alias stands for 10**levels strings ("billion laughs" at 9 levels, here kept small enough
    that code without the refusal still ends, with an error line megabytes long)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, levels + 1)]
    return "\n".join(lines) + f"\nlr: *l{levels}\n"


def test_yaml_aliases_are_refused_in_one_line_wherever_a_file_is_read(tmp_path) -> None:
    from training import ablate

    config = tmp_path / "laughs.yaml"
    config.write_text(_laughs(5))
    code, text = invoke(["--config", str(config)])
    assert code == 2 and text.strip() == f"error: --config {config}: line 1: YAML anchor &l0: anchors and aliases " \
        "are not accepted (a few of them can expand to billions of values); write the values out", text
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_laughs(5))  # a run folder whose config.yaml was replaced
    code, text = invoke(["--resume", str(run)])
    assert code == 1 and "config.yaml: unreadable (line 1: YAML anchor &l0" in text, text
    assert len(text.strip().splitlines()) == 1, text
    study = tmp_path / "study.yaml"
    study.write_text("arms:\n  a: &base {lr: 0.1}\n  b: *base\n")
    result = CliRunner().invoke(ablate.main, ["--study", str(study), *TINY, "--output", str(tmp_path / "s")])
    assert result.exit_code == 2 and "line 2: YAML anchor &base" in result.output, result.output
    code, text = invoke([*TINY, "--aug", "rrc_scale=[&a 0.5, *a]"])
    assert code == 2 and "--aug 'rrc_scale=[&a 0.5, *a]': line 1: YAML anchor &a" in text, text


def test_an_option_given_twice_in_a_yaml_file_is_refused_naming_it(tmp_path) -> None:
    from training import ablate

    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.1\nepochs: 3\nlr: 0.5\n")
    code, text = invoke(["--config", str(config)])
    assert code == 2 and text.strip() == f"error: --config {config}: key 'lr' is given twice (lines 1 and 3); " \
        "keep one", text
    config.write_text("batch-size: 8\nbatch_size: 16\n")  # one option in two spellings
    code, text = invoke(["--config", str(config)])
    assert code == 2 and text.strip() == f"error: --config {config}: option batch_size is given twice (as " \
        "'batch-size' and 'batch_size'); keep one", text
    study = tmp_path / "study.yaml"
    study.write_text("arms:\n  a: {lr: 0.1}\n  a: {lr: 0.2}\n")
    result = CliRunner().invoke(ablate.main, ["--study", str(study), *TINY, "--output", str(tmp_path / "s")])
    assert result.exit_code == 2 and "key 'a' is given twice (lines 2 and 3)" in result.output, result.output


def test_preview_output_is_checked_before_drawing_and_the_file_written_is_the_one_reported(tmp_path) -> None:
    from training.tools.preview import command

    def preview(output: str) -> tuple[int, str]:
        result = CliRunner().invoke(command(), ["--dataset", "synthetic", "--backend", "torchvision", "--draws", "1",
                                                "--num-images", "2", "--augment", "weak", "--output", output])
        return result.exit_code, result.output

    code, text = preview(str(tmp_path / "grid.pth"))
    assert code == 2 and text.strip() == f"error: --output {tmp_path / 'grid.pth'}: cannot write a grid as '.pth'; " \
        "give a name ending in .png, .jpg, .jpeg, .pdf, .svg", text
    (tmp_path / "afile").write_text("")
    code, text = preview(str(tmp_path / "afile" / "grid.png"))  # its folder would be a file
    assert code == 2 and text.startswith(f"error: --output {tmp_path / 'afile' / 'grid.png'}: cannot create its "
                                         "folder") and len(text.splitlines()) == 1, text
    code, text = preview(str(tmp_path / ("x" * 300 + ".png")))  # the write itself fails (a name too long)
    assert code == 1 and text.startswith("error: --output ") and "cannot write the grid" in text, text
    assert len(text.splitlines()) == 1, text
    code, text = preview(str(tmp_path / "bare"))
    assert code == 0 and text.startswith(f"wrote {tmp_path / 'bare.png'}: "), text
    assert (tmp_path / "bare.png").stat().st_size > 0 and not (tmp_path / "bare").exists()


def _checkpoint_with_a_nan_weight(path) -> None:
    """What a diverged run leaves: a valid checkpoint of resnet20 on synthetic data whose weights hold nan."""
    from training.loop.checkpoint import save_checkpoint
    from training.config import TrainConfig
    from training.recipe.models import create_model

    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=32, num_samples=64, num_threads=1,
                      augment="none", channels_last=False, device="cpu")
    weights = create_model("resnet20", num_classes=10).state_dict()
    weights["conv1.weight"][0, 0, 0, 0] = math.nan
    save_checkpoint({"config": cfg.to_dict(), "model": weights, "epoch": 1}, path)


def test_a_checkpoint_with_nan_weights_is_refused_by_the_tools_in_one_line(tmp_path) -> None:
    from training.cli import prune_main, quantize_main

    ckpt = tmp_path / "last.pth"
    _checkpoint_with_a_nan_weight(ckpt)
    expected = f"error: {ckpt}: its weights are not finite (nan/inf in 1 of "
    for command, extra in [(eval_main, []), (quantize_main, ["--no-latency", "--output", str(tmp_path / "q")]),
                           (prune_main, ["--finetune-epochs", "1", "--output", str(tmp_path / "p")])]:
        result = CliRunner().invoke(command, ["--checkpoint", str(ckpt), "--num-samples", "64", *extra])
        assert result.exit_code == 1, (command.name, result.output)
        assert result.output.startswith(expected) and "e.g. conv1.weight" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


def test_a_batch_whose_step_does_not_fit_in_memory_is_refused_with_the_largest_that_fits(tmp_path) -> None:
    from functools import partial

    from training import loop as run
    from training.config import TrainConfig
    from training.loop.step_memory import check_training_step

    free = 64 * 2**20  # a host with 64 MiB free: resnet20 at 32x32 holds a few MiB per image in a step
    cfg = TrainConfig(dataset="synthetic", model="resnet20", num_samples=512, batch_size=100_000, num_threads=1,
                      augment="none", channels_last=False, amp=False, epochs=1, output=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as info:
        run.fit(cfg, build=partial(run.build_run, memory=lambda device: free))
    message = str(info.value)
    assert message.startswith("--batch-size=100000 (held to the split's 512 images) does not fit: one training step "
                              "of 512 images of 32x32 through resnet20 needs about "), message
    assert "of host memory" in message and "0.1 GiB is available" in message and "\n" not in message
    largest = int(message.rsplit("use --batch-size ", 1)[1].split()[0])
    assert 4 <= largest < 64 and not (tmp_path / "run").exists(), message
    # the largest batch it names passes the check; one more does not
    loader = SimpleNamespace(shard_size=512, image_size=(32, 32))
    model = create_model("resnet20", num_classes=10)
    check = partial(check_training_step, model, loader, model_name="resnet20", device=torch.device("cpu"),
                    amp_dtype=None, channels_last=False, available=lambda device: free)
    check(requested=largest)
    with pytest.raises(ConfigError, match=f"use --batch-size {largest} or less"):
        check(requested=largest + 1)


def test_the_memory_probe_leaves_the_model_and_the_random_streams_as_they_were() -> None:
    from training.loop.step_memory import saved_bytes_per_image

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, drop_path=0.2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    per_image = saved_bytes_per_image(model, image_size=(32, 32), device=torch.device("cpu"), amp_dtype=None,
                                      channels_last=False)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # half the bytes per image under bfloat16 autocast, as measured on the step itself
    bf16 = saved_bytes_per_image(model, image_size=(32, 32), device=torch.device("cpu"), amp_dtype=torch.bfloat16,
                                 channels_last=False)
    assert 0.4 < bf16 / per_image < 0.6 and per_image > 32 * 32 * 16 * 4  # at least one 16-channel map per image


def test_an_exponent_without_a_dot_is_a_number_for_every_option_and_recipe_field(tmp_path) -> None:
    from dali_pipes.config import parse_override
    from training.config import TrainConfig
    from training.options import read_options

    assert parse_override("erase_p=5e-1") == ("erase_p", 0.5)
    config = tmp_path / "c.yaml"
    config.write_text("lr: 5e-1\nweight_decay: 5E-4\naugment: {preset: standard, erase_p: 5e-1}\n")
    cfg = TrainConfig.from_dict(read_options(config, "--config"))
    assert (cfg.lr, cfg.weight_decay, cfg.augment["erase_p"]) == (0.5, 5e-4, 0.5)


def test_a_quoted_tilde_in_output_means_the_home_folder(monkeypatch, tmp_path) -> None:
    from training.config import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert TrainConfig(output="~/runs/x").output == str(tmp_path / "runs" / "x")
    assert TrainConfig(output="runs/~x").output == "runs/~x"  # only a leading ~ is the home folder


def test_a_failed_download_into_a_missing_data_dir_leaves_no_folder(tmp_path) -> None:
    import urllib.error

    from dali_pipes import DataError, cifar

    def offline(url: str, download_root: str, **kw) -> None:
        from pathlib import Path

        Path(download_root).mkdir(parents=True, exist_ok=True)  # what torchvision's download does first
        raise urllib.error.URLError("offline")

    missing = tmp_path / "typo" / "data"  # dali-eval --data-dir with a typo, on a checkpoint of a CIFAR run
    with pytest.raises(DataError, match="offline"):
        cifar.load_cifar("cifar10", missing, "val", download=True, fetch=offline)
    assert not (tmp_path / "typo").exists()


@pytest.mark.gpu
def test_the_step_memory_check_measures_the_same_activations_on_cuda() -> None:
    from training.loop.step_memory import available_memory, step_memory

    model = create_model("resnet20", num_classes=10)
    options = dict(image_size=(32, 32), amp_dtype=None, channels_last=False)
    cpu = step_memory(model, device=torch.device("cpu"), **options)
    cuda = step_memory(model.cuda(), device=torch.device("cuda"), **options)
    assert cuda.per_image == pytest.approx(cpu.per_image, rel=0.05)  # the same tensors saved, on either device
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0 < cuda.available <= total and 0 < available_memory(torch.device("cuda")) <= total


def test_more_dataloader_workers_than_cores_are_capped_with_a_printed_note(capsys) -> None:
    from dali_pipes import create_loader
    from dali_pipes.loader import cores_per_process

    cores = cores_per_process()
    loader = create_loader(dataset="synthetic", split="train", num_samples=32, batch_size=8, backend="torchvision",
                           device="cpu", augment="none", num_workers=cores + 30)
    assert loader._backend.loader.num_workers == cores  # noqa: SLF001 — the DataLoader the backend runs
    assert f"num_workers={cores + 30} exceeds the {cores} core(s)" in capsys.readouterr().err


@pytest.mark.slow  # trains two one-epoch runs
def test_a_val_split_missing_classes_or_smaller_than_the_classes_is_said(tmp_path) -> None:
    # Weak case of #25: a val folder lacking a training class (or with fewer images than classes) trained and
    # reported accuracy without a word. Now one note each, on the console and in train.log.
    import shutil

    from conftest import write_image_folder

    root = tmp_path / "data"
    write_image_folder(root, classes=("ant", "bee", "cat"), per_class=2, shape=(32, 32), ext="png")
    shutil.rmtree(root / "val" / "cat")
    (root / "val" / "bee" / "1.png").unlink()
    out = tmp_path / "run"
    code, text = invoke(["--dataset", "folder", "--data-dir", str(root), "--image-size", "32", "--model", "resnet20",
                         "--batch-size", "2", "--num-threads", "1", "--epochs", "1", "--device", "cpu",
                         "--output", str(out)])
    assert code == 0, text
    missing = "note: the val split has no image of 1 of the 3 training classes (cat)"
    few = "note: the val split holds 3 images for 3 classes"
    assert missing in text and few not in text
    log = (out / "train.log").read_text()
    assert missing in log
    (root / "val" / "ant" / "1.png").unlink()
    code, text = invoke(["--dataset", "folder", "--data-dir", str(root), "--image-size", "32", "--model", "resnet20",
                         "--batch-size", "2", "--num-threads", "1", "--epochs", "1", "--device", "cpu",
                         "--output", str(tmp_path / "run2")])
    assert code == 0 and "note: the val split holds 2 images for 3 classes" in text, text
