"""Chains of interrupts and resumes land exactly where the uninterrupted run lands: metrics.csv, weights, summary.

Interrupts are real SIGINTs sent by this process to itself at a chosen batch of the training or validation
loader (the run's own StopSignal handles them), or a stop source passed in (StopAfter) for the epoch boundary.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from helpers import StopAfter, signals

from training import loop as run_mod
from training.outputs import read_metrics
from training.loop.checkpoint import load_checkpoint
from training.config import TrainConfig

pytestmark = pytest.mark.slow  # every case trains a run several times

EPOCHS, BATCHES = 3, 6  # 96 training samples in batches of 16; validation: 19 samples, 2 batches
DETERMINISTIC = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_images",
                 "nonfinite_losses", "skipped_steps")
SUMMARY = ("epochs_run", "stopped_early", "final_epoch_val_acc", "best_val_acc", "best_epoch",
           "best_reloaded_val_acc", "best_reloaded_val_loss")


def chain_config(out: Path, backend: str = "dali") -> TrainConfig:
    # Every random stream the resume must carry: augmentation (DALI's, or the reference's per-sample seeds),
    # Mixup/CutMix, drop path.
    return TrainConfig(dataset="synthetic", model="resnet20", batch_size=16, num_samples=96, epochs=EPOCHS,
                       lr=0.05, warmup_epochs=1.0, augment="weak", mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5,
                       drop_path=0.1, output=str(out), num_threads=1, patience=0, device="cpu", backend=backend)


def attempt(first: bool, out: Path, *, build=run_mod.build_run, stop=None, ema: bool = False,
            backend: str = "dali") -> tuple[str, list[str]]:
    """One process's worth of the run: `fit` first, `resume` after. Returns how it ended and what it logged.
    `ema`: the run keeps an EMA of its weights, updated every 2 steps (so an interrupt falls between updates)."""
    lines: list[str] = []
    cfg = chain_config(out, backend)
    cfg = cfg.replace(ema_decay=0.9, ema_every=2) if ema else cfg
    try:
        if first:
            run_mod.fit(cfg, log=lines.append, build=build, stop=stop)
        else:
            run_mod.resume(out, log=lines.append, build=build, stop=stop)
    except run_mod.Interrupted as e:
        assert e.exit_code == 128 + signal.SIGINT or (stop is not None and e.exit_code == 128 + signal.SIGTERM)
        assert f"--resume {out}" in str(e), str(e)
        return ("aborted" if "aborted in the final evaluation" in str(e) else "interrupted"), lines
    return "finished", lines


def deterministic_cells(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [[row[k] for k in DETERMINISTIC] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted run of each backend, trained when a test first asks for it."""
    runs: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"straight-{backend}") / "run"
            assert attempt(True, out, backend=backend)[0] == "finished"
            runs[backend] = out
        return runs[backend]

    return get


@pytest.fixture(scope="module")
def straight(straight_runs) -> Path:
    return straight_runs("dali")


T, V = "train", "val"
# Per case, one entry per process: (where its SIGINTs go, how it must end). Epochs and passes are 0-based.
CHAINS = {
    "first_epoch_mid_way": [({T: [(0, 2)]}, "interrupted"), ({T: [(1, 3)]}, "interrupted"), ({}, "finished")],
    "later_epoch_mid_way": [({T: [(1, 1)]}, "interrupted"), ({T: [(2, 4)]}, "interrupted"), ({}, "finished")],
    # the third interrupt lands on a batch the resume draws but skips: it stops after the first one it trains
    "three_times_in_one_epoch": [({T: [(1, 1)]}, "interrupted"), ({T: [(1, 3)]}, "interrupted"),
                                 ({T: [(1, 3)]}, "interrupted"), ({}, "finished")],
    # the stop source turns true at the poll after an epoch's checkpoint (6 steps, then the epoch-end poll)
    "between_epochs": [({"stop": BATCHES + 1}, "interrupted"), ({"stop": BATCHES + 1}, "interrupted"),
                       ({"stop": BATCHES + 1}, "interrupted"), ({}, "finished")],
    "during_validation": [({V: [(0, 0)]}, "interrupted"), ({V: [(0, 1)]}, "interrupted"), ({}, "finished")],
    # the first step of the run, and the last step of an epoch (the epoch is complete: it stops after it)
    "first_step": [({T: [(0, 0)]}, "interrupted"), ({}, "finished")],
    "last_step_of_an_epoch": [({T: [(0, BATCHES - 1)]}, "interrupted"), ({T: [(1, BATCHES - 1)]}, "interrupted"),
                              ({}, "finished")],
    # as the first checkpoint write of each process begins (epoch 1's best.pth; epoch 2's best.pth or last.pth)
    "during_a_checkpoint_write": [({"save": (1,)}, "interrupted"), ({"save": (1,)}, "interrupted"),
                                  ({}, "finished")],
    # resumed in epoch 2, the process's validation passes are: after epoch 2, after epoch 3, the final one
    "during_the_final_evaluation": [({T: [(1, 2)]}, "interrupted"), ({V: [(2, 0), (2, 1)]}, "aborted"),
                                    ({V: [(0, 0)]}, "finished")],
}


