"""The DALI graph: one definition, the device ("gpu" | "cpu") a parameter.

Graph functions only build graphs; the loader decides what runs when. Kept differences from the torchvision
reference (tested with tolerances in tests/test_lockstep.py):

- colour jitter runs in a fixed order (contrast, brightness, saturation, hue) where torchvision draws a random order
  per image; contrast pivots on the image's mean grey level as torchvision does (DALI's default pivot is 128).
- saturation and hue use DALI's ``hsv`` operator: a linear approximation in RGB (chroma scaled and rotated around
  the grey axis), where torchvision converts to HSV. Saturation agrees up to rounding; hue shifts by the same angle
  but along a different colour wheel, so single images differ while the drawn range is the same.
- random erasing clamps a box that would not fit to the image, where torchvision redraws up to 10 times: the
  erased-area distribution differs only for the largest scale/ratio combinations.
- folder crops (dali_pipes.config): random-resized-crop draws as torchvision's does (area uniform, ratio
  log-uniform, 10 tries) but, after 10 failed tries, places its fallback box at random where torchvision centres it;
  resizing (bilinear, antialiased on both) rounds differently, so the resize + centre crop of ``augment="none"`` on
  folders agrees to 1 uint8 level, not exactly (tests/test_folder_resolution.py).
- AutoAugment uses DALI's CIFAR-10 policy (the same sub-policies as torchvision's; DALI's 11 magnitude bins), with
  translations scaled so each bin shifts as far as torchvision's does.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

from .config import AugmentConfig

READER_NAME = "reader"  # the file reader's name, matched by the iterator for exact epoch sizes
# torchvision's AutoAugment/RandAugment translate up to 150/331 of the image side at their top bin (of 10 or 31);
# DALI's CIFAR-10 policy spreads its range over 11 bins, hence the 10/9 for that policy.
_TV_TRANSLATE_REL = 150.0 / 331.0
_GREY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale


def _uniform(lo: float, hi: float):
    return fn.random.uniform(range=[float(lo), float(hi)])


def _pad_crop(images, cfg: AugmentConfig, size: tuple[int, int]):
    """Random crop of `size` from the image padded by `crop_padding` on every side.

    An integer start in [-p, p] on each axis with out-of-bounds slicing is exactly torchvision's RandomCrop with
    padding p: the top-left corner is uniform over the 2p+1 positions of the padded image.
    """
    p = cfg.crop_padding
    start = fn.random.uniform(values=list(range(-p, p + 1)), shape=[2], dtype=types.INT32)
    policy = "constant" if cfg.pad_mode == "constant" else "reflect_101"  # np.pad/torch "reflect" = no edge repeat
    return fn.slice(images, start=start, shape=list(size), axes=[0, 1], out_of_bounds_policy=policy,
                    fill_values=float(cfg.pad_fill))


def _affine(images, cfg: AugmentConfig, size: tuple[int, int]):
    """torchvision's RandomAffine, applied with probability `affine_p`: scale, x-shear and rotation about the
    centre, then a shift by whole pixels; nearest neighbour, filled with `pad_fill`. Components whose range is
    empty are left out of the matrix (DALI cannot draw from an empty range)."""
    h, w = size
    centre = [w / 2.0, h / 2.0]  # (x, y): DALI's pixel centres sit at +0.5, so this is torchvision's centre
    steps = []
    lo, hi = cfg.affine_scale
    if lo < hi:
        scale = _uniform(lo, hi)
        steps.append(lambda m: fn.transforms.scale(*m, scale=fn.stack(scale, scale), center=centre))
    elif lo != 1.0:
        steps.append(lambda m: fn.transforms.scale(*m, scale=[lo, lo], center=centre))
    if cfg.affine_shear > 0:
        shear = _uniform(-cfg.affine_shear, cfg.affine_shear)
        steps.append(lambda m: fn.transforms.shear(*m, angles=fn.stack(shear, shear * 0.0), center=centre))
    if cfg.affine_degrees > 0:
        angle = _uniform(-cfg.affine_degrees, cfg.affine_degrees)
        steps.append(lambda m: fn.transforms.rotation(*m, angle=angle, center=centre))
    if cfg.affine_translate > 0:
        # torchvision rounds each shift to whole pixels: round(uniform(-t * side, t * side))
        shift = [dmath.floor(_uniform(-cfg.affine_translate * side, cfg.affine_translate * side) + 0.5)
                 for side in (w, h)]
        steps.append(lambda m: fn.transforms.translation(*m, offset=fn.stack(*shift)))
    matrix: tuple = ()
    for step in steps:
        matrix = (step(matrix),)
    if fn.random.coin_flip(probability=cfg.affine_p):
        images = fn.warp_affine(images, matrix=matrix[0], inverse_map=False, fill_value=float(cfg.pad_fill),
                                interp_type=types.INTERP_NN)
    return images


def _blur(images, cfg: AugmentConfig):
    """torchvision's GaussianBlur with probability `blur_p`: sigma drawn per image, borders mirrored (reflect 101)."""
    lo, hi = cfg.blur_sigma
    sigma = _uniform(lo, hi) if lo < hi else lo
    if fn.random.coin_flip(probability=cfg.blur_p):
        images = fn.gaussian_blur(images, window_size=cfg.blur_kernel, sigma=sigma)
    return images


