"""The training step: the LR as a pure function of the step, the scaler step through GradScaler's public API
(scale -> backward -> unscale -> clip -> step -> update), skipped-step counting, and old checkpoints resuming."""

from __future__ import annotations

import math
from collections.abc import Callable
import os

import pytest
import torch
from helpers import HostReads, StopAfter

from training import loop as run_mod
from training.loop.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.recipe.engine import StepContext, scaler_step, train_one_epoch
from training.recipe.factory import create_optimizer
from training.recipe.mixing import MixConfig, Mixer


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


# -- host reads per step ------------------------------------------------------------------------------------------
def _small_context(device: torch.device, *, fused: bool, mix: bool) -> StepContext:
    """A StepContext as step_context builds it for fp16 (GradScaler enabled), around a small conv net; `fused`:
    the optimizer create_optimizer builds, else the same SGD without fused kernels."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).to(device)
    cfg = TrainConfig(lr=0.05)
    opt = (create_optimizer(cfg, model) if fused else
           torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, foreach=True))
    mixer = Mixer(MixConfig(mixup_alpha=0.2 if mix else 0.0, cutmix_alpha=1.0 if mix else 0.0, mode="elem",
                            label_smoothing=0.1, num_classes=10), generator=torch.Generator().manual_seed(1))
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return StepContext(model, opt, lambda step: 0.05, torch.amp.GradScaler(device.type, enabled=True), mixer,
                       device, amp_dtype, channels_last=False, clip_grad=1.0)


def _device_batches(device: torch.device, n: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(batch, 3, 8, 8, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g)
             .to(device)) for _ in range(n)]


def _reads_per_step(ctx_for, device: torch.device) -> float:
    """Host reads of one step: the difference between an epoch of 6 steps and one of 2 (the end of an epoch reads
    its sums once, whatever its length)."""
    counts = []
    for steps in (2, 6):
        ctx, batches = ctx_for(), _device_batches(device, steps)
        with HostReads() as reads:
            stats = train_one_epoch(ctx, batches, log_every=10**9)
        assert stats["steps"] == steps
        counts.append(reads.count)
    return (counts[1] - counts[0]) / 4


@pytest.mark.parametrize("mix", [False, True])
def test_an_fp16_step_reads_nothing_on_the_host_with_the_built_optimizer(mix) -> None:
    # Before this change: 3 reads per fp16 step (get_scale() twice, GradScaler's found_inf.item() once).
    cpu = torch.device("cpu")
    assert _reads_per_step(lambda: _small_context(cpu, fused=True, mix=mix), cpu) == 0


def test_the_counter_sees_gradscalers_read_when_the_optimizer_cannot_skip_on_the_device() -> None:
    # Without fused kernels GradScaler reads found_inf on the host to decide whether to call step(): the counting
    # double must see it, or the zero above would prove nothing.
    cpu = torch.device("cpu")
    assert _reads_per_step(lambda: _small_context(cpu, fused=False, mix=False), cpu) == 1


def test_a_skipped_first_fp16_step_leaves_the_built_sgd_as_stock_sgd() -> None:
    # Fused SGD leaves its first step's momentum buffers uninitialised when found_inf skips it; create_optimizer
    # zeroes them. Two steps, the first overflowing: the built (fused) SGD must end bit-equal to foreach SGD.
    cfg = TrainConfig(lr=0.1)
    ends = []
    for fused in (True, False):
        torch.manual_seed(0)
        layer = torch.nn.Linear(64, 64)
        opt = (create_optimizer(cfg, layer) if fused else torch.optim.SGD(
            layer.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True))
        scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
        skips = []
        for x in (torch.full((2, 64), math.inf), torch.ones(2, 64)):
            opt.zero_grad(set_to_none=True)
            skips.append(bool(scaler_step(layer(x).sum(), opt, scaler, params=list(layer.parameters()))[1]))
        assert skips == [True, False]
        ends.append([p.detach().clone() for p in layer.parameters()])
    assert all(torch.isfinite(p).all() for p in ends[0])
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def _under_sync_debug_error(batches):
    """Yields `batches` with CUDA's sync-debug mode at "error" from the first batch to the last: every step of the
    epoch runs under it, and the epoch's end (one synchronize and the sums' reads) after it."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield from batches
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.gpu
@pytest.mark.parametrize("mix", [False, True])
def test_an_fp16_cuda_epoch_makes_no_host_sync(mix) -> None:
    """A full fp16 epoch (fused SGD, clipping, skipped-step counting, with and without per-sample mixing) where
    any synchronising call of a step raises."""
    device = torch.device("cuda")
    ctx, batches = _small_context(device, fused=True, mix=mix), _device_batches(device, 8)
    assert ctx.scaler.is_enabled() and ctx.amp_dtype is torch.float16
    torch.cuda.synchronize()
    try:
        stats = train_one_epoch(ctx, _under_sync_debug_error(batches), log_every=10**9)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats["steps"] == 8 and stats["images"] == 8 * 16


