"""The augmentation recipe: one frozen, validated config that both backends build from.

A recipe is validated when it is built (``AugmentConfig(...)`` raises :class:`ConfigError` naming the field), never
mid-epoch. Order of operations, identical on both backends:

    crop -> horizontal flip -> rotation -> random affine -> color jitter -> Gaussian blur
      -> policy (auto/rand/trivial) -> normalize -> erasing

The crop (field ``crop``, resolved per dataset by :func:`resolve_crop`):

- ``"pad"``: pad by ``crop_padding`` and crop back to the image size at random (CIFAR's crop). Arrays always use
  it; an image folder with ``crop="pad"`` first squashes every image to ``image_size`` (aspect ratio lost).
- ``"resized"`` (folders): torchvision's RandomResizedCrop: a box of ``rrc_scale`` of the image's area and aspect
  ratio (w/h) from ``rrc_ratio`` (log-uniform), up to 10 tries, else the centre crop at the nearest allowed ratio;
  then resized to ``image_size`` (bilinear, antialiased). On DALI the crop is fused with decoding.
- ``"centre"`` (folders): resize the shorter side to ``int(image_size / crop_ratio)`` (bilinear, antialiased) and
  take the centre ``image_size`` square: the evaluation path, and what ``augment="none"`` does on folders.
- ``"auto"`` (default): ``"pad"`` on arrays; on folders ``"resized"`` when the recipe asks for a random crop
  (``crop_padding > 0``, or a policy), else ``"centre"``. The folder's random crop replaces the padding.

Images smaller than the crop are upsampled (bilinear) by both crops, never refused. The policies keep their
torchvision parameters at every size (AutoAugment's CIFAR-10 policy, translations relative to the image side;
TrivialAugment's up to 32 px).

Geometry and colour work on uint8 HWC images (what DALI's auto_aug and torchvision v2 policies take); erasing works
on the normalized float image, so ``erase_value`` is in normalized units (0 = the dataset mean colour), as in
torchvision's ``RandomErasing`` placed after ``Normalize``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from collections.abc import Mapping
from typing import Any

from .checks import invalid
from .errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
CROPS = ("auto", "pad", "resized", "centre")
PAD_MODES = ("constant", "reflect")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation recipe. All probabilities in [0, 1]; pixel values in uint8 units (0..255)."""

    crop: str = "auto"  # "auto" | "pad" | "resized" | "centre": which crop (module docstring, resolve_crop)
    crop_padding: int = 0  # pixels added on each side before the random crop back to the image size
    pad_mode: str = "constant"  # "constant" (fill with pad_fill) | "reflect" (mirror without repeating the edge)
    pad_fill: int = 0  # uint8 fill value for pad_mode="constant"
    flip_p: float = 0.0  # probability of a horizontal flip
    brightness: float = 0.0  # factor drawn from [max(0, 1-b), 1+b]
    contrast: float = 0.0  # factor drawn from [max(0, 1-c), 1+c]; pivot = mean grey level of the image
    saturation: float = 0.0  # factor drawn from [max(0, 1-s), 1+s]
    hue: float = 0.0  # shift drawn from [-h, h] in turns (0.5 = 180 degrees); at most 0.5
    rotation: float = 0.0  # degrees, angle drawn from [-r, r]; nearest neighbour, filled with pad_fill
    # Random affine (torchvision's RandomAffine about the image centre, applied with probability affine_p):
    # angle from [-d, d] degrees, shift from [-t, t] x the side (whole pixels), scale from the range, x-shear from
    # [-s, s] degrees; nearest neighbour, filled with pad_fill.
    affine_p: float = 0.0
    affine_degrees: float = 0.0
    affine_translate: float = 0.0
    affine_scale: tuple[float, float] = (1.0, 1.0)
    affine_shear: float = 0.0
    # Gaussian blur with probability blur_p: odd square kernel of blur_kernel pixels, sigma from the range (pixels),
    # borders mirrored without repeating the edge (torchvision's GaussianBlur).
    blur_p: float = 0.0
    blur_kernel: int = 5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    policy: str = "none"  # "none" | "autoaugment" (CIFAR-10 policy) | "randaugment" | "trivialaugment"
    randaugment_n: int = 2  # operations per image (randaugment only)
    randaugment_m: int = 9  # magnitude bin in [0, 30] (randaugment only, 31 bins as in torchvision)
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # crop="resized": box area as a fraction of the image's
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop="resized": box aspect ratio w/h, drawn log-uniformly
    crop_ratio: float = 0.875  # crop="centre": image_size / the resized shorter side (torchvision's 224/256)
    erase_p: float = 0.0  # probability of random erasing
    erase_scale: tuple[float, float] = (0.02, 0.33)  # erased area as a fraction of the image
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # aspect ratio h/w range, drawn log-uniformly
    erase_value: float = 0.0  # value written into the erased box, normalized units
    mean: tuple[float, float, float] = CIFAR10_MEAN  # per-channel, in [0, 1] units
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        # Tuples may arrive as lists (from YAML); store them as tuples so the config stays hashable and frozen.
        for name in ("erase_scale", "erase_ratio", "mean", "std", "affine_scale", "blur_sigma", "rrc_scale",
                     "rrc_ratio"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(float(v) for v in value))
            except (TypeError, ValueError):
                _fail(name, value, "expected a sequence of numbers")
        _validate(self)

    @property
    def has_affine(self) -> bool:
        return self.affine_p > 0 and (self.affine_degrees > 0 or self.affine_translate > 0 or self.affine_shear > 0
                                      or self.affine_scale != (1.0, 1.0))

    @property
    def has_blur(self) -> bool:
        return self.blur_p > 0

    @property
    def has_color_jitter(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) for YAML/JSON run records."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"augment: unknown field(s) {', '.join(unknown)}; "
                              f"valid fields: {', '.join(sorted(known))}")
        return cls(**values)


