"""The training step: the LR as a pure function of the step, the scaler step through GradScaler's public API
(scale -> backward -> unscale -> clip -> step -> update), skipped-step counting, and old checkpoints resuming."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import StopAfter

from training import run as run_mod
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.engine import scaler_step


def _tiny(out, **changes) -> TrainConfig:
    base = dict(dataset="synthetic", model="resnet20", batch_size=64, num_samples=256, epochs=2, lr=0.05,
                warmup_epochs=1.0, augment="none", mixup_alpha=0.0, cutmix_alpha=0.0, output=str(out),
                num_threads=2, patience=0)
    return TrainConfig(**(base | changes))


def _linear() -> tuple[torch.nn.Linear, torch.optim.SGD]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    return layer, torch.optim.SGD(layer.parameters(), lr=0.1)


def test_clipping_bounds_the_grad_norm_and_returns_the_norm_before_it() -> None:
    layer, opt = _linear()
    params = list(layer.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = 1000.0 * layer(torch.ones(2, 4)).sum()
    norm, skipped = scaler_step(loss, opt, scaler, params=params, clip_grad=1.0)
    assert not skipped and float(norm) > 1.0
    # what the optimizer stepped with: the clipped gradients, of norm 1
    assert float(torch.nn.utils.get_total_norm([p.grad for p in params])) == pytest.approx(1.0, rel=1e-4)


def test_no_clipping_computes_no_norm() -> None:
    layer, opt = _linear()
    before = [p.detach().clone() for p in layer.parameters()]
    norm, skipped = scaler_step(layer(torch.ones(2, 4)).sum(), opt, torch.amp.GradScaler("cpu", enabled=False),
                                params=list(layer.parameters()))
    assert norm is None and not skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # the optimizer stepped


def test_an_overflowing_fp16_step_is_skipped_and_counted_with_the_clip_on() -> None:
    layer, opt = _linear()
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
    before = [p.detach().clone() for p in layer.parameters()]
    loss = layer(torch.full((2, 4), math.inf)).sum()
    norm, skipped = scaler_step(loss, opt, scaler, params=list(layer.parameters()), clip_grad=1.0)
    assert skipped and not math.isfinite(float(norm))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # no update
    assert scaler.get_scale() == 2.0**9  # backed off
    opt.zero_grad()
    norm, skipped = scaler_step(layer(torch.ones(2, 4)).sum(), opt, scaler, params=list(layer.parameters()))
    assert not skipped


@pytest.mark.slow
def test_the_lr_in_the_param_groups_is_the_schedule_at_the_step(tmp_path) -> None:
    run = run_mod.build_run(_tiny(tmp_path / "run"))
    steps = len(run.train_loader)
    run_mod.train_epochs(run, StopAfter(10**9), log=lambda *_: None)
    assert run.state.step == 2 * steps
    # the last step taken was step 2*steps-1: its LR is what the optimizer holds
    assert run.ctx.optimizer.param_groups[0]["lr"] == run.ctx.lr_at(2 * steps - 1)
    assert run.ctx.lr_at(0) == pytest.approx(0.05 / steps)  # warmup from 0 over one epoch
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["step"] == 2 * steps and "scheduler" not in state


@pytest.mark.slow
def test_a_checkpoint_with_a_scheduler_entry_still_resumes_at_its_step(tmp_path) -> None:
    cfg = _tiny(tmp_path / "run")
    run = run_mod.build_run(cfg)
    with pytest.raises(run_mod.Interrupted):
        run_mod.train_epochs(run, StopAfter(2), log=lambda *_: None)
    path = tmp_path / "run" / "last.pth"
    state = load_checkpoint(path)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 2, 2)
    # what checkpoints written with a LambdaLR hold besides "step"
    state["scheduler"] = {"base_lrs": [0.05], "last_epoch": 2, "_step_count": 3, "_last_lr": [0.05 * 3 / 4]}
    del state["format"]
    save_checkpoint(state, path)
    resumed = run_mod.build_run(cfg.replace(epochs=3), run_dir=tmp_path / "run")
    resumed.load_state(load_checkpoint(path))
    assert resumed.state.step == 2
    run_mod.train_epochs(resumed, StopAfter(10**9), log=lambda *_: None)
    assert resumed.state.step == 3 * len(resumed.train_loader)