# -- kernel choice -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [False, True])
def test_kernel_settings_apply_for_the_run_and_are_restored(monkeypatch, deterministic) -> None:
    from training.recipe.factory import CUBLAS_DETERMINISTIC, kernel_settings

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with kernel_settings(deterministic=deterministic):
        assert cudnn.benchmark is not deterministic and cudnn.deterministic is deterministic
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == CUBLAS_DETERMINISTIC) is deterministic
    assert (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_is_an_option_of_the_config_and_the_cli() -> None:
    from click.testing import CliRunner

    from dali_pipes import ConfigError
    from training.cli import main

    assert TrainConfig().deterministic is False and TrainConfig(deterministic=True).deterministic is True
    with pytest.raises(ConfigError, match="--deterministic"):
        TrainConfig(deterministic="yes")
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "--deterministic / --no-deterministic" in help_text and "no-deterministic]" in help_text


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_deterministic_run_resumes_bit_for_bit(tmp_path, device) -> None:
    cfg = _tiny(tmp_path / "straight", device=device, deterministic=True, mixup_alpha=0.2, cutmix_alpha=1.0,
                augment="standard")
    run_mod.fit(cfg, log=lambda *_: None, stop=StopAfter(10**9))
    with pytest.raises(run_mod.Interrupted):
        run_mod.fit(cfg.replace(output=str(tmp_path / "chain")), log=lambda *_: None, stop=StopAfter(3))
    run_mod.resume(tmp_path / "chain", log=lambda *_: None, stop=StopAfter(10**9))
    straight = load_checkpoint(tmp_path / "straight" / "last.pth")["model"]
    resumed = load_checkpoint(tmp_path / "chain" / "last.pth")["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


# -- --compile -----------------------------------------------------------------------------------------------------
class CountingBackend:
    """A torch.compile backend (the public hook) that runs the captured graph eagerly and records, per compile, the
    batch size of the images it was captured with and whether the graph takes a symbolic size (dynamo passes a
    symbolic dimension as an extra non-tensor input)."""

    def __init__(self, image_shape: tuple[int, ...]) -> None:
        self.image_shape = image_shape
        self.compiles: list[tuple[int, bool]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        images = [x for x in example_inputs if isinstance(x, torch.Tensor) and tuple(x.shape[1:]) == self.image_shape]
        symbolic = any(not isinstance(x, torch.Tensor) for x in example_inputs)
        self.compiles.append((images[0].shape[0], symbolic))
        return gm.forward


def test_compile_keeps_static_shapes_and_compiles_each_batch_shape_once() -> None:
    from training.recipe.factory import compile_model

    torch._dynamo.reset()  # other tests' compiled frames must not count here
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    backend = CountingBackend((3, 8, 8))
    net = compile_model(model, backend=backend)
    for n in (16, 16, 5, 16, 5, 16):  # epochs of full batches and a short last one
        net(torch.randn(n, 3, 8, 8))
    # two compiles, each specialised to its batch size; without dynamic=False the second is symbolic
    assert backend.compiles == [(16, False), (5, False)]