def _fail(field: str, value: Any, rule: str) -> None:
    raise invalid(f"augment.{field}", value, rule)


def _validate(c: AugmentConfig) -> None:
    def number(field: str) -> float:
        v = getattr(c, field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(field, v, "expected a finite number")
        return float(v)

    def integer(field: str, lo: int, hi: int) -> None:
        v = getattr(c, field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            _fail(field, v, f"expected an integer in [{lo}, {hi}]")

    for field in ("flip_p", "erase_p", "affine_p", "blur_p"):
        if not 0.0 <= number(field) <= 1.0:
            _fail(field, getattr(c, field), "a probability must lie in [0, 1]")
    for field in ("brightness", "contrast", "saturation", "rotation"):
        if number(field) < 0:
            _fail(field, getattr(c, field), "must be >= 0")
    if not 0.0 <= number("hue") <= 0.5:
        _fail("hue", c.hue, "must lie in [0, 0.5] (turns of the colour wheel)")
    if number("rotation") > 180:
        _fail("rotation", c.rotation, "must lie in [0, 180] degrees")
    if not 0.0 <= number("affine_degrees") <= 180:
        _fail("affine_degrees", c.affine_degrees, "must lie in [0, 180] degrees")
    if not 0.0 <= number("affine_translate") <= 1.0:
        _fail("affine_translate", c.affine_translate, "must lie in [0, 1] (a fraction of the image side)")
    if not 0.0 <= number("affine_shear") < 90:
        _fail("affine_shear", c.affine_shear, "must lie in [0, 90) degrees")
    if len(c.affine_scale) != 2 or not 0.0 < c.affine_scale[0] <= c.affine_scale[1] <= 10.0:
        _fail("affine_scale", c.affine_scale, "expected (min, max) with 0 < min <= max <= 10")
    v = c.blur_kernel
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0 or v > 63:
        _fail("blur_kernel", v, "expected an odd integer in [1, 63]")
    if len(c.blur_sigma) != 2 or not 0.0 < c.blur_sigma[0] <= c.blur_sigma[1] <= 100.0:
        _fail("blur_sigma", c.blur_sigma, "expected (min, max) with 0 < min <= max <= 100 pixels")
    integer("crop_padding", 0, 1024)
    integer("pad_fill", 0, 255)
    integer("randaugment_n", 1, 16)
    integer("randaugment_m", 0, 30)
    if c.pad_mode not in PAD_MODES:
        _fail("pad_mode", c.pad_mode, f"expected one of {', '.join(PAD_MODES)}")
    if c.crop not in CROPS:
        _fail("crop", c.crop, f"expected one of {', '.join(CROPS)}")
    if c.crop in ("resized", "centre") and c.crop_padding > 0:
        _fail("crop", c.crop, f"crop={c.crop!r} takes no padding: set crop_padding=0 (crop_padding is the pad-crop's)")
    if len(c.rrc_scale) != 2 or not 0.0 < c.rrc_scale[0] <= c.rrc_scale[1] <= 1.0:
        _fail("rrc_scale", c.rrc_scale, "expected (min, max) with 0 < min <= max <= 1 (a fraction of the area)")
    if len(c.rrc_ratio) != 2 or not 0.0 < c.rrc_ratio[0] <= c.rrc_ratio[1] <= 100.0:
        _fail("rrc_ratio", c.rrc_ratio, "expected (min, max) with 0 < min <= max <= 100 (width / height)")
    if not 0.0 < number("crop_ratio") <= 1.0:
        _fail("crop_ratio", c.crop_ratio, "must lie in (0, 1] (crop side / resized shorter side)")
    if c.policy not in POLICIES:
        _fail("policy", c.policy, f"expected one of {', '.join(POLICIES)}")
    number("erase_value")
    if len(c.erase_scale) != 2 or not 0.0 < c.erase_scale[0] <= c.erase_scale[1] < 1.0:
        _fail("erase_scale", c.erase_scale, "expected (min, max) with 0 < min <= max < 1")
    if len(c.erase_ratio) != 2 or not 0.0 < c.erase_ratio[0] <= c.erase_ratio[1]:
        _fail("erase_ratio", c.erase_ratio, "expected (min, max) with 0 < min <= max")
    if len(c.mean) != 3 or not all(0.0 <= m <= 1.0 for m in c.mean):
        _fail("mean", c.mean, "expected 3 values in [0, 1]")
    if len(c.std) != 3 or not all(s > 0 for s in c.std):
        _fail("std", c.std, "expected 3 values > 0")


_WEAK = dict(crop_padding=4, flip_p=0.5)
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "weak": _WEAK,
    "standard": {**_WEAK, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1, "erase_p": 0.5},
    "strong": {**_WEAK, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2, "rotation": 15.0,
               "erase_p": 0.5},
}


def _preset_values(name: str) -> dict[str, Any]:
    base, _, policy = name.partition("+")
    if base not in PRESETS:
        raise ConfigError(f"augment={name!r}: unknown preset {base!r}; choose one of {', '.join(PRESETS)}"
                          f" (optionally +{'|+'.join(POLICIES[1:])})")
    values = dict(PRESETS[base])
    if policy:
        values["policy"] = policy
    return values


def resolve_augment(augment: str | AugmentConfig | Mapping[str, Any], *,
                    mean: tuple[float, float, float] | None = None,
                    std: tuple[float, float, float] | None = None) -> AugmentConfig:
    """Turn a recipe into a config: a preset name (optionally ``"<preset>+<policy>"``, e.g. ``"weak+autoaugment"``),
    a mapping of a ``preset`` plus field overrides (``{"preset": "standard", "erase_p": 0.25}``; without
    ``preset`` the fields override ``none``), or a config (returned as is).

    ``mean``/``std`` (the dataset's statistics) are the normalization unless the recipe sets its own.
    """
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, str):
        values = _preset_values(augment)
    elif isinstance(augment, Mapping):
        overrides = {str(k): v for k, v in augment.items()}
        preset = overrides.pop("preset", "none")
        if not isinstance(preset, str):
            raise ConfigError(f"augment.preset={preset!r} is invalid: expected a preset name such as 'standard'")
        values = {**_preset_values(preset), **overrides}
    else:
        raise ConfigError(f"augment={augment!r} is invalid: expected a preset name, a mapping or an AugmentConfig")
    if mean is not None:
        values.setdefault("mean", mean)
    if std is not None:
        values.setdefault("std", std)
    return AugmentConfig.from_dict(values)


