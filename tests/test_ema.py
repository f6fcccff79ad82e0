"""The EMA of the weights (training/recipe/ema.py): against a by-hand reference, its warm-up, its interval; in a run:
the metrics.csv columns, best.pth scored by the better weights, dali-eval --weights, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter

from training import loop as run_mod
from training.outputs import read_metrics
from training.loop.checkpoint import load_checkpoint, save_checkpoint
from training.cli import eval_main
from training.config import TrainConfig
from training.recipe.ema import ModelEma, warmup_decay


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))


def _train_steps(model: torch.nn.Module, ema: ModelEma, steps: int, *, seen=None) -> list[bool]:
    """`steps` SGD steps on random data, the EMA updated after each (as train_one_epoch does); `seen(n)` after each.
    Returns what each update returned (whether it averaged)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    model.train()
    done = []
    for n in range(1, steps + 1):
        x = torch.randn(8, 4, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        done.append(ema.update(n))
        if seen is not None:
            seen(n)
    return done


@pytest.mark.parametrize("every, warmup", [(1, False), (3, True), (2, False)])
def test_the_ema_equals_a_reference_computed_by_hand(every: int, warmup: bool) -> None:
    decay = 0.8
    model = _tiny_model()
    ema = ModelEma(model, decay=decay, every=every, warmup=warmup)
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the EMA starts as the model

    def follow(n: int) -> None:
        if n % every:
            return
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        d = d**every  # one update stands for `every` steps
        for k, w in model.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * w if w.is_floating_point() else w.clone()

    _train_steps(model, ema, 9, seen=follow)
    got = ema.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=1e-5, atol=1e-6), k
    # it is an average, not a copy: the running mean (a buffer) and the weights differ from the model's
    assert not torch.allclose(got["1.running_mean"], model.state_dict()["1.running_mean"])
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])
    assert got["1.num_batches_tracked"] == 9 - 9 % every  # integer buffers are copied (at the last update)


def test_the_warmup_decay_grows_from_one_tenth_to_the_decay() -> None:
    assert warmup_decay(0.9998, 0) == pytest.approx(0.1)
    assert warmup_decay(0.9998, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.9998, 10**6) == 0.9998
    # reached after (10 d - 1) / (1 - d) steps: 44,990 for 0.9998 (the README's figure)
    assert warmup_decay(0.9998, 44_990) == 0.9998 and warmup_decay(0.9998, 44_980) < 0.9998
    model = _tiny_model()
    assert ModelEma(model, decay=0.99, warmup=True).decay_at(5) == pytest.approx(6 / 15)
    assert ModelEma(model, decay=0.99, warmup=False).decay_at(5) == 0.99


def test_the_ema_is_updated_every_n_steps_only() -> None:
    model = _tiny_model()
    ema = ModelEma(model, decay=0.5, every=4, warmup=False)
    snapshots = {}

    def seen(n: int) -> None:
        snapshots[n] = {k: v.clone() for k, v in ema.state_dict().items()}

    done = _train_steps(model, ema, 9, seen=seen)
    assert done == [n % 4 == 0 for n in range(1, 10)]
    unchanged = [all(torch.equal(snapshots[n][k], snapshots[n - 1][k]) for k in snapshots[n])
                 for n in range(2, 10)]
    assert unchanged == [True, True, False, True, True, True, False, True]  # steps 2..9: moved at 4 and 8


def test_the_ema_decay_per_step_is_kept_whatever_the_interval() -> None:
    # after 12 steps of a constant model, the share of the initial weights is decay**12 for every interval
    for every in (1, 3, 4):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        ema = ModelEma(model, decay=0.9, every=every, warmup=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        for n in range(1, 13):
            ema.update(n)
        assert float(ema.module.weight) == pytest.approx(0.9**12, rel=1e-6), every


def test_ema_options_are_validated_in_one_line() -> None:
    from dali_pipes import ConfigError

    for changes, option in [({"ema_decay": 1.0}, "--ema-decay"), ({"ema_decay": -0.1}, "--ema-decay"),
                            ({"ema_every": 0}, "--ema-every"), ({"ema_warmup": "yes"}, "--ema-warmup")]:
        with pytest.raises(ConfigError, match=option):
            TrainConfig(**changes)


# --- in a run ------------------------------------------------------------------------------------------------------

def _cfg(out: Path, **changes) -> TrainConfig:
    base = dict(dataset="synthetic", model="resnet20", batch_size=32, num_samples=256, epochs=2, opt="adamw", lr=1e-3,
                warmup_epochs=0.5, augment="none", mixup_alpha=0.0, cutmix_alpha=0.0, output=str(out),
                num_threads=2, patience=0, device="cpu", amp=False, ema_decay=0.9, ema_every=2)
    return TrainConfig(**(base | changes))


def _eval(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(eval_main, [*args, "--device", "cpu", "--num-threads", "2"])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ema") / "run"
    run_mod.fit(_cfg(out), log=lambda *_: None)
    return out


@pytest.mark.slow
def test_a_run_with_ema_writes_its_columns_and_checkpoints_and_dali_eval_reads_either(ema_run: Path) -> None:
    rows = read_metrics(ema_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["ema_val_acc"] <= 1.0 and math.isfinite(r["ema_val_loss"]) for r in rows)
    last = load_checkpoint(ema_run / "last.pth")
    assert set(last["ema"]) == set(last["model"])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])
    summary = json.loads((ema_run / "summary.json").read_text())
    best_row = rows[summary["best_epoch"] - 1]
    better = "ema" if best_row["ema_val_acc"] > best_row["val_acc"] else "model"
    assert summary["best_weights"] == better
    assert summary["best_val_acc"] == max(best_row["val_acc"], best_row["ema_val_acc"])
    # dali-eval: by default best.pth's chosen weights (what the run reloaded), else the asked ones
    code, text = _eval(["--checkpoint", str(ema_run)])
    assert code == 0, text
    default = json.loads(text.strip().splitlines()[-1])
    assert default["weights"] == better
    assert default["val_acc"] == pytest.approx(summary["best_reloaded_val_acc"])
    for weights, column in (("model", "val_acc"), ("ema", "ema_val_acc")):
        code, text = _eval(["--checkpoint", str(ema_run / "best.pth"), "--weights", weights])
        assert code == 0, text
        assert json.loads(text.strip().splitlines()[-1])["val_acc"] == pytest.approx(best_row[column]), weights


