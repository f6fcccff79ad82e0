"""Every per-sample random parameter of the recipe, drawn in bulk on the host from (seed, epoch, dataset index).

Why on the host: each ``fn.random.*`` node and each scalar operator computing a parameter from it (the erase box
took 24) is a CPU operator that DALI runs per sample per batch on its host threads, while the GPU waits. Here one
vectorised numpy call per DALI batch draws every parameter, and the graph receives them through one CPU
``external_source``; the graph keeps only operators that touch pixels.

Why counter-based: draw ``j`` of stream ``s`` for sample ``i`` is a hash of (key(seed, epoch), s, i, j). A sample's
parameters do not depend on which batch, shard, worker or DALI batch size it is drawn in, so

- the torchvision reference applies the *same* parameters (tests/test_lockstep.py compares the backends image for
  image), and
- resuming needs no generator state: epoch and index say everything.

The hash is SplitMix64's finaliser applied twice (a counter-based generator in the sense of Salmon et al. 2011;
SplitMix64 over a counter passes BigCrush), keyed by numpy's SeedSequence of (salt, seed, epoch).

Semantics follow torchvision's transforms (v2) draw for draw where the recipe follows torchvision: RandomCrop with
padding, RandomHorizontalFlip, RandomRotation and RandomAffine (angle, whole-pixel shifts, scale, x-shear),
ColorJitter's factor ranges (fixed order: contrast, brightness, saturation, hue), GaussianBlur's sigma, and
RandomErasing's 10 tries (no erase when none fits).
"""

from __future__ import annotations

import math

import numpy as np

from .config import AugmentConfig

_SALT = 0xD4A1D5  # keeps these streams apart from the epoch plan's and the policies' (dali_pipes.policy)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: SplitMix64's counter increment
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)

# One stream per parameter, numbered once: adding a parameter never changes another one's draws.
_STREAMS = {name: k for k, name in enumerate(
    ("crop", "flip", "rotate", "affine_apply", "affine_angle", "affine_translate", "affine_scale", "affine_shear",
     "contrast", "brightness", "saturation", "hue", "blur_apply", "blur_sigma", "erase_apply", "erase_area",
     "erase_ratio", "erase_top", "erase_left"), start=1)}
ERASE_TRIES = 10  # torchvision's RandomErasing gives up after 10 boxes that do not fit


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose output bits each depend on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(*parts: int) -> np.uint64:
    """A 64-bit key from integers (seed, epoch, ...), mixed by numpy's SeedSequence."""
    return np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]


