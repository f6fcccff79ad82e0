"""The DALI graph: one definition, the device ("gpu" | "cpu") a parameter.

Graph functions only build graphs; the loader decides what runs when. Every per-sample random parameter is drawn on
the host (dali_pipes.draws, dali_pipes.policy) and arrives through one CPU external source, but the flips of array
graphs, which their image source applies as it gathers (:func:`array_pipeline`); the graph keeps only operators
that touch pixels. The torchvision reference applies the same parameters: crop, flip and erasing agree
image for image; kept differences (tested in tests/test_lockstep.py):

- colour jitter runs in a fixed order (contrast, brightness, saturation, hue) where torchvision draws a random order
  per image; contrast pivots on the image's mean grey level as torchvision does (DALI's default pivot is 128).
- saturation and hue use DALI's ``hsv`` operator: a linear approximation in RGB (chroma scaled and rotated around
  the grey axis), where torchvision converts to HSV. Saturation agrees up to rounding; hue shifts by the same angle
  but along a different colour wheel, so single images differ while the drawn range is the same.
- rounding: DALI rounds colour results to nearest where torchvision truncates (contrast, brightness: 1 level;
  saturation: 2); nearest-neighbour ties in rotation/affine break differently (0.3% of images differ somewhere).
- the policies keep torchvision's own draws in the reference (its classes take no given parameters): they agree
  in distribution only. DALI's policy choices are drawn on the host as well (dali_pipes.policy).
- folder crops (dali_pipes.config): random-resized-crop draws as torchvision's does (area uniform, ratio
  log-uniform, 10 tries) but, after 10 failed tries, places its fallback box at random where torchvision centres it;
  resizing (bilinear, antialiased on both) rounds differently, so the resize + centre crop of ``augment="none"`` on
  folders agrees to 1 uint8 level, not exactly (tests/test_folder_resolution.py).
- AutoAugment uses DALI's CIFAR-10 policy (the same sub-policies as torchvision's; DALI's 11 magnitude bins), with
  translations scaled so each bin shifts as far as torchvision's does.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from . import draws, policy
from .config import AugmentConfig

READER_NAME = "reader"  # the file reader's name, matched by the iterator for exact epoch sizes
_GREY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale
# Share of the JPEG bytes the GPU's hardware JPEG engines decode (A100/H100/H200; elsewhere ignored), the rest going
# to nvJPEG's CUDA path (Huffman decoding on DALI's host threads below 1 MP, hybrid_huffman_threshold). Passed on
# purpose rather than left to DALI's default (0.65 in DALI 2.4; its nvImageCodec decoder once shipped 0.90, DALI PR
# #6366): the engines take most of the work off the SMs and the host threads without every image queueing behind
# them. GPU and CPU pixels agree only if the engines upsample chroma as libjpeg-turbo does: DALI's legacy decoder
# passed nvJPEG's interpolation flag to them with jpeg_fancy_upsampling (PR #4662, nvJPEG >= 12.1); whether DALI
# 2.4's nvImageCodec path does is not verified here, so tests/test_gpu.py checks the parity at 0 (no engine), at
# this value and at 1 (every image on the engines). If it fails at this value, 0 is the choice that keeps parity.
HW_DECODER_LOAD = 0.65


# The parameters the graph reads from the draws (dali_pipes.draws), in the external source's output order.
_RECIPE_INPUTS = ("crop", "flip", "rotate_matrix", "affine_matrix", "jitter_gain", "jitter_pivot", "saturation",
                  "hue_degrees", "blur_apply", "blur_sigma", "erase_anchor", "erase_shape")


def input_names(cfg: AugmentConfig, size: tuple[int, int], flipped: bool = False) -> list[str]:
    """The per-sample parameters the graph of `cfg` reads, in the order :func:`draw_inputs` returns them.
    `flipped`: the image source mirrors the samples itself (:func:`array_pipeline`), so ``flip`` is not read."""
    probe = _jitter_inputs(draws.draw(cfg, size, 0, 0, np.zeros(1, dtype=np.int64)))
    names = [k for k in _RECIPE_INPUTS if k in probe and not (flipped and k == "flip")]
    return names + policy.input_names(cfg, size)


def draw_inputs(cfg: AugmentConfig, size: tuple[int, int], seed: int, epoch: int, index: np.ndarray,
                flipped: bool = False) -> tuple[np.ndarray, ...]:
    """One DALI batch of parameters for the samples `index`: the external source's outputs, in input_names order.

    `flipped`: the source mirrored the samples the draws flip before the graph sees them. The pad-crop then takes
    the mirrored window: with symmetric padding (constant or reflect), cropping the mirrored image at column
    offset -x is the mirror of the crop at x, so the graph's output is the same image for image."""
    values = {**_jitter_inputs(draws.draw(cfg, size, seed, epoch, index)), **policy.draw(cfg, size, seed, epoch, index)}
    if flipped and "flip" in values and "crop" in values:
        crop = values["crop"].copy()
        crop[:, 1] = np.where(values["flip"] == 1, -crop[:, 1], crop[:, 1])
        values["crop"] = crop
    return tuple(np.ascontiguousarray(values[k]) for k in input_names(cfg, size, flipped))