@pytest.mark.slow
def test_best_pth_holds_the_ema_when_it_scores_better(tmp_path, ema_run: Path) -> None:
    # A run whose raw weights cannot move (lr 1e-9) and whose EMA holds ema_run's trained weights and barely
    # moves (decay 0.99999, no warm-up): the EMA scores better, so best.pth is scored by it and reloaded as it.
    trained = load_checkpoint(ema_run / "best.pth")["model"]

    def build(cfg, **kwargs):
        run = run_mod.build_run(cfg, **kwargs)
        run.ctx.ema.module.load_state_dict(trained)
        return run

    out = tmp_path / "run"
    summary = run_mod.fit(_cfg(out, epochs=1, lr=1e-9, ema_decay=0.99999, ema_warmup=False), log=lambda *_: None,
                          build=build)
    row = read_metrics(out / "metrics.csv")[0]
    assert row["ema_val_acc"] >= row["val_acc"] + 0.2, row  # trained weights against the initial ones
    assert summary["best_weights"] == "ema" and summary["best_val_acc"] == row["ema_val_acc"]
    assert summary["best_reloaded_val_acc"] == pytest.approx(row["ema_val_acc"])
    best = load_checkpoint(out / "best.pth")
    assert best["best_weights"] == "ema"
    code, text = _eval(["--checkpoint", str(out)])
    assert code == 0 and json.loads(text.strip().splitlines()[-1])["weights"] == "ema", text


@pytest.mark.slow
def test_a_mid_epoch_resume_continues_the_ema_bit_identically(tmp_path) -> None:
    straight = run_mod.build_run(_cfg(tmp_path / "a", ema_every=3))
    run_mod.train_epochs(straight, StopAfter(10**9), log=lambda *_: None)
    cfg = _cfg(tmp_path / "b", ema_every=3)
    interrupted = run_mod.build_run(cfg)
    with pytest.raises(run_mod.Interrupted):
        # 8 steps per epoch and a poll at its end: the 14th poll is step 5 of epoch 2 (13 steps, not a multiple of 3)
        run_mod.train_epochs(interrupted, StopAfter(14), log=lambda *_: None)
    state = load_checkpoint(tmp_path / "b" / "last.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 5, 13)
    resumed = run_mod.build_run(cfg, run_dir=tmp_path / "b")
    resumed.load_state(state)
    run_mod.train_epochs(resumed, StopAfter(10**9), log=lambda *_: None)
    a, b = straight.ctx.ema.state_dict(), resumed.ctx.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = [r["ema_val_acc"] for r in read_metrics(tmp_path / "a" / "metrics.csv")]
    assert ema_a == [r["ema_val_acc"] for r in read_metrics(tmp_path / "b" / "metrics.csv")]


def test_weights_ema_is_refused_for_a_checkpoint_without_an_ema(tmp_path) -> None:
    from training.recipe.models import create_model

    path = tmp_path / "best.pth"
    save_checkpoint({"config": TrainConfig(dataset="synthetic", model="resnet20").to_dict(),
                     "model": create_model("resnet20", num_classes=10).state_dict(), "epoch": 1}, path)
    code, text = _eval(["--checkpoint", str(path), "--weights", "ema"])
    assert code == 2 and "--weights ema" in text and "--weights model" in text and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1


@pytest.mark.gpu
def test_an_ema_update_on_the_gpu_waits_for_nothing() -> None:
    from training.recipe.models import create_model

    model = create_model("resnet20", num_classes=10).cuda().to(memory_format=torch.channels_last)
    ema = ModelEma(model, decay=0.999, every=1, warmup=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        for n in range(1, 5):
            ema.update(n)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    weight = ema.module.conv1.weight
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)
    # the average moved from the initial weights toward the shifted ones, and is neither
    share = 1 - (2 / 11) * (3 / 12) * (4 / 13) * (5 / 14)  # 1 - the product of the warm-up decays (n = 1..4)
    assert torch.allclose(weight, model.conv1.weight - 1.0 + share, atol=1e-5)