def uniforms(key: np.uint64, stream: int, index: np.ndarray, count: int) -> np.ndarray:
    """(len(index), count) float64 uniforms in [0, 1): draw j of `stream` for each dataset index."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        base = _mix(key ^ (np.uint64(stream) * _GOLDEN)) + np.asarray(index, dtype=np.uint64)[:, None] * _GOLDEN
        z = _mix(_mix(base) + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # the top 53 bits: every double in [0, 1)


class Stream:
    """Uniform draws for one epoch, addressed by (parameter, dataset index)."""

    def __init__(self, seed: int, epoch: int, salt: int = _SALT):
        self.key = stream_key(salt, seed, epoch)

    def uniform(self, name: str | int, index: np.ndarray, lo: float = 0.0, hi: float = 1.0,
                count: int = 1) -> np.ndarray:
        stream = _STREAMS[name] if isinstance(name, str) else int(name)
        u = uniforms(self.key, stream, index, count)
        u = lo + (hi - lo) * u
        return u[:, 0] if count == 1 else u

    def integers(self, name: str | int, index: np.ndarray, lo: int, hi: int, count: int = 1) -> np.ndarray:
        """Integers uniform in [lo, hi] (both included)."""
        u = self.uniform(name, index, count=count)
        return lo + np.minimum(np.floor(u * (hi - lo + 1)), hi - lo).astype(np.int64)


def _factor(stream: Stream, name: str, index: np.ndarray, amount: float) -> np.ndarray:
    return stream.uniform(name, index, max(0.0, 1 - amount), 1 + amount).astype(np.float32)


def inverse_affine(size: tuple[int, int], angle: np.ndarray, translate: np.ndarray, scale: np.ndarray,
                   shear: np.ndarray) -> np.ndarray:
    """(N, 2, 3) matrices mapping output pixel coordinates to input ones (DALI's `inverse_map=True`), as
    torchvision's ``F.affine`` builds them (``_get_inverse_affine_matrix`` about the image centre; `angle` in
    degrees clockwise, `translate` (x, y) in pixels, `shear` on x in degrees).

    torchvision works in centre-relative coordinates; DALI's pixel centres sit at +0.5 from the corner, so the
    centre is (w/2, h/2) in both and the matrix is conjugated by that shift.
    """
    h, w = size
    rot, sx = np.radians(angle), np.radians(shear)
    sy = np.zeros_like(sx)
    cx, cy = w / 2.0, h / 2.0
    # RSS = R(rot) * S(scale) * SHy(sy) * SHx(sx) (torchvision's comment); its inverse, divided by the scale
    a = np.cos(rot - sy) / np.cos(sy)
    b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
    c = np.sin(rot - sy) / np.cos(sy)
    d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
    inv = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2) / scale[:, None, None]
    tx, ty = translate[:, 0], translate[:, 1]
    # centre-relative: in = inv @ (out - t); absolute: in + centre = inv @ (out_abs - centre - t) + centre
    offset = -np.einsum("nij,nj->ni", inv, np.stack([cx + tx, cy + ty], -1)) + np.array([cx, cy])
    return np.concatenate([inv, offset[:, :, None]], -1).astype(np.float32)


def flips(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """bool per sample: mirrored left-right (the ``flip`` of :func:`draw`, drawn alone for sources that flip)."""
    return Stream(seed, epoch).uniform("flip", np.asarray(index, dtype=np.int64)) < cfg.flip_p


def draw(cfg: AugmentConfig, size: tuple[int, int], seed: int, epoch: int, index: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-sample parameter of the recipe for the samples `index` (dataset indices) of `epoch`.

    Only what the recipe uses is drawn. Keys, per sample (leading axis N):

    - ``crop`` int32 (2,): top-left (y, x) of the crop in the unpadded image, in [-p, p] (p = crop_padding)
    - ``flip`` int32: 1 = mirror left-right
    - ``rotate`` float32 degrees counter-clockwise (torchvision's RandomRotation) and ``rotate_matrix`` (2, 3)
    - ``affine_apply`` bool, ``affine_angle`` (degrees, clockwise as F.affine takes it), ``affine_translate`` (x, y)
      whole pixels, ``affine_scale``, ``affine_shear`` (x, degrees), ``affine_matrix`` (2, 3) (identity when not
      applied: a nearest-neighbour warp by it copies the image exactly)
    - ``contrast``, ``brightness``, ``saturation`` float32 factors; ``hue`` float32 turns, ``hue_degrees``
    - ``blur_apply`` bool, ``blur_sigma`` float32 pixels
    - ``erase_anchor`` float32 (y, x), ``erase_shape`` float32 (h, w): (0, 0) when not erased
    """
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    h_img, w_img = size
    s = Stream(seed, epoch)
    out: dict[str, np.ndarray] = {}
    if cfg.crop_padding > 0:
        p = cfg.crop_padding
        # RandomCrop on the padded image: the corner uniform over the 2p+1 positions per axis
        out["crop"] = s.integers("crop", index, -p, p, count=2).astype(np.int32)
    if cfg.flip_p > 0:
        out["flip"] = flips(cfg, seed, epoch, index).astype(np.int32)
    if cfg.rotation > 0:
        angle = s.uniform("rotate", index, -cfg.rotation, cfg.rotation)
        out["rotate"] = angle.astype(np.float32)
        # F.rotate(angle) is F.affine's matrix with -angle (rotate: counter-clockwise, affine: clockwise)
        zeros = np.zeros(n)
        out["rotate_matrix"] = inverse_affine(size, -angle, np.zeros((n, 2)), np.ones(n), zeros)
    if cfg.has_affine:
        apply = s.uniform("affine_apply", index) < cfg.affine_p
        angle = s.uniform("affine_angle", index, -cfg.affine_degrees, cfg.affine_degrees)
        # torchvision: round(uniform(-t * side, t * side)) per axis, whole pixels (round half to even)
        limit = np.array([cfg.affine_translate * w_img, cfg.affine_translate * h_img])
        translate = np.rint(s.uniform("affine_translate", index, count=2) * 2 * limit - limit)
        lo, hi = cfg.affine_scale
        scale = s.uniform("affine_scale", index, lo, hi)
        shear = s.uniform("affine_shear", index, -cfg.affine_shear, cfg.affine_shear)
        matrix = inverse_affine(size, angle, translate, scale, shear)
        identity = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
        out.update(affine_apply=apply, affine_angle=angle.astype(np.float32),
                   affine_translate=translate.astype(np.float32), affine_scale=scale.astype(np.float32),
                   affine_shear=shear.astype(np.float32),
                   affine_matrix=np.where(apply[:, None, None], matrix, identity).astype(np.float32))
    if cfg.contrast > 0:
        out["contrast"] = _factor(s, "contrast", index, cfg.contrast)
    if cfg.brightness > 0:
        out["brightness"] = _factor(s, "brightness", index, cfg.brightness)
    if cfg.saturation > 0:
        out["saturation"] = _factor(s, "saturation", index, cfg.saturation)
    if cfg.hue > 0:
        hue = s.uniform("hue", index, -cfg.hue, cfg.hue).astype(np.float32)
        out.update(hue=hue, hue_degrees=(360.0 * hue).astype(np.float32))
    if cfg.has_blur:
        lo, hi = cfg.blur_sigma
        out["blur_apply"] = s.uniform("blur_apply", index) < cfg.blur_p
        out["blur_sigma"] = s.uniform("blur_sigma", index, lo, hi).astype(np.float32)
    if cfg.erase_p > 0:
        out.update(_erase_boxes(cfg, size, s, index))
    return out


