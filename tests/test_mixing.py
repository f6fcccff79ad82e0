"""Mixup / CutMix (training.recipe.mixing) and the soft-target loss (training.recipe.losses): CPU, fast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dali_pipes.errors import ConfigError
from training.recipe.losses import soft_target_cross_entropy
from training.recipe.mixing import MixConfig, Mixer, MixParams, cutmix_boxes, dominant_labels

K = 10
RECIPES = {
    "mixup": dict(mixup_alpha=0.4),
    "cutmix": dict(cutmix_alpha=1.0),
    "both": dict(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5),
}


def make_batch(n: int = 8, h: int = 16, w: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, K, (n,), generator=g)


def mixer(seed: int = 0, **kw) -> Mixer:
    kw.setdefault("num_classes", K)
    return Mixer(MixConfig(**kw), generator=torch.Generator().manual_seed(seed))


def constant_batch(n: int, h: int = 16, w: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i is constant i and has label i: every pixel says which image it came from."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    return images, torch.arange(n)


# -- targets ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_targets_are_distributions(mode, recipe, eps):
    m = mixer(mode=mode, label_smoothing=eps, **RECIPES[recipe])
    images, labels = make_batch()
    saw_mixed = False
    for _ in range(6):
        out, t = m(images, labels)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert t.shape == (8, K) and t.dtype == torch.float32
        torch.testing.assert_close(t.sum(1), torch.ones(8), atol=1e-6, rtol=0)
        assert (t >= 0).all()
        saw_mixed |= bool((t.max(1).values < 1 - eps + eps / K - 1e-6).any())
    assert saw_mixed, "no step mixed anything"


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_prob_zero_is_identity_with_smoothed_one_hot(mode):
    eps = 0.1
    m = mixer(mode=mode, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, label_smoothing=eps)
    assert not m.cfg.enabled
    images, labels = make_batch()
    out, t = m(images, labels)
    assert torch.equal(out, images)
    expected = torch.full((8, K), eps / K)
    expected[torch.arange(8), labels] = 1 - eps + eps / K
    torch.testing.assert_close(t, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_forced_lambda_one_is_identity(mode, recipe):
    """Enabled mixers whose drawn lambda is 1 (Mixup weight 1, or an empty CutMix box) change nothing."""
    m = mixer(mode=mode, **RECIPES[recipe])
    images, labels = make_batch()
    n = 1 if mode == "batch" else 8
    for cut in (False, True):
        params = MixParams(lam=torch.ones(n, dtype=torch.float64), cutmix=torch.full((n,), cut),
                           centre=torch.full((n, 2), 0.5, dtype=torch.float64))
        out, t = m._apply(images, labels, params)
        assert torch.equal(out, images)
        assert torch.equal(t, F.one_hot(labels, K).float())


def test_tiny_alpha_gives_lambda_near_0_or_1():
    m = mixer(mode="elem", mixup_alpha=1e-4)
    lam = m._sample_params(400).lam
    assert ((lam < 1e-3) | (lam > 1 - 1e-3)).all()
    assert 0.3 < (lam > 0.5).double().mean() < 0.7  # Beta(a, a) is symmetric: about half at each end


def test_beta_draws_have_the_right_mean_and_variance():
    a = 0.4
    lam = mixer(mode="elem", mixup_alpha=a)._sample_params(20000).lam
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / (4 * (2 * a + 1))) < 0.01


# -- CutMix area ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("n", [2, 5, 8])
def test_cutmix_lambda_is_the_pasted_area(mode, n):
    h, w = 16, 12
    m = mixer(mode=mode, cutmix_alpha=1.0)
    images, labels = constant_batch(n, h, w)
    changed_any = False
    for _ in range(10):
        out, t = m(images, labels)
        for i in range(n):
            j = n - 1 - i
            if i == j:
                assert torch.equal(out[i], images[i])
                continue
            from_partner = (out[i] == j).all(0)  # (H, W) pixels pasted from the partner
            assert ((out[i] == i).all(0) | from_partner).all()
            share = from_partner.sum().item() / (h * w)
            changed_any |= share > 0
            assert t[i, j].item() == pytest.approx(share, abs=1e-6)
            assert t[i, i].item() == pytest.approx(1 - share, abs=1e-6)
            ys, xs = torch.nonzero(from_partner, as_tuple=True)
            if ys.numel():  # the pasted region is one rectangle
                assert ys.numel() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert changed_any


def test_cutmix_boxes_clip_to_the_image():
    lam = torch.tensor([0.0, 0.75, 0.75, 1.0], dtype=torch.float64)
    centre = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.99, 0.99], [0.5, 0.5]], dtype=torch.float64)
    boxes, corrected = cutmix_boxes(lam, centre, 16, 16)
    assert boxes.tolist() == [[0, 16, 0, 16], [0, 4, 0, 4], [11, 16, 11, 16], [8, 8, 8, 8]]
    torch.testing.assert_close(corrected, torch.tensor([0.0, 1 - 16 / 256, 1 - 25 / 256, 1.0], dtype=torch.float64))


def test_elem_mode_draws_per_sample():
    m = mixer(mode="elem", mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6)
    p = m._sample_params(64)
    assert p.lam.shape == (64,) and p.lam.unique().numel() > 10
    assert 0 < int(p.cutmix.sum()) < 64
    assert 0 < int((p.lam == 1).sum()) < 64  # some samples not mixed
    assert mixer(mode="batch", mixup_alpha=1.0)._sample_params(64).lam.shape == (1,)


# -- Mixup formula ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_is_the_convex_combination_implied_by_the_targets(mode):
    m = mixer(mode=mode, mixup_alpha=1.0)
    images, _ = make_batch(n=6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])  # distinct partners: the targets reveal lambda
    mixed_steps, per_sample = 0, False
    for _ in range(5):
        out, t = m(images, labels)
        lam = t[torch.arange(6), labels].double()
        assert torch.allclose(t[torch.arange(6), labels.flip(0)].double(), 1 - lam, atol=1e-6)
        expected = lam.view(-1, 1, 1, 1) * images.double() + (1 - lam.view(-1, 1, 1, 1)) * images.flip(0).double()
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
        mixed_steps += int((lam < 0.999).any())
        if mode == "batch":
            assert torch.allclose(lam, lam[0].expand(6))
        per_sample |= lam.unique().numel() > 1
    assert mixed_steps > 0
    assert per_sample == (mode == "elem")


def test_mixup_keeps_half_precision_images():
    images, labels = make_batch()
    for mode in ("batch", "elem"):
        out, t = mixer(mode=mode, mixup_alpha=1.0)(images.half(), labels)
        assert out.dtype == torch.float16 and t.dtype == torch.float32


def test_integer_images_refused():
    images, labels = make_batch()
    with pytest.raises(TypeError, match="floating-point"):
        mixer(mixup_alpha=1.0)(images.to(torch.uint8), labels)


# -- determinism and resume -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_equal_seeds_give_equal_streams_and_state_resumes(mode):
    images, labels = make_batch()
    kw = dict(mode=mode, mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.8)
    a, b = mixer(seed=7, **kw), mixer(seed=7, **kw)
    for _ in range(4):
        (xa, ta), (xb, tb) = a(images, labels), b(images, labels)
        assert torch.equal(xa, xb) and torch.equal(ta, tb)

    state = a.state_dict()
    ahead = [a(images, labels) for _ in range(3)]
    resumed = mixer(seed=123, **kw)  # a different seed: only the loaded state decides
    resumed.load_state_dict(state)
    for xa, ta in ahead:
        xr, tr = resumed(images, labels)
        assert torch.equal(xa, xr) and torch.equal(ta, tr)

    other = mixer(seed=8, **kw)
    diffs = [not torch.equal(other(images, labels)[1], mixer(seed=7, **kw)(images, labels)[1]) for _ in range(3)]
    assert any(diffs)


def test_state_dict_round_trips_through_torch_save(tmp_path):
    m = mixer(mode="elem", mixup_alpha=1.0)
    m._sample_params(5)
    torch.save(m.state_dict(), tmp_path / "mix.pt")
    expected = m._sample_params(5).lam
    fresh = mixer(seed=99, mode="elem", mixup_alpha=1.0)
    fresh.load_state_dict(torch.load(tmp_path / "mix.pt"))
    assert torch.equal(fresh._sample_params(5).lam, expected)


def test_gpu_generator_refused():
    class FakeGen:
        device = torch.device("meta")

    with pytest.raises(ValueError, match="CPU"):
        Mixer(MixConfig(mixup_alpha=1.0), generator=FakeGen())  # type: ignore[arg-type]


# -- odd batches ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("n", [1, 3, 7])
def test_odd_batch_sizes(mode, recipe, n):
    m = mixer(mode=mode, **RECIPES[recipe])
    images, labels = make_batch(n=n)
    for _ in range(3):
        out, t = m(images, labels)
        assert out.shape == images.shape and t.shape == (n, K)
        mid = n // 2
        # the middle sample pairs with itself: unchanged up to Mixup's rounding (lam*x + (1-lam)*x), exact for CutMix
        torch.testing.assert_close(out[mid], images[mid], atol=1e-6, rtol=0)
        if recipe == "cutmix":
            assert torch.equal(out[mid], images[mid])
        torch.testing.assert_close(t[mid], F.one_hot(labels[mid], K).float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(t.sum(1), torch.ones(n), atol=1e-6, rtol=0)


# -- loss -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_cross_entropy_matches_torch_label_smoothing(eps, dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(32, K, generator=g) * 3).to(dtype)
    y = torch.randint(0, K, (32,), generator=g)
    targets = Mixer(MixConfig(label_smoothing=eps, num_classes=K)).smooth_one_hot(y)
    ours = soft_target_cross_entropy(logits, targets)
    ref = F.cross_entropy(logits, y, label_smoothing=eps)
    assert ours.dtype == dtype
    assert abs(ours.item() - ref.item()) <= 1e-6


def test_soft_cross_entropy_upcasts_half_logits_and_checks_shapes():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, K, generator=g)
    y = torch.randint(0, K, (16,), generator=g)
    loss = soft_target_cross_entropy(logits.bfloat16(), F.one_hot(y, K).float())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(logits.bfloat16().float(), y).item(), abs=1e-6)
    with pytest.raises(ValueError, match="same"):
        soft_target_cross_entropy(logits, F.one_hot(y, K + 1).float())


def test_soft_cross_entropy_of_mixed_targets_is_the_lambda_weighted_sum():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, K, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    lam = 0.3
    t = lam * F.one_hot(y, K).double() + (1 - lam) * F.one_hot(y.flip(0), K).double()
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y.flip(0))
    assert soft_target_cross_entropy(logits, t).item() == pytest.approx(expected.item(), abs=1e-12)


# -- config -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("mixup_alpha", -1.0),
        ("mixup_alpha", math.inf),
        ("cutmix_alpha", math.nan),
        ("cutmix_alpha", True),
        ("prob", 1.5),
        ("prob", -0.1),
        ("switch_prob", 2.0),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("mode", "pair"),
        ("num_classes", 1),
        ("num_classes", 10.0),
    ],
)
def test_invalid_configs_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: ") as info:
        MixConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_enabled():
    assert not MixConfig().enabled
    assert not MixConfig(mixup_alpha=1.0, prob=0.0).enabled
    assert MixConfig(cutmix_alpha=1.0).enabled
    assert MixConfig(mixup_alpha=0.2, cutmix_alpha=0.0, prob=0.1).enabled


def test_disabled_mixer_returns_images_and_smoothed_targets():
    images, labels = make_batch()
    out, t = Mixer(MixConfig(label_smoothing=0.2, num_classes=K))(images, labels)
    assert out is images
    assert torch.allclose(t[torch.arange(8), labels], torch.full((8,), 0.8 + 0.02))
    torch.testing.assert_close(t.sum(1), torch.ones(8))


# -- dominant labels --------------------------------------------------------------------------------------------------
def test_dominant_labels_pick_the_larger_share():
    labels = torch.tensor([1, 2, 3, 4])  # partners: 4, 3, 2, 1
    lam = torch.tensor([0.7, 0.2, 0.5, 0.9])
    t = lam[:, None] * F.one_hot(labels, K).float() + (1 - lam[:, None]) * F.one_hot(labels.flip(0), K).float()
    assert dominant_labels(labels, t).tolist() == [1, 3, 3, 4]  # 0.5: tie keeps the own label


def test_dominant_labels_from_a_mixer():
    m = mixer(mode="elem", mixup_alpha=1.0, label_smoothing=0.1)
    images, labels = make_batch(n=7)
    _, t = m(images, labels)
    dom = dominant_labels(labels, t)
    share_own = t[torch.arange(7), labels]
    share_partner = t[torch.arange(7), labels.flip(0)]
    expected = torch.where(share_own >= share_partner, labels, labels.flip(0))
    assert torch.equal(dom, expected)
    assert torch.equal(dom, t.argmax(1)) or (share_own == share_partner).any()
