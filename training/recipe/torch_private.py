"""The private torch APIs dali-train uses, each behind a check, with a public fallback where one exists.

- ``torch._foreach_lerp_``: one fused lerp over the EMA's tensor list (timm's ModelEmaV3 does the same); without
  it, a lerp per tensor (same result, one kernel launch per tensor).
- ``torch._standard_gamma``: Gamma(a) draws from a given generator (Mixup's Beta per sample, resumable); torch's
  public Gamma distribution takes no generator. Without it, Marsaglia and Tsang's method (a >= 1, which is how
  mixing calls it) from the same generator: the same distribution, other numbers.

- ``torch._inductor.config.patch(freezing=True)``: inductor's freezing for dali-quantize's latency timing (it folds
  weights and prepacks the int8 convolutions); ``torch.compile(options={"freezing": True})``, the public spelling,
  does not reach the int8 prepacking in torch 2.14. No fallback: timing fails in one line if it moves.

``TORCH_READ`` says which torch versions these were checked on; tests/test_torch_private.py fails, naming the
version found, when torch moves either of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

TORCH_READ = ("2.11", "2.12", "2.13", "2.14")  # major.minor versions whose private functions were checked


def foreach_lerp_(tensors: list[Tensor], ends: list[Tensor], weight: float) -> None:
    """tensors[i] += weight * (ends[i] - tensors[i]), in place."""
    fused = getattr(torch, "_foreach_lerp_", None)
    if fused is not None:
        fused(tensors, ends, weight)
        return
    for t, e in zip(tensors, ends):
        t.lerp_(e, weight)


def standard_gamma(concentration: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(concentration, 1) per element, drawn from `generator` (float64 in, float64 out)."""
    private = getattr(torch, "_standard_gamma", None)
    if private is not None:
        return private(concentration, generator=generator)
    return _marsaglia_tsang(concentration, generator)


def _marsaglia_tsang(a: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(a) for a >= 1 by Marsaglia and Tsang (2000): accepted in >= 95% of tries, so a few rounds suffice."""
    if bool((a < 1).any()):
        raise ValueError("the fallback gamma sampler takes concentrations >= 1 (mixing draws Gamma(a + 1))")
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(a.shape, dtype=a.dtype, device=a.device, generator=generator)
        u = torch.rand(a.shape, dtype=a.dtype, device=a.device, generator=generator)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300))) & todo
        out = torch.where(ok, d * v, out)
        todo &= ~ok
    return out


def inductor_freezing():
    """A context in which torch.compile freezes weights (inductor's ``freezing`` setting)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)
