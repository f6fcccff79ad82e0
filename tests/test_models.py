"""The model zoo: shapes, sizes, option checks, stochastic depth semantics, channels_last and bf16 autocast."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from dali_pipes.errors import ConfigError
from training.recipe.models import CIFAR_STEM_MAX_SIZE, CIFAR_STEM_MODELS, MODELS, DropPath, create_model

# Measured once and pinned, so an accidental architecture change (a max-pool, a width, a shortcut) shows up here.
PARAMS = {
    ("resnet18", 10): 11_173_962,  # kuangliu/pytorch-cifar ResNet18 reports the same 11,173,962
    ("resnet18", 100): 11_220_132,
    ("resnet20", 10): 272_474,  # 269,722 with option-A shortcuts + 2,752 for the two 1x1-conv/BN projections
    ("resnet20", 100): 278_324,
}
BLOCKS = {"resnet18": 8, "tv_resnet18": 8, "resnet20": 9, "resnet50": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches here are tiny, so intra-op threads buy nothing; on a busy 2-core box OpenMP barriers then wait for a
    descheduled thread and a ResNet-20 forward goes from ~10 ms to ~900 ms. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(_images(3))
    assert out.shape == (3, num_classes) and out.dtype == torch.float32


@pytest.mark.parametrize("num_classes", [10, 100])
def test_parameter_counts(num_classes: int) -> None:
    assert _n_params(create_model("resnet18", num_classes=num_classes)) == PARAMS["resnet18", num_classes]
    r20 = _n_params(create_model("resnet20", num_classes=num_classes))
    assert r20 == PARAMS["resnet20", num_classes]
    if num_classes == 10:
        assert 260_000 <= r20 <= 280_000  # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters
    tv = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    assert _n_params(create_model("tv_resnet18", num_classes=num_classes)) == _n_params(tv)


def test_tv_resnet18_is_torchvisions_network() -> None:
    """Same names and shapes as torchvision.models.resnet18, and the same function of the same weights."""
    ours = create_model("tv_resnet18", drop_path=0.3).eval()
    ref = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_resnet50_is_torchvisions_network_randomly_initialised() -> None:
    """Same names and shapes as torchvision.models.resnet50 (25.56M parameters at 1000 classes), the same function
    of the same weights, and fresh random weights (nothing downloaded): two builds differ."""
    ours = create_model("resnet50", num_classes=1000, drop_path=0.2).eval()
    ref = torchvision.models.resnet50(weights=None).eval()
    assert _n_params(ours) == _n_params(ref) == 25_557_032
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    torch.manual_seed(1)
    a = create_model("resnet50").conv1.weight
    torch.manual_seed(2)
    assert not torch.equal(a, create_model("resnet50").conv1.weight)


@pytest.mark.parametrize("name", CIFAR_STEM_MODELS)
def test_cifar_stem_models_are_refused_above_64_pixels_saying_why(name: str) -> None:
    assert create_model(name, image_size=CIFAR_STEM_MAX_SIZE) is not None
    with pytest.raises(ConfigError) as info:
        create_model(name, image_size=224)
    message = str(info.value)
    assert message.startswith(f"model={name!r} has a CIFAR stem") and "49x" in message
    assert "tv_resnet18 or resnet50" in message and "\n" not in message


@pytest.mark.parametrize("name", ["tv_resnet18", "resnet50"])
def test_imagenet_stem_models_take_224_pixels(name: str) -> None:
    model = create_model(name, image_size=224).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_resnet18_is_the_cifar_variant() -> None:
    """3x3 stride-1 stem and no max-pool: the first stage works on the full 32x32 grid."""
    model = create_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    seen: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = out.shape
        return hook

    model.layer1.register_forward_hook(record("layer1"))
    model.layer4.register_forward_hook(record("layer4"))
    with torch.no_grad():
        model.eval()(_images())
    assert seen == {"layer1": (2, 64, 32, 32), "layer4": (2, 512, 4, 4)}


def test_unknown_model_is_refused_saying_where_valid_names_are() -> None:
    for name in ("resnet34x", "tv_resnet34x", "hf-hub:timm/resnet18.a1_in1k", None):
        with pytest.raises(ConfigError, match=r"^--model .* is unknown: use one of resnet18, tv_resnet18, resnet20, "
                                              r"resnet50, a timm model name .*timm.list_models.*list_models") as e:
            create_model(name)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_bad_drop_path_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigError, match="drop_path"):
        create_model("resnet20", drop_path=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="drop_path"):
        DropPath(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1, 0, -3, 10.0, True])
def test_bad_num_classes_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_is_identity_in_eval(name: str) -> None:
    """Same weights, eval mode: drop_path=0.5 gives bit-identical outputs to drop_path=0 (no rescaling at test)."""
    torch.manual_seed(0)
    dropped = create_model(name, drop_path=0.5)
    plain = create_model(name, drop_path=0.0)
    plain.load_state_dict(dropped.state_dict())  # DropPath has no state: the two state dicts have the same keys
    x = _images(4)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
        # ...while in train mode the dropped branches do change the output (sanity: DropPath is really wired in).
        torch.manual_seed(1)
        assert not torch.allclose(dropped.train()(x), plain.train()(x))


def test_drop_path_keeps_the_expectation_and_drops_whole_samples() -> None:
    """Module level, train mode, N samples of the same input x.

    Each sample is multiplied by m_i = 0 (prob p) or 1/(1-p) (prob 1-p), so E[m] = 1, Var[m] = p/(1-p), and the
    sample mean of m has std sqrt(p/((1-p)N)) = 1.46e-3 for p=0.3, N=200k; the dropped fraction has std
    sqrt(p(1-p)/N) = 1.02e-3. Tolerances are 5 sigma (a false failure every ~1.7 million unseeded runs).
    """
    p, n = 0.3, 200_000
    base = torch.arange(1, 9, dtype=torch.float32).reshape(1, 2, 2, 2)  # positive: zero means dropped
    x = base.expand(n, 2, 2, 2)
    torch.manual_seed(0)
    out = DropPath(p).train()(x)
    dropped = (out == 0).flatten(1)
    assert torch.equal(dropped.all(1), dropped.any(1))  # per sample: all of a sample's values go, or none
    frac = dropped.all(1).float().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    kept = out[~dropped.all(1)]
    torch.testing.assert_close(kept, (base / (1 - p)).expand_as(kept))  # kept samples are scaled by 1/(1-p)
    tol = 5 * math.sqrt(p / ((1 - p) * n))
    torch.testing.assert_close(out.mean(0, keepdim=True), base, rtol=tol, atol=0)


def test_drop_path_module_modes() -> None:
    x = torch.randn(16, 4, 3, 3)
    assert DropPath(0.7).eval()(x) is x  # eval: identity, not even a copy
    assert DropPath(0.0).train()(x) is x  # p=0: no RNG draw at all
    torch.manual_seed(0)
    out = DropPath(0.5).train()(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", MODELS)
def test_drop_rates_increase_linearly_with_depth(name: str) -> None:
    rates = [m.drop_prob for m in create_model(name, drop_path=0.2).modules() if isinstance(m, DropPath)]
    n = BLOCKS[name]
    assert len(rates) == n  # one DropPath per residual block
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx([0.2 * i / (n - 1) for i in range(n)])
    assert all(m.drop_prob == 0.0 for m in create_model(name).modules() if isinstance(m, DropPath))


def test_init_is_kaiming_and_bn_is_identity() -> None:
    model = create_model("resnet18")
    conv = model.layer4[1].conv2  # 512*3*3 fan_out: plenty of weights for a tight std estimate
    expected = math.sqrt(2.0 / (conv.out_channels * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, drop_path=0.1)
    x = _images(4)
    with torch.no_grad():
        ref = model.eval()(x)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out_eval = model(x)
            out_train = model.train()(x)
    for out in (out_eval, out_train):
        assert out.dtype == torch.bfloat16 and out.shape == (4, 10) and torch.isfinite(out).all()
    # bf16 keeps 8 mantissa bits: ~0.4% per op, so a few % after ~20 layers; a broken graph would be far off.
    assert (out_eval.float() - ref).norm() <= 0.05 * ref.norm()


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = create_model(name, drop_path=0.1).eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert model_cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = _images(4)
    with torch.no_grad():
        # Only the conv kernels' summation order differs between layouts: fp32 rounding, nothing more.
        torch.testing.assert_close(model_cl(x.to(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, drop_path=0.2).train().to(memory_format=torch.channels_last)
    x = _images(4).to(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.fc.weight.grad.abs().sum() > 0 and model.conv1.weight.grad.abs().sum() > 0