# The reference backend (DataLoader workers, per-sample seeds) at the positions where its state differs from DALI's:
# nothing to carry but the epoch, workers to keep alive through a stop.
TORCHVISION_CHAINS = ("first_epoch_mid_way", "last_step_of_an_epoch", "during_validation",
                      "during_the_final_evaluation")


@pytest.mark.parametrize(("backend", "case"), [("dali", c) for c in CHAINS] +
                         [("torchvision", c) for c in TORCHVISION_CHAINS])
def test_a_chain_of_interrupts_and_resumes_ends_exactly_where_the_straight_run_ends(tmp_path, straight_runs,
                                                                                     backend, case) -> None:
    straight = straight_runs(backend)
    out = tmp_path / "run"
    positions = []
    for k, (where, expected) in enumerate(CHAINS[case]):
        stop = StopAfter(where["stop"]) if "stop" in where else None
        build = signals(where.get(T, ()), where.get(V, ()), where.get("save", ()))
        ended, lines = attempt(k == 0, out, build=build, stop=stop, backend=backend)
        assert ended == expected, (case, k, lines)
        if ended == "interrupted":
            state = load_checkpoint(out / "last.pth")
            assert state["ranks"][0]["loader"]["backend"] == backend  # a second save in one epoch keeps it
            positions.append((state["epoch"], state["batch"]))
        if ended == "aborted":
            assert not (out / "summary.json").exists()
    if case == "three_times_in_one_epoch":
        assert positions == [(1, 2), (1, 4), (1, 5)]
    if case == "between_epochs":
        assert positions == [(1, 0), (2, 0), (3, 0)]
    if case in ("last_step_of_an_epoch", "during_a_checkpoint_write"):
        assert positions == [(1, 0), (2, 0)]  # each stop lands after its whole epoch
    if case == "first_step":
        assert positions == [(0, 1)]
    if case == "during_the_final_evaluation":
        assert any("arrived during the final evaluation" in line for line in lines), lines

    # metrics.csv reads as if the run had never stopped, character for character in these columns (an int
    # rewritten as "1.0" by a resume would differ)
    assert deterministic_cells(out / "metrics.csv") == deterministic_cells(straight / "metrics.csv")
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(straight / name)["model"], load_checkpoint(out / name)["model"]
        assert all(torch.equal(a[key], b[key]) for key in a), name
    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((out / "summary.json").read_text())
    assert {k: summary_b[k] for k in SUMMARY} == {k: summary_a[k] for k in SUMMARY}


def test_an_extension_aborted_in_its_final_evaluation_leaves_no_stale_summary(tmp_path, straight) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    old_summary = (out / "summary.json").read_text()
    # resumed at the end of epoch 3 for a 4th: validation passes are after epoch 4, then the final evaluation
    lines: list[str] = []
    with pytest.raises(run_mod.Interrupted, match="aborted in the final evaluation") as aborted:
        run_mod.resume(out, epochs=EPOCHS + 1, log=lines.append, build=signals(val=[(1, 0), (1, 1)]))
    assert aborted.value.exit_code == 128 + signal.SIGINT and "second interrupt" not in str(aborted.value)
    assert not (out / "summary.json").exists()  # the 3-epoch summary would call the 4-epoch run finished
    # a summary.json left by an older dali-train that did not remove it: resume sees it is stale and finishes
    (out / "summary.json").write_text(old_summary)
    run_mod.resume(out, log=lines.append)
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == EPOCHS + 1
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def straight_ema(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight_ema") / "run"
    assert attempt(True, out, ema=True)[0] == "finished"
    return out


def test_a_chain_with_an_ema_ends_on_the_straight_runs_ema_bit_for_bit(tmp_path, straight_ema) -> None:
    out = tmp_path / "run"
    # mid-epoch after 3 steps (between two EMA updates); during the EMA's validation pass of epoch 1 (the second
    # pass over the validation loader in that process); mid-epoch 3; then to the end
    chain = [({T: [(0, 2)]}, "interrupted"), ({V: [(1, 0)]}, "interrupted"), ({T: [(2, 3)]}, "interrupted"),
             ({}, "finished")]
    positions = []
    for k, (where, expected) in enumerate(chain):
        ended, lines = attempt(k == 0, out, build=signals(where.get(T, ()), where.get(V, ())), ema=True)
        assert ended == expected, (k, lines)
        state = load_checkpoint(out / "last.pth")
        positions.append((state["epoch"], state["batch"]))
    assert positions[:3] == [(0, 3), (1, 0), (2, 4)]
    columns = (*DETERMINISTIC, "ema_val_loss", "ema_val_acc")
    rows_a = read_metrics(straight_ema / "metrics.csv")
    rows_b = read_metrics(out / "metrics.csv")
    assert [[r[k] for k in columns] for r in rows_b] == [[r[k] for k in columns] for r in rows_a]
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(straight_ema / name), load_checkpoint(out / name)
        for weights in ("model", "ema"):
            assert all(torch.equal(a[weights][key], b[weights][key]) for key in a[weights]), (name, weights)
    summary_a = json.loads((straight_ema / "summary.json").read_text())
    summary_b = json.loads((out / "summary.json").read_text())
    assert {k: summary_b[k] for k in (*SUMMARY, "best_weights")} == {k: summary_a[k] for k in (*SUMMARY,
                                                                                              "best_weights")}