def recipe_fields(augment: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping recipe (``preset`` plus overrides) resolved to every field, as run records save it: the saved
    recipe does not depend on what a preset means in a later version. ``mean``/``std`` stay out unless the recipe
    sets them, so the dataset's statistics still apply. Idempotent."""
    full = resolve_augment(augment).to_dict()
    return {k: v for k, v in full.items() if k not in ("mean", "std") or k in augment}


CROP_FIELDS = ("crop", "crop_padding", "pad_mode", "rrc_scale", "rrc_ratio", "crop_ratio")  # what describe_crop says


def describe_augment(augment: str | Mapping[str, Any], resolved: AugmentConfig | None = None) -> str:
    """A one-line name for a recipe: the preset string, or the fields that differ from `none`. With `resolved`
    (the recipe as a loader resolved it for its dataset, :func:`resolve_crop`), the crop that runs is named instead
    of the crop fields asked for: a folder's random-resized crop, not the preset's ``crop_padding=4``."""
    if isinstance(augment, str):
        name = augment
    else:
        base = AugmentConfig().to_dict()
        changed = [f"{k}={v}" for k, v in recipe_fields(augment).items()
                   if base.get(k) != v and (resolved is None or k not in CROP_FIELDS)]
        name = "{" + ", ".join(changed) + "}" if changed else "none"
    return name if resolved is None else f"{name} ({describe_crop(resolved)})"


def describe_crop(cfg: AugmentConfig) -> str:
    """The crop of a recipe resolved for its dataset (:func:`resolve_crop`), in words."""
    if cfg.crop == "resized":
        (a0, a1), (r0, r1) = cfg.rrc_scale, cfg.rrc_ratio
        return f"random-resized crop, area {a0:g}-{a1:g}, ratio {r0:.2f}-{r1:.2f}"
    if cfg.crop == "centre":
        return f"resize and centre crop, ratio {cfg.crop_ratio:g}"
    if cfg.crop_padding > 0:
        return f"pad-crop {cfg.crop_padding} px, {cfg.pad_mode}"
    return "no crop"


def parse_override(text: str) -> tuple[str, Any]:
    """``"field=value"`` (value in YAML: ``0.25``, ``[0.9, 1.1]``, ``reflect``) -> (field, value), field checked."""
    import yaml

    from .strict_yaml import YamlRefused, load_yaml

    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    known = {f.name for f in fields(AugmentConfig)} | {"preset"}
    if not sep or not name:
        raise ConfigError(f"--aug {text!r} is invalid: expected FIELD=VALUE, e.g. --aug erase_p=0.25")
    if name not in known:
        raise ConfigError(f"--aug {text!r}: unknown field {name!r}; valid fields: {', '.join(sorted(known))}")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except YamlRefused as e:
        raise ConfigError(f"--aug {text!r}: {e}") from None
    except yaml.YAMLError:
        raise ConfigError(f"--aug {text!r}: the value is not a number, word or [list]") from None
    if value is None:
        raise ConfigError(f"--aug {text!r}: give a value after '='")
    return name, value


def eval_config(train: AugmentConfig) -> AugmentConfig:
    """The validation recipe that goes with a training recipe: its normalization and nothing random; on folders the
    resize + centre crop at the recipe's ``crop_ratio`` (or the squash resize when the recipe pad-crops them)."""
    return replace(AugmentConfig(), mean=train.mean, std=train.std, crop_ratio=train.crop_ratio,
                   crop="pad" if train.crop == "pad" else "auto")


def resolve_crop(cfg: AugmentConfig, *, folder: bool) -> AugmentConfig:
    """``cfg`` with ``crop`` resolved to "pad" | "resized" | "centre" for an image folder or an array dataset.

    Folders resolving "auto" to a random-resized-crop drop ``crop_padding`` (the random crop replaces it). A crop
    only folders have ("resized", "centre") on an array dataset is a :class:`ConfigError`: arrays are already at
    their size, so they keep the pad-crop. Idempotent.
    """
    if not folder:
        if cfg.crop not in ("auto", "pad"):
            _fail("crop", cfg.crop, "array datasets (CIFAR, synthetic) use the pad-crop: set crop to 'auto' or 'pad'")
        return cfg if cfg.crop == "pad" else replace(cfg, crop="pad")
    if cfg.crop != "auto":
        return cfg
    if cfg.crop_padding > 0 or cfg.policy != "none":
        return replace(cfg, crop="resized", crop_padding=0)
    return replace(cfg, crop="centre")