def _jitter_inputs(values: dict) -> dict:
    """The drawn contrast and brightness factors as the graph's arithmetic reads them (:func:`_color_jitter`):
    ``jitter_gain`` = brightness * contrast and ``jitter_pivot``, the 1x3 matrix brightness * (1 - contrast) *
    grey weights that maps a sample's channel means to its pivot term."""
    contrast, brightness = values.pop("contrast", None), values.pop("brightness", None)
    if contrast is None and brightness is None:
        return values
    n = len(contrast if contrast is not None else brightness)
    c = np.ones(n, np.float32) if contrast is None else contrast.reshape(n).astype(np.float32)
    b = np.ones(n, np.float32) if brightness is None else brightness.reshape(n).astype(np.float32)
    values["jitter_gain"] = b * c
    if contrast is not None:
        values["jitter_pivot"] = ((b * (1.0 - c))[:, None] * np.asarray(_GREY, np.float32)).reshape(n, 1, 3)
    return values


def _definition_draws(cfg: AugmentConfig, size: tuple[int, int], flipped: bool) -> Callable:
    """Parameters for a graph defined without a loader (tools that only define graphs): samples 0..B-1, epoch 0."""
    from nvidia.dali.pipeline import Pipeline

    batch = Pipeline.current().max_batch_size
    return lambda: draw_inputs(cfg, size, 0, 0, np.arange(batch), flipped)


def _parameters(cfg: AugmentConfig, size: tuple[int, int], source: Callable | None, flipped: bool = False) -> dict:
    """The drawn parameters as CPU DataNodes: one external source with one output per parameter (batch mode, so a
    short final batch is taken as is). DALI takes named arguments from the CPU only, which is where these are."""
    names = input_names(cfg, size, flipped)
    if not names:
        return {}
    outputs = fn.external_source(source=source or _definition_draws(cfg, size, flipped), num_outputs=len(names),
                                 batch=True, **({"batch_info": True} if source is not None else {}))
    return dict(zip(names, outputs if isinstance(outputs, (list, tuple)) else [outputs]))


def _warp(images, matrix, cfg: AugmentConfig):
    """Nearest-neighbour warp by a per-sample matrix from output to input pixels (torchvision's F.affine/F.rotate
    matrix, dali_pipes.draws.inverse_affine), filled with `pad_fill`."""
    return fn.warp_affine(images, matrix=matrix, inverse_map=True, fill_value=float(cfg.pad_fill),
                          interp_type=types.INTERP_NN)