def _color_jitter(images, cfg: AugmentConfig):
    if cfg.contrast > 0 or cfg.brightness > 0:
        # brightness * (pivot + contrast * (image - pivot)), rounded and saturated to uint8 by the cast: what
        # fn.brightness_contrast computes, bit for bit on the CPU graph (tests/test_gpu_graph.py). Written as
        # arithmetic because the pivot (the image's mean grey level) is computed on the images' device, and DALI
        # takes named arguments such as `contrast_center` from the CPU only: on a GPU graph that would be a
        # GPU->CPU copy per batch, so the pivot stays a regular (GPU) input of the arithmetic operator instead.
        out = images
        if cfg.contrast > 0:
            mean_rgb = fn.reductions.mean(images, axes=[0, 1])
            pivot = mean_rgb[0] * _GREY[0] + mean_rgb[1] * _GREY[1] + mean_rgb[2] * _GREY[2]
            out = pivot + _uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast) * (images - pivot)
        if cfg.brightness > 0:
            out = _uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness) * out
        images = fn.cast(out, dtype=types.UINT8)
    if cfg.saturation > 0 or cfg.hue > 0:
        extra = {}
        if cfg.saturation > 0:
            extra["saturation"] = _uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        if cfg.hue > 0:
            extra["hue"] = _uniform(-360.0 * cfg.hue, 360.0 * cfg.hue)  # DALI takes degrees, the config turns
        images = fn.hsv(images, **extra)
    return images


@contextlib.contextmanager
def _quiet_dali_deprecations():
    """Drop the DeprecationWarnings DALI's own auto_aug raises for the `experimental` ops it still calls.

    DALI issues them inside its own ``catch_warnings()`` + ``simplefilter("default")``, which overrides any filter
    a caller sets, so only the display hook can keep them off the user's console. Nothing a user can act on.
    """
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecationWarning) and "nvidia/dali" in str(filename).replace("\\", "/"):
            return
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _policy(images, cfg: AugmentConfig, size: tuple[int, int]):
    if cfg.policy == "none":
        return images
    with _quiet_dali_deprecations():
        return _build_policy(images, cfg, size)


def _build_policy(images, cfg: AugmentConfig, size: tuple[int, int]):
    common = dict(shape=size, fill_value=0, interp_type=types.INTERP_NN)  # torchvision: fill 0, nearest
    if cfg.policy == "autoaugment":
        return auto_augment.auto_augment(images, policy_name="reduced_cifar10",
                                         max_translate_rel=_TV_TRANSLATE_REL * 10 / 9, **common)
    if cfg.policy == "randaugment":
        return rand_augment.rand_augment(images, n=cfg.randaugment_n, m=cfg.randaugment_m, num_magnitude_bins=31,
                                         max_translate_rel=_TV_TRANSLATE_REL, **common)
    # TrivialAugmentWide translates up to 32 px over 31 bins in torchvision: the whole side of a CIFAR image.
    return trivial_augment.trivial_augment_wide(images, num_magnitude_bins=31, max_translate_rel=32 / size[1],
                                                **common)


def _erase(images, cfg: AugmentConfig, size: tuple[int, int]):
    """torchvision's RandomErasing on a CHW float image (box drawn in pixels, value in normalized units)."""
    h_img, w_img = size
    area = _uniform(*cfg.erase_scale) * float(h_img * w_img)
    aspect = dmath.exp(_uniform(math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1])))
    h = dmath.clamp(dmath.floor(dmath.sqrt(area * aspect) + 0.5), 1.0, float(h_img))
    w = dmath.clamp(dmath.floor(dmath.sqrt(area / aspect) + 0.5), 1.0, float(w_img))
    # top-left uniform over the integer positions where the box fits, as torch.randint(0, H - h + 1)
    y = dmath.min(dmath.floor(_uniform(0.0, 1.0) * (h_img - h + 1)), h_img - h)
    x = dmath.min(dmath.floor(_uniform(0.0, 1.0) * (w_img - w + 1)), w_img - w)
    if fn.random.coin_flip(probability=cfg.erase_p):
        images = fn.erase(images, anchor=fn.stack(y, x), shape=fn.stack(h, w), axis_names="HW",
                          fill_value=float(cfg.erase_value))
    return images


def augment(images, cfg: AugmentConfig, size: tuple[int, int]):
    """uint8 HWC images of `size` -> normalized float32 CHW, following the recipe's fixed order of operations."""
    if cfg.crop_padding > 0:
        images = _pad_crop(images, cfg, size)
    if cfg.flip_p > 0:
        images = fn.flip(images, horizontal=fn.random.coin_flip(probability=cfg.flip_p))
    if cfg.rotation > 0:
        images = fn.rotate(images, angle=_uniform(-cfg.rotation, cfg.rotation), keep_size=True,
                           fill_value=float(cfg.pad_fill), interp_type=types.INTERP_NN)
    if cfg.has_affine:
        images = _affine(images, cfg, size)
    if cfg.has_color_jitter:
        images = _color_jitter(images, cfg)
    if cfg.has_blur:
        images = _blur(images, cfg)
    images = _policy(images, cfg, size)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                      mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std])
    if cfg.erase_p > 0:
        images = _erase(images, cfg, size)
    return images


