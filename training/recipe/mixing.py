"""Mixup / CutMix on the device, with soft (optionally label-smoothed) targets.

Design follows timm's ``timm/data/mixup.py`` (parameters are sampled apart from being applied, the partner of
sample ``i`` is sample ``N-1-i`` of the flipped batch, ``Mixer(x, y) -> (x, soft_y)``), written anew for this
project:

* Every random number comes from one CPU :class:`torch.Generator` (seeded by the caller). A run is reproducible
  and, through :meth:`Mixer.state_dict` / :meth:`Mixer.load_state_dict`, resumable mid-stream; and the draws are
  the same whether the images live on the CPU or a GPU.
* The images and labels are never read back to the host. What the host needs (the batch-mode lambda and box) it
  computes from its own CPU draws; per-sample parameters (``mode="elem"``) are resolved on the CPU too and sent to
  the device in one small host-to-device copy. No step waits for the device (no ``.item()`` on device tensors).

Images are ``(N, C, H, W)`` floating point (any memory format); labels are ``(N,)`` integer class indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dali_pipes.checks import check_choice, check_int, check_number
from ..choices import MIX_MODES
from .torch_private import standard_gamma



@dataclass(frozen=True)
class MixConfig:
    """What to mix and how. ``enabled`` is False when nothing would ever be mixed (then only smoothing applies)."""

    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for Mixup; 0 disables Mixup
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for CutMix; 0 disables CutMix
    prob: float = 1.0  # probability that a batch ("batch") or a sample ("elem") is mixed at all
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both alphas are > 0
    mode: str = "batch"  # "batch": one draw per batch; "elem": one draw per sample
    label_smoothing: float = 0.0  # eps: 1 - eps + eps/K on the true class, eps/K elsewhere (torch's convention)
    num_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            check_number(name, getattr(self, name), 0.0, rule="expected a finite number >= 0 (0 disables it)")
        for name in ("prob", "switch_prob"):
            check_number(name, getattr(self, name), 0.0, 1.0, rule="expected a probability in [0, 1]")
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True,
                     rule="expected a number in [0, 1)")
        check_choice("mode", self.mode, MIX_MODES)
        check_int("num_classes", self.num_classes, 2)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


@dataclass(frozen=True)
class MixParams:
    """One step's random draws, on the CPU, independent of the image size. ``m`` is 1 in batch mode, else N.

    ``lam`` is the Beta draw, already 1.0 where the batch/sample is not mixed (then nothing changes: Mixup with
    lambda 1 is the identity and a CutMix box of side ``sqrt(1 - 1) = 0`` is empty). ``cutmix`` says CutMix (True)
    or Mixup (False); ``centre`` is the CutMix box centre (row, column) as a fraction of (H, W) in [0, 1).
    """

    lam: Tensor  # (m,) float64
    cutmix: Tensor  # (m,) bool
    centre: Tensor  # (m, 2) float64


def cutmix_boxes(lam: Tensor, centre: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Boxes ``(m, 4)`` int64 as ``(y0, y1, x0, x1)`` (half-open) and the area-corrected lambda ``(m,)`` float64.

    The box has sides ``round(sqrt(1 - lam) * H)`` by ``round(sqrt(1 - lam) * W)`` around a centre pixel drawn
    uniformly over the image, and is clipped to the image; lambda becomes ``1 - pasted_area / (H * W)``, so the
    targets carry exactly the share of pixels each image contributes. Runs on whatever device ``lam`` is on.
    """
    side = torch.sqrt((1.0 - lam).clamp(0.0, 1.0))
    out = []
    for axis, size in enumerate((height, width)):
        cut = torch.round(side * size).long()
        mid = torch.floor(centre[:, axis] * size).long().clamp(0, size - 1)
        lo = mid - cut // 2
        out += [lo.clamp(0, size), (lo + cut).clamp(0, size)]
    y0, y1, x0, x1 = out
    area = (y1 - y0) * (x1 - x0)
    return torch.stack(out, dim=1), 1.0 - area.double() / float(height * width)