def _color_jitter(images, cfg: AugmentConfig, p: dict):
    if cfg.contrast > 0 or cfg.brightness > 0:
        # brightness * (pivot + contrast * (image - pivot)) = gain * image + brightness * (1 - contrast) * pivot,
        # rounded and saturated to uint8 by the cast: what fn.brightness_contrast computes, but for 1 level on
        # rounding ties (tests/test_gpu_graph.py). The pivot (torchvision's: the image's mean grey level) is
        # computed on the images' device, and DALI takes named arguments such as `contrast_center` from the CPU
        # only, so it stays a regular (GPU) input of the arithmetic. The per-sample factors are multiplied on the
        # host with the draws (:func:`_jitter_inputs`), and the grey weights times brightness * (1 - contrast) are
        # one 1x3 matrix per sample for fn.coord_transform: the pivot term is one operator, not eight, each a GPU
        # launch with per-sample host setup.
        out = p["jitter_gain"] * images
        if cfg.contrast > 0:
            channel_means = fn.reductions.mean(images, axes=[0, 1], keep_dims=True)  # (1, 1, 3)
            out = out + fn.coord_transform(channel_means, M=p["jitter_pivot"], dtype=types.FLOAT)
        images = fn.cast(out, dtype=types.UINT8)
    if cfg.saturation > 0 or cfg.hue > 0:
        extra = {}
        if cfg.saturation > 0:
            extra["saturation"] = p["saturation"]
        if cfg.hue > 0:
            extra["hue"] = p["hue_degrees"]  # DALI takes degrees
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


def augment(images, cfg: AugmentConfig, size: tuple[int, int], p: dict, device: str):
    """uint8 HWC images of `size` -> normalized float32 CHW, following the recipe's fixed order of operations.

    `p`: the drawn parameters (:func:`_parameters`). Every operator here touches pixels; the parameters arrive as
    CPU arguments, and a sample that does not get an operation gets its neutral parameter (flip 0, identity
    matrix, empty erase box) rather than a conditional, except for the blur (no neutral sigma) and the policy.
    """
    if cfg.crop_padding > 0:
        # An integer start in [-p, p] on each axis with out-of-bounds slicing is exactly torchvision's RandomCrop
        # with padding p: the top-left corner is uniform over the 2p+1 positions of the padded image.
        policy_ = "constant" if cfg.pad_mode == "constant" else "reflect_101"  # np.pad/torch "reflect": no edge
        images = fn.slice(images, start=p["crop"], shape=list(size), axes=[0, 1], out_of_bounds_policy=policy_,
                          fill_values=float(cfg.pad_fill))
    # Without a "flip" parameter the source mirrored the images already (array graphs: see array_pipeline). A flip
    # commutes with everything up to the normalisation but the geometric steps (rotation, affine, the policies'
    # shears and translations): without those it is crop_mirror_normalize's `mirror`, one operator less.
    flip = "flip" in p
    late_flip = flip and cfg.rotation == 0 and not cfg.has_affine and cfg.policy == "none"
    if flip and not late_flip:
        images = fn.flip(images, horizontal=p["flip"])
    if cfg.rotation > 0:
        images = _warp(images, p["rotate_matrix"], cfg)
    if cfg.has_affine:
        images = _warp(images, p["affine_matrix"], cfg)
    if cfg.has_color_jitter:
        images = _color_jitter(images, cfg, p)
    if cfg.has_blur:
        if p["blur_apply"]:
            images = fn.gaussian_blur(images, window_size=cfg.blur_kernel, sigma=p["blur_sigma"])
    if cfg.policy != "none":
        with _quiet_dali_deprecations():
            images = policy.apply(images, cfg, size, p, device)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                      mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std],
                                      **({"mirror": p["flip"]} if late_flip else {}))
    if cfg.erase_p > 0:
        # torchvision's RandomErasing on the normalized CHW image; an empty box leaves the image as it is
        images = fn.erase(images, anchor=p["erase_anchor"], shape=p["erase_shape"], axis_names="HW",
                          fill_value=float(cfg.erase_value))
    return images