@pipeline_def(enable_conditionals=True)
def array_pipeline(source: Callable, cfg: AugmentConfig, size: tuple[int, int], device: str,
                   source_device: str = "cpu", cuda_stream: int | None = None):
    """Images from a batch callback: uint8 NHWC on the host (`source_device="cpu"`, moved over by ``.gpu()`` for a
    GPU graph) or already on the GPU (``"gpu"``: the dataset lives in GPU memory and the callback gathers there).

    `cuda_stream` is the stream the callback's GPU gather was queued on: DALI copies the batch on it, so the copy
    is ordered after the gather without a host synchronisation.
    """
    extra = {"device": "gpu", "cuda_stream": cuda_stream} if source_device == "gpu" else {}
    images = fn.external_source(source=source, batch=True, batch_info=True, layout="HWC", dtype=types.UINT8,
                                **extra)
    if device == "gpu":
        images = images.gpu()
    return augment(images, cfg, size)


def _decode_cropped(encoded, cfg: AugmentConfig, size: tuple[int, int], device: str):
    """Encoded files -> uint8 HWC images of `size`, by the recipe's crop ("pad" | "resized" | "centre").

    Both decoders upsample JPEG chroma the way libjpeg-turbo (and so torchvision's reference decoder) does by
    default ("fancy" upsampling); nvJPEG's own default differs, which would make GPU and CPU pixels disagree. EXIF
    orientation is applied (DALI's default, and the reference's decode_image_rgb), so a photo is upright. Resizing
    is bilinear and antialiased on both backends (torchvision v2 with antialias=True).
    """
    decoder = dict(device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, jpeg_fancy_upsampling=True)
    if cfg.crop == "resized":
        # torchvision's RandomResizedCrop, fused with decoding (a JPEG decodes only the box's region): log-uniform
        # w/h ratio, area fraction uniform, 10 tries. When every try fails DALI takes the whole image clamped to the
        # ratio range at a random position, where torchvision centres that box; DALI also re-checks the rounded
        # box's ratio. Both differences only matter for extreme aspect ratios or images of a few pixels.
        images = fn.decoders.image_random_crop(encoded, random_area=list(cfg.rrc_scale),
                                               random_aspect_ratio=list(cfg.rrc_ratio), num_attempts=10, **decoder)
        return fn.resize(images, size=list(size), antialias=True)
    images = fn.decoders.image(encoded, **decoder)
    if cfg.crop != "centre":
        return fn.resize(images, size=list(size), antialias=True)  # squash (pad-crop recipe): aspect ratio lost
    # torchvision's Resize(int(size / crop_ratio)) + CenterCrop(size), in its integer arithmetic: the shorter side
    # becomes `short`, the longer int(short * long / shorter) (truncated), and the crop's corner is
    # round((side - crop) / 2) with Python's round-half-to-even. The image's size comes from its header, on the
    # CPU, since resize and slice take their sizes as CPU arguments.
    shape = fn.peek_image_shape(encoded, dtype=types.FLOAT)  # (H, W, C) after EXIF orientation, as decoded
    h, w = shape[0], shape[1]
    short = float(int(size[0] / cfg.crop_ratio))
    shorter = dmath.min(h, w)
    out_h, out_w = dmath.floor(short * h / shorter), dmath.floor(short * w / shorter)
    images = fn.resize(images, size=fn.stack(out_h, out_w), antialias=True)
    start = [_round_half_even((out - side) / 2.0) for out, side in ((out_h, size[0]), (out_w, size[1]))]
    return fn.slice(images, start=fn.cast(fn.stack(*start), dtype=types.INT32), shape=list(size), axes=[0, 1])


def _round_half_even(x):
    """Python's round() of a non-negative multiple of 0.5: ties go to the even integer."""
    k = dmath.floor(x)
    tie = dmath.floor(2.0 * (x - k) + 0.5)  # 1 on a tie (x = k + 0.5), else 0
    odd = k - 2.0 * dmath.floor(k / 2.0)
    return k + tie * odd


@pipeline_def(enable_conditionals=True)
def file_pipeline(files: list[str], indices: list[int], cfg: AugmentConfig, size: tuple[int, int], device: str):
    """Files read in the given order (the epoch plan), decoded (nvJPEG on GPU) and cropped to `size` by the recipe.

    The reader's labels carry dataset indices, which the loader checks against the plan.
    """
    encoded, index = fn.readers.file(files=files, labels=indices, random_shuffle=False, pad_last_batch=True,
                                     name=READER_NAME)
    images = _decode_cropped(encoded, cfg, size, device)
    return augment(images, cfg, size), fn.cast(index, dtype=types.INT64)