def _erase_boxes(cfg: AugmentConfig, size: tuple[int, int], s: Stream, index: np.ndarray) -> dict[str, np.ndarray]:
    """torchvision's RandomErasing.get_params, all 10 tries at once: the first box that fits wins."""
    h_img, w_img = size
    area = s.uniform("erase_area", index, *cfg.erase_scale, count=ERASE_TRIES) * (h_img * w_img)
    log_lo, log_hi = math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1])
    aspect = np.exp(s.uniform("erase_ratio", index, log_lo, log_hi, count=ERASE_TRIES))
    h = np.rint(np.sqrt(area * aspect))  # int(round(...)): Python's and numpy's rounding are both half-to-even
    w = np.rint(np.sqrt(area / aspect))
    fits = (h < h_img) & (w < w_img)
    first = np.argmax(fits, axis=1)
    rows = np.arange(len(index))
    h, w = h[rows, first], w[rows, first]
    found = fits[rows, first] & (s.uniform("erase_apply", index) < cfg.erase_p)
    # the top-left corner: torch.randint(0, side - box + 1), uniform over the positions where the box fits
    top = np.floor(s.uniform("erase_top", index) * (h_img - h + 1))
    left = np.floor(s.uniform("erase_left", index) * (w_img - w + 1))
    anchor = np.where(found[:, None], np.stack([top, left], -1), 0.0)
    shape = np.where(found[:, None], np.stack([h, w], -1), 0.0)
    return {"erase_anchor": anchor.astype(np.float32), "erase_shape": shape.astype(np.float32)}
