"""The run directory: what a folder is called and the way out offered, one writer at a time, bad --output paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dali_pipes import DaliTrainError
from training import loop as run_mod
from training.outputs import read_metrics
from training.cli import main
from training.config import TrainConfig
from training.loop.folder import EVENTS
from training.loop.lock import LOCK_NAME, RunDirLock

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "32", "--num-samples", "64", "--epochs", "1",
        "--num-threads", "1", "--device", "cpu"]


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def one_line_error(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text


def killed_before_first_checkpoint(out: Path) -> None:
    """What a run killed (kill -9, a crash) before its first checkpoint leaves: its config, temp files of the
    atomic writes in flight, and the lock file of the dead process."""
    out.mkdir()
    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=32, num_samples=64, epochs=1, num_threads=1,
                      device="cpu", output=str(out))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (out / ".metrics.csv.x1y2.tmp").write_text("epoch,lr\n")
    (out / ".last.pth.k2j4.tmp").write_bytes(b"PK\x03\x04 cut short")
    (out / LOCK_NAME).write_text("999999\n")
    (out / DEAD_EVENTS).write_bytes(b"\x18\x00")  # its TensorBoard events, cut short


DEAD_EVENTS = "events.out.tfevents.1700000000.host.999999.0"


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_refused_by_output_and_started_over_by_resume(tmp_path) -> None:
    out = tmp_path / "run"
    killed_before_first_checkpoint(out)
    code, text = invoke([*TINY, "--output", str(out)])
    assert code == 2 and one_line_error(text), text
    assert "stopped before its first checkpoint" in text and f"--resume {out}" in text
    assert "already holds a run" not in text

    code, text = invoke(["--resume", str(out)])
    assert code == 0, text
    assert "starting it over from its config.yaml" in text
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1]
    # the temp files of the dead run are gone, and so is the lock file (released at the end of the run)
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not EVENTS.match(n)] == ["best.pth", "config.yaml", "curves.png", "first_batch.png",
                                                         "last.pth", "metrics.csv", "summary.json", "train.log"]
    events = [n for n in names if EVENTS.match(n)]
    assert len(events) == 1 and DEAD_EVENTS not in events  # the dead run's events went with its other outputs


def test_a_folder_of_unrelated_files_is_not_called_a_run(tmp_path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("precious\n")
    code, text = invoke([*TINY, "--output", str(out)])
    assert code == 2 and one_line_error(text), text
    assert "not a dali-train run" in text and "todo.txt" in text and "already holds a run" not in text
    code, text = invoke(["--resume", str(out)])
    assert code == 1 and one_line_error(text), text
    assert "not a dali-train run" in text and "todo.txt" in text
    assert [p.name for p in out.iterdir()] == ["todo.txt"] and (out / "todo.txt").read_text() == "precious\n"


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_an_output_that_is_a_file_or_under_one_is_refused_naming_the_path(tmp_path, where) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep\n")
    out = blocker if where == "is_a_file" else blocker / "run"
    code, text = invoke([*TINY, "--output", str(out)])
    assert code == 2 and one_line_error(text), text
    assert str(out) in text and "is a file" in text
    assert blocker.read_text() == "keep\n"


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A second process that holds the run directory's lock until it is killed."""
    code = ("import sys, time\nfrom training.loop.lock import RunDirLock\nRunDirLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_one_process_writes_a_run_directory_at_a_time_and_a_killed_one_leaves_it_free(tmp_path) -> None:
    out = tmp_path / "run"
    killed_before_first_checkpoint(out)
    (out / LOCK_NAME).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    holder = hold_lock(out)
    try:
        for args in (["--resume", str(out)], [*TINY, "--output", str(out)]):
            code, text = invoke(args)
            assert code == 1 and one_line_error(text), text
            assert str(out) in text and f"pid {holder.pid}" in text and "in use" in text
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(DaliTrainError, match=f"pid {os.getpid()}"), RunDirLock(empty):
            RunDirLock(empty).acquire()  # the same rule within one process: a second lock is refused
        assert not (empty / LOCK_NAME).exists()  # released (and removed) on leaving the block
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == before  # nothing written
    assert (out / LOCK_NAME).exists()  # kill -9 leaves the file, and the kernel has dropped its lock
    with RunDirLock(out) as lock:
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid()) and lock.path.parent == out