def _sample_beta(alpha: Tensor, generator: torch.Generator) -> Tensor:
    """Beta(alpha, alpha) per element (float64), exact in distribution for any alpha > 0, tiny ones included.

    Each Gamma(a) is drawn as Gamma(a + 1) * U ** (1 / a) in log space, so a tiny alpha (mass at 0 and 1) does
    not underflow both gammas to the same clamp value (which would give 0.5, the least likely lambda).
    """
    a = alpha.unsqueeze(1).expand(-1, 2)
    g = standard_gamma(a + 1.0, generator)  # >= ~1e-300 even for a -> 0: a + 1 >= 1
    u = 1.0 - torch.rand(a.shape, dtype=torch.float64, generator=generator)  # (0, 1]: log(u) is finite
    log_gamma = torch.log(g) + torch.log(u) / a
    return torch.sigmoid(log_gamma[:, 0] - log_gamma[:, 1])


class Mixer:
    """``Mixer(cfg, generator=g)(images, labels) -> (mixed_images, soft_targets)``; soft targets are float32 (N, K).

    The partner of sample ``i`` is ``images.flip(0)[i]`` (sample ``N-1-i``); with an odd N the middle sample pairs
    with itself and stays unchanged. Without a generator, one seeded from :func:`torch.initial_seed` is made (so
    ``torch.manual_seed`` makes it reproducible too); a given generator must be a CPU one and is used, not copied.
    """

    def __init__(self, cfg: MixConfig, *, generator: torch.Generator | None = None) -> None:
        if generator is None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(torch.initial_seed())
        elif generator.device.type != "cpu":
            raise ValueError(
                f"Mixer needs a CPU torch.Generator (parameters are drawn on the host), got {generator.device}"
            )
        self.cfg = cfg
        self.generator = generator

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # -- public --------------------------------------------------------------------------------------------------
    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"Mixer expects images (N, C, H, W) and labels (N,), "
                f"got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if not self.cfg.enabled or images.shape[0] == 0:
            return images, self.smooth_one_hot(labels)
        if not images.is_floating_point():
            raise TypeError(f"Mixer needs floating-point images (mixing averages pixels), got {images.dtype}")
        params = self._sample_params(images.shape[0])
        return self._apply(images, labels, params)

    def smooth_one_hot(self, labels: Tensor) -> Tensor:
        """(N, K) float32 on the labels' device: ``1 - eps + eps/K`` on the label, ``eps/K`` elsewhere."""
        k, eps = self.cfg.num_classes, self.cfg.label_smoothing
        off = eps / k
        out = torch.full((labels.shape[0], k), off, dtype=torch.float32, device=labels.device)
        # scatter_ checks the range on the device (device-side assert on CUDA), never with a host read-back.
        return out.scatter_(1, labels.long().unsqueeze(1), 1.0 - eps + off)

    # -- sampling (CPU, generator only) --------------------------------------------------------------------------
    def _sample_params(self, n: int) -> MixParams:
        """Draw one step's parameters: one set in batch mode, ``n`` sets in elem mode. Always the same number of
        draws for a given (config, n), so the stream position depends only on the steps taken."""
        cfg, g = self.cfg, self.generator
        m = 1 if cfg.mode == "batch" else n
        u = torch.rand((m, 4), dtype=torch.float64, generator=g)  # [mix?, cutmix?, centre row, centre column]
        mixed = u[:, 0] < cfg.prob
        if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
            cutmix = u[:, 1] < cfg.switch_prob
        else:
            cutmix = torch.full((m,), cfg.cutmix_alpha > 0, dtype=torch.bool)
        alphas = torch.tensor([cfg.mixup_alpha, cfg.cutmix_alpha], dtype=torch.float64)
        alpha = alphas[cutmix.long()].clamp_min(1e-12)  # the clamp only guards a branch that is never chosen
        lam = torch.where(mixed, _sample_beta(alpha, g), 1.0)
        return MixParams(lam=lam, cutmix=cutmix & mixed, centre=u[:, 2:4].contiguous())

    # -- applying (images' device) -------------------------------------------------------------------------------
    def _apply(self, images: Tensor, labels: Tensor, params: MixParams) -> tuple[Tensor, Tensor]:
        if params.lam.shape[0] == 1:
            return self._apply_batch(images, labels, params)
        return self._apply_elem(images, labels, params)

    def _targets(self, labels: Tensor, lam: Tensor | float) -> Tensor:
        one_hot = self.smooth_one_hot(labels)
        if isinstance(lam, Tensor):
            lam = lam.unsqueeze(1)
        return one_hot * lam + one_hot.flip(0) * (1.0 - lam)

    def _apply_batch(self, images: Tensor, labels: Tensor, params: MixParams) -> tuple[Tensor, Tensor]:
        # Host values here come from the CPU parameter tensors (our own draws), not from the device: slicing a box
        # needs Python ints and a scalar lambda keeps the image dtype, and neither waits for the GPU.
        h, w = images.shape[-2:]
        if bool(params.cutmix[0]):
            boxes, lam_t = cutmix_boxes(params.lam, params.centre, h, w)
            y0, y1, x0, x1 = boxes[0].tolist()
            lam = float(lam_t[0])
            out = images.clone()
            out[..., y0:y1, x0:x1] = images[..., y0:y1, x0:x1].flip(0)
        else:
            lam = float(params.lam[0])
            if lam == 1.0:  # not mixed this step
                return images, self.smooth_one_hot(labels)
            out = images * lam + images.flip(0) * (1.0 - lam)
        return out, self._targets(labels, lam)

    def _apply_elem(self, images: Tensor, labels: Tensor, params: MixParams) -> tuple[Tensor, Tensor]:
        h, w = images.shape[-2:]
        boxes, lam_cut = cutmix_boxes(params.lam, params.centre, h, w)
        boxes = torch.where(params.cutmix.unsqueeze(1), boxes, 0)  # empty box for Mixup / unmixed samples
        lam_target = torch.where(params.cutmix, lam_cut, params.lam)
        lam_pixels = torch.where(params.cutmix, 1.0, params.lam)  # the Mixup weight (1: keep the own pixels)
        # One small host-to-device copy of everything per-sample (ints < 2**24 are exact in float32). From pageable
        # memory a non_blocking copy is staged at once and does not wait for the device; on the CPU it is a no-op.
        packed = torch.cat([lam_target.unsqueeze(1), lam_pixels.unsqueeze(1), boxes.double()], dim=1).float()
        packed = packed.to(images.device, non_blocking=True)
        lam_t, lam_p, y0, y1, x0, x1 = packed.unbind(1)

        partner = images.flip(0)
        weight = lam_p.to(images.dtype).view(-1, 1, 1, 1)
        mixed = images * weight + partner * (1.0 - weight)  # weight 1 gives the own pixels exactly
        rows = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w)
        inside = (
            (rows >= y0.view(-1, 1, 1))
            & (rows < y1.view(-1, 1, 1))
            & (cols >= x0.view(-1, 1, 1))
            & (cols < x1.view(-1, 1, 1))
        )  # (N, H, W) per-sample box masks, no loop over samples
        out = torch.where(inside.unsqueeze(1), partner, mixed)
        return out, self._targets(labels, lam_t.to(labels.device))


def dominant_labels(labels: Tensor, soft_targets: Tensor) -> Tensor:
    """The label holding the larger target mass: the sample's own label or its partner's (the flipped batch).

    For honest train accuracy under mixing ("accuracy against the dominant label"). Ties (lambda 0.5, or a sample
    paired with itself) keep the own label. ``soft_targets`` are the Mixer's output for these ``labels``.
    """
    own = labels.long()
    partner = own.flip(0)
    own_mass = soft_targets.gather(1, own.unsqueeze(1)).squeeze(1)
    partner_mass = soft_targets.gather(1, partner.unsqueeze(1)).squeeze(1)
    return torch.where(own_mass >= partner_mass, own, partner)
