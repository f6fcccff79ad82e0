"""RunDir's verdict on temporary folders, without training: what dali-train --resume (cfg None), dali-ablate (the arm's
config) and dali-train --output may do with each kind of folder, and that asking changes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from dali_pipes import ConfigError, DataError
from training.loop.checkpoint import save_checkpoint
from training.config import TrainConfig, absolute_paths
from training.outputs.files import write_rows
from training.loop.rundir import DONE, FINISH, NEW, REFUSED, RESTART, RESUME, RunDir


def config(out, **changes) -> TrainConfig:
    return absolute_paths(TrainConfig(dataset="synthetic", model="resnet20", epochs=2, output=str(out), **changes))


def checkpoint(path, cfg: TrainConfig, *, epoch: int, batch: int = 0, weight: float = 1.0) -> dict:
    state = {"config": cfg.to_dict(), "model": {"w": torch.full((2,), weight)}, "epoch": epoch, "batch": batch,
             "step": 10 * epoch + batch, "best_acc": 0.5, "best_epoch": epoch, "history": [], "ranks": [{}]}
    save_checkpoint(state, path)
    return state


def a_run(out, *, epochs_done: int, cfg: TrainConfig | None = None, summary: bool = False) -> TrainConfig:
    """A folder as a run of 2 epochs leaves it after `epochs_done` of them."""
    cfg = cfg or config(out)
    out.mkdir(exist_ok=True)
    RunDir(out).write_config(cfg)
    write_rows(out / "metrics.csv", [{"epoch": e, "val_acc": 0.5} for e in range(1, epochs_done + 1)])
    checkpoint(out / "last.pth", cfg, epoch=epochs_done)
    if summary:
        (out / "summary.json").write_text(json.dumps({"epochs_run": epochs_done}))
    return cfg


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture
def out(tmp_path):
    return tmp_path / "run"


def ask(out, cfg=None, epochs=None):
    folder = out if out.is_dir() or not out.suffix else out.parent
    before = files(folder)
    verdict = RunDir(out).verdict(cfg, epochs=epochs)
    assert files(folder) == before  # a verdict changes nothing
    assert (verdict.error is not None) == (verdict.kind == REFUSED or (verdict.kind == DONE and cfg is None
                                                                       and verdict.checkpoint is not None))
    return verdict


def test_an_empty_or_missing_folder_is_new_for_a_study_and_nothing_to_resume(out) -> None:
    assert ask(out, config(out)).kind == NEW
    out.mkdir()
    assert ask(out, config(out)).kind == NEW
    verdict = ask(out)
    assert verdict.kind == REFUSED and isinstance(verdict.error, DataError) and "it is empty" in verdict.reason
    assert RunDir(out).verdict_new().kind == NEW


def test_a_run_stopped_before_its_first_checkpoint_restarts_from_its_config(out) -> None:
    out.mkdir()
    RunDir(out).write_config(config(out, lr=0.07))
    verdict = ask(out, epochs=5)
    assert verdict.kind == RESTART and verdict.cfg.lr == 0.07 and verdict.cfg.epochs == 5
    assert ask(out, config(out)).cfg.lr == config(out).lr  # a study restarts it with the arm's config
    assert RunDir(out).verdict_new().kind == REFUSED  # --output never takes it over


def test_foreign_files_are_refused_by_everyone(out) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in ask(out).reason and ask(out).kind == REFUSED
    assert isinstance(ask(out, config(out)).error, ConfigError)
    assert RunDir(out).verdict_new().kind == REFUSED


def test_a_run_in_progress_resumes_and_may_be_extended_but_not_shortened(out) -> None:
    a_run(out, epochs_done=1)
    verdict = ask(out)
    assert verdict.kind == RESUME and verdict.checkpoint == out / "last.pth" and verdict.progress.epoch == 1
    assert ask(out, epochs=4).cfg.epochs == 4
    shortened = ask(out, epochs=0)
    assert shortened.kind == REFUSED and "already trained 1 epochs" in shortened.reason
    assert ask(out, config(out), epochs=2).kind == RESUME  # the study's arm: the same run
    assert RunDir(out).verdict_new().kind == REFUSED


def test_a_finished_run_is_done_finish_only_without_summary_and_extendable(out) -> None:
    a_run(out, epochs_done=2)
    assert ask(out).kind == FINISH and ask(out, config(out), epochs=2).kind == FINISH
    (out / "summary.json").write_text('{"epochs_run": 1}')  # stale: from a shorter run
    assert ask(out).kind == FINISH
    (out / "summary.json").write_text('{"epochs_run": 2}')
    done = ask(out)
    assert done.kind == DONE and isinstance(done.error, ConfigError) and "finished its 2 epochs" in done.reason
    assert ask(out, config(out), epochs=2).kind == DONE  # a study skips it
    assert ask(out, epochs=3).kind == RESUME
    assert ask(out, config(out), epochs=3).kind == RESUME  # a study with more --epochs extends it


def test_one_rule_for_same_run_where_and_how_long_never_make_another_run(out) -> None:
    cfg = a_run(out, epochs_done=1)
    for same in (cfg.replace(num_threads=3), cfg.replace(output="/elsewhere"), cfg.replace(epochs=7)):
        assert ask(out, same, epochs=same.epochs).kind == RESUME
    other = ask(out, cfg.replace(lr=0.5), epochs=2)
    assert other.kind == REFUSED and isinstance(other.error, ConfigError) and "another config" in other.reason
    assert "lr: 0.1 there, 0.5 now" in other.reason


def test_a_checkpoint_from_another_run_is_refused_but_an_extension_is_not(out) -> None:
    cfg = a_run(out, epochs_done=1)
    RunDir(out).write_config(cfg.replace(epochs=9, num_threads=2))  # --resume --epochs 9, killed before a save
    assert ask(out).kind == RESUME
    RunDir(out).write_config(cfg.replace(model="resnet18"))
    verdict = ask(out)
    assert verdict.kind == REFUSED and "not this folder's run" in verdict.reason and "resnet18" in verdict.reason
    (out / "config.yaml").write_text(": not yaml [")  # no evidence either way: the checkpoint is the run
    assert ask(out).kind == RESUME


def test_results_without_last_pth_continue_from_best_only_when_nothing_is_behind(out) -> None:
    cfg = a_run(out, epochs_done=2, summary=True)
    (out / "last.pth").unlink()
    verdict = ask(out)
    assert verdict.kind == REFUSED and "no last.pth or best.pth" in verdict.reason and "nothing was changed" in \
        verdict.reason
    assert ask(out, config(out), epochs=2).kind == DONE  # a study's finished arm: summary.json and its config
    checkpoint(out / "best.pth", cfg, epoch=1)  # the best epoch was 1 of 2
    behind = ask(out, epochs=3)
    assert behind.kind == REFUSED and "behind the run's results (metrics.csv has epochs up to 2)" in behind.reason
    checkpoint(out / "best.pth", cfg, epoch=2)  # the last epoch was the best
    assert ask(out).kind == DONE
    verdict = ask(out, epochs=3)
    assert verdict.kind == RESUME and verdict.checkpoint == out / "best.pth"
    assert RunDir(out).verdict_new().kind == REFUSED


def test_a_checkpoint_named_behind_the_folders_last_pth_is_refused(out) -> None:
    cfg = a_run(out, epochs_done=2)
    checkpoint(out / "best.pth", cfg, epoch=1)
    verdict = ask(out / "best.pth", epochs=3)
    assert verdict.kind == REFUSED and f"{out / 'last.pth'} is at epoch 2" in verdict.reason
    assert ask(out / "last.pth").kind == FINISH


def test_nan_weights_and_foreign_checkpoints_are_refused(out) -> None:
    cfg = a_run(out, epochs_done=1)
    checkpoint(out / "last.pth", cfg, epoch=1, weight=float("nan"))
    assert ask(out).kind == REFUSED and "inf/nan" in ask(out).reason
    torch.save({"weights": 1}, out / "last.pth")
    assert ask(out).kind == REFUSED and "not a dali-train checkpoint" in ask(out).reason
    assert ask(out / "gone.pth").kind == REFUSED and "not found" in ask(out / "gone.pth").reason