@pipeline_def(enable_conditionals=True)
def array_pipeline(source: Callable, cfg: AugmentConfig, size: tuple[int, int], device: str,
                   source_device: str = "cpu", params: Callable | None = None, flipped: bool = False):
    """Images from a batch callback: uint8 NHWC on the host (`source_device="cpu"`, moved over by ``.gpu()`` for a
    GPU graph) or already on the GPU (``"gpu"``: the dataset lives in GPU memory and the callback gathers there).

    `params(batch_info)` returns the batch's drawn parameters (:func:`draw_inputs`, with the same `flipped`);
    without it, the draws of samples 0..B-1 (for tools that only define graphs). `flipped`: the callback mirrors
    the samples whose draw flips them (dali_pipes.draws.flips) as it gathers them, and the graph has no flip. A
    per-sample mirror in DALI's GPU operators (crop_mirror_normalize's `mirror`, fn.flip's `horizontal`) cost
    about 5 us per 32x32 image on an H200 (a batch of 1024 fell from 440-520k to 100-180k img/s, 2026-12-04),
    where a gather that mirrors is one batched torch or numpy operation.
    """
    # cuda_stream=None: for a torch tensor DALI 2.4 reads torch.cuda.current_stream() at each feed
    # (types._get_default_stream_for_array), in the thread that ran the callback, so its copy is queued after the
    # callback's gather on whatever stream the training loop is on, without a host synchronisation. A stream
    # fixed when the graph is defined would race with a loop that runs under torch.cuda.stream(s).
    extra = {"device": "gpu", "cuda_stream": None} if source_device == "gpu" else {}
    images = fn.external_source(source=source, batch=True, batch_info=True, layout="HWC", dtype=types.UINT8,
                                **extra)
    if device == "gpu":
        images = images.gpu()
    return augment(images, cfg, size, _parameters(cfg, size, params, flipped), device)


def _decode_cropped(encoded, cfg: AugmentConfig, size: tuple[int, int], device: str,
                    hw_decoder_load: float = HW_DECODER_LOAD):
    """Encoded files -> uint8 HWC images of `size`, by the recipe's crop ("pad" | "resized" | "centre").

    Both decoders upsample JPEG chroma the way libjpeg-turbo (and so torchvision's reference decoder) does by
    default ("fancy" upsampling); nvJPEG's own default differs, which would make GPU and CPU pixels disagree. EXIF
    orientation is applied (DALI's default, and the reference's decode_image_rgb), so a photo is upright. Resizing
    is bilinear and antialiased on both backends (torchvision v2 with antialias=True). `hw_decoder_load`: see
    :data:`HW_DECODER_LOAD` (the mixed decoder only).
    """
    decoder = dict(device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, jpeg_fancy_upsampling=True)
    if device == "gpu":
        decoder["hw_decoder_load"] = float(hw_decoder_load)
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
def file_pipeline(files: list[str], indices: list[int], cfg: AugmentConfig, size: tuple[int, int], device: str,
                  params: Callable | None = None, hw_decoder_load: float = HW_DECODER_LOAD):
    """Files read in the given order (the epoch plan), decoded (nvJPEG on GPU) and cropped to `size` by the recipe.

    The reader's labels carry dataset indices, which the loader checks against the plan.
    """
    encoded, index = fn.readers.file(files=files, labels=indices, random_shuffle=False, pad_last_batch=True,
                                     name=READER_NAME)
    images = _decode_cropped(encoded, cfg, size, device, hw_decoder_load)
    return augment(images, cfg, size, _parameters(cfg, size, params), device), fn.cast(index, dtype=types.INT64)


@pipeline_def(enable_conditionals=True)
def shards_pipeline(files: list[str], cfg: AugmentConfig, size: tuple[int, int], device: str,
                    index_files: list[str] | None = None, params: Callable | None = None):
    """Samples of tar shards (WebDataset layout) read in the order their index files list them (the epoch plan,
    dali_pipes.shards), decoded (nvJPEG on GPU) and cropped to `size` by the recipe, as :func:`file_pipeline`.

    The second output is each sample's source ("<tar>:<offset>:<key>.<ext>", padded with zeros to the batch's
    longest), whose key (the sample's index in its split) the loader checks against the plan. The reader is not
    sharded (no shard_id/num_shards): the plan already gave this rank its own tar shards, whole.
    """
    encoded = fn.readers.webdataset(paths=files, index_paths=index_files or [], ext=["jpg;jpeg;png;bmp"],
                                    missing_component_behavior="error", random_shuffle=False, pad_last_batch=True,
                                    name=READER_NAME)
    source = fn.pad(fn.get_property(encoded, key="source_info"), fill_value=0)
    images = _decode_cropped(encoded, cfg, size, device)
    return augment(images, cfg, size, _parameters(cfg, size, params), device), source
