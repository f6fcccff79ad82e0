"""Image folders at real resolutions: the folder crop (random-resized-crop to train, resize + centre crop to
evaluate) on both backends, the config that selects it, and the files real folders hold (grey, CMYK, alpha, 16-bit,
progressive, EXIF-rotated, huge, tiny).

The random crop is compared between DALI and the torchvision reference as distributions read back from probe PNGs
(lossless) whose pixels encode their coordinates: a crop resized by a bilinear filter keeps a linear ramp linear,
so the output's mean and slope give the box's centre and size.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dali_pipes import AugmentConfig, ConfigError, DataError, create_loader, resolve_augment
from dali_pipes.config import eval_config, resolve_crop
from dali_pipes.folder import MAX_IMAGE_PIXELS, decode_image_rgb, list_image_folder

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning"
)

BACKENDS = ("dali", "torchvision")
PROBE_W, PROBE_H = 64, 48  # probe image (width, height): 4:3, as most photos
X_STEP, Y_STEP = 3, 4  # R = 4 + 3 * column, G = 4 + 4 * row: both stay below 255 over the probe


def probe_pixels() -> np.ndarray:
    """HWC uint8: R encodes the column, G the row, B = 200."""
    r = 4 + X_STEP * np.arange(PROBE_W)
    g = 4 + Y_STEP * np.arange(PROBE_H)
    return np.stack([np.tile(r, (PROBE_H, 1)), np.tile(g[:, None], (1, PROBE_W)),
                     np.full((PROBE_H, PROBE_W), 200)], axis=-1).astype(np.uint8)


def probe_folder(root: Path, n: int) -> Path:
    """`n` copies of the probe PNG in one train class (and one in val)."""
    buf = io.BytesIO()
    Image.fromarray(probe_pixels()).save(buf, format="PNG")
    for split, count in (("train", n), ("val", 1)):
        folder = root / split / "probe"
        folder.mkdir(parents=True)
        for k in range(count):
            (folder / f"{k:04d}.png").write_bytes(buf.getvalue())
    return root


def epoch_levels(root: Path, backend: str, augment, split: str = "train", size: int = 32) -> torch.Tensor:
    """One epoch's images in uint8 units (float, unrounded), NCHW."""
    loader = create_loader("folder", root, split, batch_size=100, backend=backend, device="cpu", augment=augment,
                           num_workers=0, num_threads=2, image_size=size)
    x = torch.cat([images for images, _ in loader])
    mean = torch.tensor(loader.cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(loader.cfg.std).view(1, 3, 1, 1) * 255
    return x * std + mean


def boxes(levels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: the crop's width and height in probe pixels, its centre, and whether it was flipped.

    The slope of R across the middle columns (away from the borders, where the resize filter clamps) is
    X_STEP * box width / output width per output column; its sign says whether the image was flipped.
    """
    r, g = levels[:, 0].double(), levels[:, 1].double()
    size = levels.shape[-1]
    mid = slice(size // 4, 3 * size // 4)
    cols = torch.arange(size, dtype=torch.float64)[mid]
    dx = r[:, :, mid].mean(1)  # (n, columns)
    dy = g[:, mid, :].mean(2)  # (n, rows)

    def slope(v: torch.Tensor) -> torch.Tensor:
        c = cols - cols.mean()
        return ((v - v.mean(1, keepdim=True)) * c).sum(1) / (c * c).sum()

    sx, sy = slope(dx), slope(dy)
    w = (sx.abs() / X_STEP * size).numpy()
    h = (sy.abs() / Y_STEP * size).numpy()
    return {"w": w, "h": h, "area": w * h / (PROBE_W * PROBE_H), "log_ratio": np.log(w / h),
            "cx": ((r.mean((1, 2)) - 4) / X_STEP + 0.5).numpy(), "cy": ((g.mean((1, 2)) - 4) / Y_STEP + 0.5).numpy(),
            "flipped": (sx < 0).numpy()}


# ------------------------------------------------------------------------------------------------ the recipe
def test_the_crop_is_resolved_per_dataset() -> None:
    weak = resolve_augment("weak")
    assert resolve_crop(weak, folder=False).crop == "pad" and resolve_crop(weak, folder=False).crop_padding == 4
    folder = resolve_crop(weak, folder=True)
    assert folder.crop == "resized" and folder.crop_padding == 0  # the random crop replaces the padding
    assert resolve_crop(resolve_augment("none+autoaugment"), folder=True).crop == "resized"
    assert resolve_crop(resolve_augment("none"), folder=True).crop == "centre"
    assert resolve_crop(folder, folder=True) == folder  # idempotent
    assert resolve_crop(AugmentConfig(crop="pad", crop_padding=4), folder=True).crop == "pad"
    ev = eval_config(replace_fields(folder, crop_ratio=0.5))
    assert resolve_crop(ev, folder=True).crop == "centre" and ev.crop_ratio == 0.5 and ev.flip_p == 0


def replace_fields(cfg: AugmentConfig, **values) -> AugmentConfig:
    return AugmentConfig.from_dict({**cfg.to_dict(), **values})


@pytest.mark.parametrize("values, field", [
    (dict(crop="resized", crop_padding=4), "crop"),
    (dict(crop="centre", crop_padding=2), "crop"),
    (dict(crop="random"), "crop"),
    (dict(rrc_scale=(0.5, 0.2)), "rrc_scale"),
    (dict(rrc_scale=(0.0, 1.0)), "rrc_scale"),
    (dict(rrc_ratio=(2.0, 1.0)), "rrc_ratio"),
    (dict(crop_ratio=0.0), "crop_ratio"),
    (dict(crop_ratio=1.5), "crop_ratio"),
])
def test_a_wrong_crop_is_refused_when_built_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^augment\.{field}="):
        AugmentConfig(**values)


@pytest.mark.parametrize("crop", ["resized", "centre"])
def test_a_folder_crop_on_an_array_dataset_is_refused_before_loading(crop: str) -> None:
    with pytest.raises(ConfigError, match=rf"^augment\.crop='{crop}' is invalid: array datasets"):
        create_loader("cifar10", "/nonexistent", "train", device="cpu", augment={"crop": crop}, download=False)


def test_folders_default_to_224_pixels_and_arrays_keep_their_size(tmp_path) -> None:
    root = probe_folder(tmp_path, 2)
    loader = create_loader("folder", root, "val", batch_size=2, backend="torchvision", device="cpu", num_workers=0)
    assert loader.image_size == (224, 224)
    images, _ = next(iter(loader))
    assert tuple(images.shape) == (1, 3, 224, 224)
    arrays = create_loader("synthetic", split="train", batch_size=8, backend="dali", device="cpu", num_samples=8,
                           num_threads=1)
    assert arrays.image_size == (32, 32) and arrays.cfg.crop == "pad"


# ---------------------------------------------------------------------------------- lockstep: distributions
@pytest.fixture(scope="module")
def rrc_draws(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    root = probe_folder(tmp_path_factory.mktemp("probe"), 600)
    cfg = AugmentConfig(crop="resized", flip_p=0.5)
    return {b: boxes(epoch_levels(root, b, cfg)) for b in BACKENDS}


def test_random_resized_crop_area_and_aspect_distributions_agree(rrc_draws) -> None:
    # 600 draws per backend: the standard error of a mean area is ~0.011 and of a mean log-ratio ~0.006; the
    # tolerances are about 3 of them. Box sizes are read back to ~1 probe pixel.
    dali, ref = rrc_draws["dali"], rrc_draws["torchvision"]
    for draws in (dali, ref):
        assert 0.06 < draws["area"].min() and draws["area"].max() < 1.06  # scale (0.08, 1), read-back error
        assert np.log(3 / 4) - 0.1 < draws["log_ratio"].min() and draws["log_ratio"].max() < np.log(4 / 3) + 0.1
        assert draws["area"].std() > 0.2  # boxes of every size are drawn, not one
    assert abs(dali["area"].mean() - ref["area"].mean()) < 0.035
    assert abs(dali["log_ratio"].mean() - ref["log_ratio"].mean()) < 0.02
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(dali["area"], q) - np.quantile(ref["area"], q)) < 0.06, q
        assert abs(np.quantile(dali["log_ratio"], q) - np.quantile(ref["log_ratio"], q)) < 0.05, q


def test_random_resized_crop_positions_are_spread_alike(rrc_draws) -> None:
    # The box's centre: uniform offsets put it at the probe's centre on average, spread by the free room.
    for b in BACKENDS:
        cx, cy = rrc_draws[b]["cx"], rrc_draws[b]["cy"]
        assert abs(cx.mean() - PROBE_W / 2) < 1.5 and abs(cy.mean() - PROBE_H / 2) < 1.5, b
        assert cx.std() > 4 and cy.std() > 3, b
    assert abs(rrc_draws["dali"]["cx"].std() - rrc_draws["torchvision"]["cx"].std()) < 1.5


def test_flips_happen_half_the_time_after_the_crop(rrc_draws) -> None:
    for b in BACKENDS:
        assert abs(rrc_draws[b]["flipped"].mean() - 0.5) < 0.07, b  # 3.4 standard errors at n = 600


@pytest.fixture(scope="module")
def probe_300(tmp_path_factory) -> Path:
    return probe_folder(tmp_path_factory.mktemp("probe_300"), 300)


# (recipe, max difference of channel means in uint8 levels, max relative difference of channel spreads). Hue
# dominates where the recipe has it: DALI's linear hsv rotates chroma along another colour wheel than
# torchvision's HSV (dali_pipes.dali_graph), which on the probe's constant blue moved the spreads by 0.147 (300
# images); without hue the same recipe agrees within a few percent.
STAT_RECIPES = [("weak", 2.0, 0.04), ({"preset": "standard", "hue": 0.0}, 4.0, 0.06), ("standard", 6.0, 0.2)]


@pytest.mark.parametrize("recipe, mean_tol, std_tol", STAT_RECIPES, ids=["weak", "standard-no-hue", "standard"])
def test_folder_recipes_have_matching_per_channel_statistics(probe_300, recipe, mean_tol: float,
                                                             std_tol: float) -> None:
    stats = {}
    for b in BACKENDS:
        x = epoch_levels(probe_300, b, recipe)
        stats[b] = (x.mean((0, 2, 3)), x.std((0, 2, 3)))
    (mean_d, std_d), (mean_t, std_t) = stats["dali"], stats["torchvision"]
    assert (mean_d - mean_t).abs().max() < mean_tol, (mean_d, mean_t)
    # relative, except on channels that barely vary (the probe's blue without jitter): there 5 levels is the scale
    assert ((std_d - std_t).abs() / std_t.clamp(min=5.0)).max() < std_tol, (std_d, std_t)
    assert std_d[:2].min() > 10  # the crops differ: the coordinate channels spread


# --------------------------------------------------------------------------------------- the evaluation path
@pytest.mark.parametrize("size", [32, 40, 56])
def test_resize_and_centre_crop_match_the_reference_within_one_level(tmp_path, size: int) -> None:
    root = probe_folder(tmp_path, 1)
    out = {b: epoch_levels(root, b, "none", split="val", size=size) for b in BACKENDS}
    diff = (out["dali"] - out["torchvision"]).abs()
    assert tuple(out["dali"].shape) == (1, 3, size, size)
    assert diff.max() < 1.01 and diff.mean() < 0.5, (diff.max(), diff.mean())
    # A centre crop: the output's centre is the probe's centre; its width is size * crop_ratio of the shorter side
    # (48 px) scaled to int(size / 0.875): 48 * 0.875 = 42 probe pixels wide, whatever `size`.
    box = boxes(out["torchvision"])
    assert abs(box["cx"][0] - PROBE_W / 2) < 0.6 and abs(box["cy"][0] - PROBE_H / 2) < 0.6
    short = int(size / 0.875)
    assert abs(box["w"][0] - size * PROBE_H / short) < 1.0


# ------------------------------------------------------------------------------------------ what folders hold
def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) * 255 // max(1, h + w - 2)],
                    axis=-1).astype(np.uint8)


def _exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A 40x24 (w x h) JPEG tagged with EXIF orientation 6 (rotate 90 degrees clockwise to display): returns the
    upright pixels a viewer shows, 24 wide and 40 high."""
    pixels = _gradient(24, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return np.rot90(pixels, k=-1)


def _reality_folder(root: Path) -> dict[str, Path]:
    train = root / "train" / "x"
    train.mkdir(parents=True)
    (root / "val" / "x").mkdir(parents=True)
    base = _gradient(30, 40)
    files = {}

    def save(name: str, image: Image.Image, **options) -> None:
        files[name] = train / name
        image.save(files[name], **options)

    save("grey.jpg", Image.fromarray(base[..., 0]), quality=95)
    save("cmyk.jpg", Image.fromarray(base).convert("CMYK"), quality=95)
    save("rgba.png", Image.fromarray(np.dstack([base, np.full(base.shape[:2], 90, np.uint8)])))
    save("grey16.png", Image.fromarray(base[..., 0].astype(np.uint16) * 257))
    save("progressive.jpg", Image.fromarray(base), quality=90, progressive=True)
    save("tiny_1x1.png", Image.fromarray(np.full((1, 1, 3), 77, np.uint8)))
    save("tiny_3x2.jpg", Image.fromarray(_gradient(2, 3)), quality=95)
    save("thin_2x60.png", Image.fromarray(_gradient(60, 2)))
    files["exif.jpg"] = train / "exif.jpg"
    _exif_rotated_jpeg(files["exif.jpg"])
    for name, path in files.items():
        (root / "val" / "x" / name).write_bytes(path.read_bytes())
    return files


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_kind_of_file_decodes_to_the_crop_on_both_backends(tmp_path, backend: str, split: str) -> None:
    files = _reality_folder(tmp_path)
    loader = create_loader("folder", tmp_path, split, batch_size=4, backend=backend, device="cpu",
                           augment="standard", num_workers=0, num_threads=1, image_size=24, return_index=True)
    images, _, index = (torch.cat(t) for t in zip(*loader))
    assert sorted(index.tolist()) == list(range(len(files)))
    assert tuple(images.shape) == (len(files), 3, 24, 24) and torch.isfinite(images).all()


def test_exif_orientation_is_applied_by_both_backends(tmp_path) -> None:
    upright = _exif_rotated_jpeg(tmp_path / "exif.jpg")
    ref = decode_image_rgb(str(tmp_path / "exif.jpg")).permute(1, 2, 0).numpy()
    assert ref.shape == upright.shape  # 40 high, 24 wide: turned as a viewer shows it
    assert np.abs(ref.astype(int) - upright.astype(int)).mean() < 3  # JPEG loss only
    root = tmp_path / "ds"
    (root / "train" / "x").mkdir(parents=True)
    (root / "val" / "x").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split / "x" / "exif.jpg").write_bytes((tmp_path / "exif.jpg").read_bytes())
    out = {b: epoch_levels(root, b, "none", split="val", size=16) for b in BACKENDS}
    assert (out["dali"] - out["torchvision"]).abs().max() < 2.01  # libjpeg-turbo both; resizers round apart
    # Upright: green (the row ramp of the stored image) now runs across the columns, as it does in `upright`.
    g = out["dali"][0, 1]
    assert (g[:, -1] - g[:, 0]).mean() < -40 and (g[-1, :] - g[0, :]).abs().mean() < 20


def _png_header_only(width: int, height: int) -> bytes:
    """A structurally whole PNG claiming `width` x `height` (its image data is one empty zlib stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_above_the_pixel_limit_is_skipped_at_listing_naming_it(tmp_path, backend: str) -> None:
    probe_folder(tmp_path, 2)
    huge = tmp_path / "train" / "probe" / "huge.png"
    huge.write_bytes(_png_header_only(9000, 9000))
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.warns(UserWarning, match=rf"skipped 1 image files larger than {MAX_IMAGE_PIXELS} pixels.*"
                                         rf"e\.g\. {huge} \(9000x9000 pixels"):
        ds = list_image_folder(tmp_path, "train")
    assert str(huge) not in ds.files and len(ds.files) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert len(epoch_levels(tmp_path, backend, "weak")) == 2  # the epoch runs on without it


def test_a_class_holding_only_a_huge_image_is_refused_naming_it(tmp_path) -> None:
    probe_folder(tmp_path, 2)
    (tmp_path / "train" / "big").mkdir()
    (tmp_path / "train" / "big" / "huge.png").write_bytes(_png_header_only(9000, 9000))
    with pytest.raises(DataError, match=r"train/big has no usable image \(skipped 1 images too large\)"):
        list_image_folder(tmp_path, "train")
