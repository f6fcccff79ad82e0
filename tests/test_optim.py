"""--opt sgd|adamw: which parameters decay, the defaults each optimizer resolves into the saved config, refused
conflicts, the LR schedule written into both of AdamW's groups, and a tiny AdamW run that learns."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import StopAfter

from training import loop as run_mod
from training.loop.checkpoint import load_checkpoint
from training.cli import main
from training.config import TrainConfig
from training.recipe.engine import StepContext, set_lr
from training.recipe.factory import create_optimizer, decay_groups
from training.recipe.models import create_model

TINY = ["--dataset", "synthetic", "--model", "resnet20", "--batch-size", "64", "--num-threads", "2"]


def test_adamw_decays_conv_and_linear_weights_only() -> None:
    model = create_model("resnet20", num_classes=10)
    opt = create_optimizer(TrainConfig(opt="adamw"), model)
    assert isinstance(opt, torch.optim.AdamW)
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in exempt["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    # counted from the modules: every conv and linear weight decays; every BatchNorm weight and bias, and every
    # conv/linear bias, does not (ResNet-20: 22 and 43); every parameter is in exactly one group
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    biases = sum(m.bias is not None for m in layers)
    assert len(decayed["params"]) == len(layers) == 22
    assert len(exempt["params"]) == 2 * len(norms) + biases == 43
    assert "fc.bias" in exempt_names and "fc.weight" not in exempt_names
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def test_sgd_is_the_seed_recipe_one_group_that_all_decays() -> None:
    model = create_model("resnet20", num_classes=10)
    opt = create_optimizer(TrainConfig(), model)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.9, 5e-4, True)
    assert len(group["params"]) == len(list(model.parameters()))


def test_decay_groups_skip_frozen_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[0].weight.requires_grad_(False)
    decayed, exempt = decay_groups(model, 0.1)
    assert decayed["params"] == [] and len(exempt["params"]) == 3


def test_the_schedule_writes_one_lr_into_both_groups() -> None:
    model = create_model("resnet20", num_classes=10)
    opt = create_optimizer(TrainConfig(opt="adamw"), model)
    set_lr(opt, 0.0123)
    assert [g["lr"] for g in opt.param_groups] == [0.0123, 0.0123]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    # the step's parameter list covers both groups (clipping sees every gradient)
    ctx = StepContext(model, opt, lambda k: 0.1, torch.amp.GradScaler("cpu", enabled=False), None,
                      torch.device("cpu"), None, False)
    assert len(ctx.params) == len(list(model.parameters()))


def test_each_optimizer_resolves_its_defaults_and_the_config_round_trips() -> None:
    sgd, adamw = TrainConfig(), TrainConfig(opt="adamw")
    assert (sgd.lr_base, sgd.weight_decay, sgd.momentum, sgd.nesterov) == (0.1, 5e-4, 0.9, True)
    assert (adamw.lr_base, adamw.weight_decay, adamw.momentum, adamw.nesterov) == (1e-3, 0.05, None, False)
    for cfg in (sgd, adamw, TrainConfig(opt="adamw", lr=3e-3, weight_decay=0.1)):
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)  # what config.yaml holds
        assert TrainConfig.from_dict(yaml.safe_load(text)) == cfg
    # a config written before --opt existed (no "opt" key) is SGD with its saved values
    old = {k: v for k, v in sgd.to_dict().items() if k not in ("opt", "ema_decay", "ema_every", "ema_warmup")}
    assert TrainConfig.from_dict(old) == sgd
    # switching optimizer re-resolves what it sets, unless given
    assert sgd.replace(opt="adamw") == adamw and sgd.replace(opt="adamw", lr=2e-3).lr == 2e-3
    assert adamw.replace(opt="sgd") == sgd


@pytest.mark.parametrize("args, option", [
    (["--opt", "adamw", "--nesterov"], "--nesterov"),
    (["--opt", "adamw", "--momentum", "0.9"], "--momentum"),
    (["--opt", "lion"], "--opt"),
    (["--opt", "adamw", "--weight-decay", "-1"], "--weight-decay"),
])
def test_conflicting_or_bad_optimizer_options_are_refused_in_one_line(tmp_path, args, option) -> None:
    result = CliRunner().invoke(main, [*TINY, "--output", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 or "Usage" in result.output  # click's own refusal
    assert not (tmp_path / "run").exists()


def test_adamw_without_momentum_options_is_accepted_and_no_nesterov_is_no_conflict() -> None:
    assert TrainConfig(opt="adamw", nesterov=False).nesterov is False


@pytest.mark.slow
def test_a_tiny_adamw_run_learns_and_saves_its_resolved_optimizer(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [*TINY, "--num-samples", "768", "--epochs", "2", "--opt", "adamw",
                                       "--warmup-epochs", "0.5", "--augment", "none", "--mixup-alpha", "0",
                                       "--cutmix-alpha", "0", "--no-amp", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["opt"], saved["lr_base"], saved["weight_decay"], saved["momentum"]) == ("adamw", 1e-3, 0.05, None)
    assert saved["lr"] == pytest.approx(1e-3 * (saved["batch_size"] / 128) ** 0.5)  # AdamW: the square-root rule
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_reloaded_val_acc"] >= 0.5, summary  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_an_adamw_run_resumes_mid_epoch_onto_the_straight_run(tmp_path) -> None:
    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=32, num_samples=128, epochs=2, opt="adamw",
                      warmup_epochs=1.0, augment="weak", output=str(tmp_path / "a"), num_threads=2, patience=0,
                      device="cpu")
    straight = run_mod.build_run(cfg)
    run_mod.train_epochs(straight, StopAfter(10**9), log=lambda *_: None)
    cfg_b = cfg.replace(output=str(tmp_path / "b"))
    interrupted = run_mod.build_run(cfg_b)
    with pytest.raises(run_mod.Interrupted):
        run_mod.train_epochs(interrupted, StopAfter(6), log=lambda *_: None)  # batch 2 of epoch 2 (4 per epoch)
    resumed = run_mod.build_run(cfg_b, run_dir=tmp_path / "b")
    resumed.load_state(load_checkpoint(tmp_path / "b" / "last.pth"))
    assert resumed.state.batch == 1 and len(resumed.ctx.optimizer.state) > 0  # AdamW's moments came back
    run_mod.train_epochs(resumed, StopAfter(10**9), log=lambda *_: None)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_peak_lr_is_lr_base_scaled_to_the_global_batch_unless_given() -> None:
    # --lr-base is per 128 images: linear for SGD, square root for AdamW; --lr is taken as it is. The run resolves
    # it with its world size (factory.resolved_config), so config.yaml holds the LR used.
    import math

    from dali_pipes import ConfigError
    from training.recipe.factory import resolved_config

    assert TrainConfig(batch_size=128).scaled_lr() == pytest.approx(0.1)
    assert TrainConfig(batch_size=256).scaled_lr(4) == pytest.approx(0.1 * 8)
    assert TrainConfig(opt="adamw", batch_size=64).scaled_lr(8) == pytest.approx(1e-3 * math.sqrt(4))
    assert TrainConfig(lr_base=0.05, batch_size=32).scaled_lr(2) == pytest.approx(0.05 * 0.5)
    assert TrainConfig(lr=0.3, batch_size=256).scaled_lr(16) == 0.3
    resolved = resolved_config(TrainConfig(batch_size=32, device="cpu", num_threads=1), torch.device("cpu"), 2)
    assert resolved.lr == pytest.approx(0.1 * 64 / 128) and resolved.lr_base == 0.1
    with pytest.raises(ConfigError, match="--lr-base"):
        TrainConfig(lr_base=0.0)
