"""The private torch functions behind training/recipe/torch_private.py: present on the torch installed, equal to the
public fallbacks, and the fallbacks right on their own."""

from __future__ import annotations

import pytest
import torch

from training.recipe import torch_private


def test_the_privates_exist_on_the_installed_torch() -> None:
    # Fails when torch moves or drops one: re-check torch_private.py against the new version, then add it.
    version = ".".join(torch.__version__.split(".")[:2])
    assert version in torch_private.TORCH_READ, f"torch {torch.__version__}: re-check training/recipe/torch_private.py"
    assert callable(getattr(torch, "_foreach_lerp_", None)) and callable(getattr(torch, "_standard_gamma", None))
    with torch_private.inductor_freezing():
        import torch._inductor.config as inductor_config

        assert inductor_config.freezing is True


def test_foreach_lerp_fused_and_fallback_agree(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    ends = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    fused = [t.clone() for t in start]
    torch_private.foreach_lerp_(fused, ends, 0.25)
    plain = [t.clone() for t in start]
    with monkeypatch.context() as m:
        m.delattr(torch, "_foreach_lerp_")  # as on a torch without it
        torch_private.foreach_lerp_(plain, ends, 0.25)
    for a, b, s, e in zip(fused, plain, start, ends):
        assert torch.allclose(a, b) and torch.allclose(a, s + 0.25 * (e - s))


@pytest.mark.parametrize("a", [1.0, 1.5, 4.0])
def test_the_fallback_gamma_has_gammas_mean_and_variance(a: float) -> None:
    n = 40_000
    conc = torch.full((n,), a, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for draws in (torch_private._marsaglia_tsang(conc, g), torch_private.standard_gamma(conc, g)):
        assert draws.dtype == torch.float64 and bool((draws > 0).all())
        # Gamma(a, 1): mean a, variance a; standard errors sqrt(a / n) and ~sqrt(6a^2/n) at these sizes
        assert abs(draws.mean().item() - a) < 5 * (a / n) ** 0.5
        assert abs(draws.var().item() - a) < 5 * (2 * a * a / n + 6 * a / n) ** 0.5 + 0.02 * a
    with pytest.raises(ValueError, match=">= 1"):
        torch_private._marsaglia_tsang(torch.tensor([0.5], dtype=torch.float64), g)
