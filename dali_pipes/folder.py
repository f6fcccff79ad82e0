"""List an image-folder dataset on disk, and decode one of its files the way the torchvision reference loader does.

Layout::

    <root>/train/<class>/*.jpg|*.jpeg|*.png|*.bmp
    <root>/val/<class>/...

Defined behaviour of :func:`list_image_folder`:

* Classes are the sorted names of the sub-folders of ``<root>/train``, for both splits, so a label means the same
  class in train and val even when a val folder lacks a class.
* A missing root, split folder or ``<root>/train``, or a split folder without class folders, raises a one-line
  :class:`DataError` naming the path and the expected layout.
* Names starting with "." (files and folders, at every level) are ignored silently: ``.DS_Store``,
  ``.ipynb_checkpoints``.
* Inside a class folder, entries whose extension (case-insensitive) is not .jpg/.jpeg/.png/.bmp are skipped, and so
  are sub-folders (only one level is read); ONE ``UserWarning`` per split gives how many were skipped and one example.
* Files with an image extension that are empty, or whose first 8 bytes are not a JPEG, PNG or BMP signature, are
  skipped with ONE ``UserWarning`` per split (count and one example). A JPEG named ``.png`` is kept: decoders go by
  content, not by name. A file that cannot be opened (permissions, dangling link) raises :class:`DataError`.
* Files lying directly in the split folder (outside any class folder) are skipped with ONE ``UserWarning`` per split.
* A train class folder with no usable image raises :class:`DataError` ("add images or remove the folder"). In val,
  a class folder may be empty or missing, but a val folder whose name is not a train class raises
  :class:`DataError`, and a val split with no usable image at all raises :class:`DataError`.
* ``files`` are absolute path strings, sorted by name within each class, classes in label order, so the listing is
  deterministic; ``labels`` is an int64 array.

:func:`decode_image_rgb` returns uint8 CHW RGB for any file the listing keeps (grey, CMYK, RGBA, palette, 16-bit),
matching DALI's CPU decoder, and turns decode failures into :class:`DataError`.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.io
from PIL import Image, UnidentifiedImageError

from dali_pipes.errors import ConfigError, DataError
from dali_pipes.sources import FolderDataset

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
SPLITS: tuple[str, ...] = ("train", "val")
LAYOUT = "expected <root>/train/<class>/*.jpg|jpeg|png|bmp and <root>/val/<class>/..."

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BMP_MAGIC = b"BM"


def _has_image_signature(path: Path) -> bool:
    """True when the file starts like a JPEG, PNG or BMP; empty files are False."""
    # Checked up front because DALI's decoder raises on such a file in the middle of an epoch (killing the run hours
    # in), and cannot skip it; 8 bytes per file keeps listing cheap even for ImageNet-sized folders.
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return head.startswith((_JPEG_MAGIC, _PNG_MAGIC, _BMP_MAGIC))


def _visible_children(folder: Path) -> list[Path]:
    """Entries of ``folder`` not starting with ".", sorted by name."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _warn_skipped(paths: list[Path], what: str, split: str) -> None:
    """Emit the single per-split warning for one kind of skipped entry."""
    if paths:
        warnings.warn(
            f"{split}: skipped {len(paths)} {what}, e.g. {paths[0]}",
            UserWarning,
            stacklevel=3,
        )


def list_image_folder(root: str | Path, split: str) -> FolderDataset:
    """List ``<root>/<split>/<class>/*`` images with labels from the sorted class folders of ``<root>/train``."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise DataError(f"image folder root not found: {root_path} ({LAYOUT})")
    train_dir = root_path / "train"
    split_dir = root_path / split
    for needed in dict.fromkeys((train_dir, split_dir)):
        if not needed.is_dir():
            raise DataError(f"missing folder {needed} ({LAYOUT})")

    classes = tuple(p.name for p in _visible_children(train_dir) if p.is_dir())
    if not classes:
        raise DataError(f"no class folders in {train_dir} ({LAYOUT})")
    label_of = {name: i for i, name in enumerate(classes)}

    entries = _visible_children(split_dir)
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if not p.is_dir()]
    if not class_dirs:
        raise DataError(f"no class folders in {split_dir} ({LAYOUT})")
    for folder in class_dirs:
        if folder.name not in label_of:
            raise DataError(
                f"class folder {folder} is not a class of {train_dir}; rename it to a train class or remove it"
            )

    files: list[str] = []
    labels: list[int] = []
    not_images: list[Path] = []
    corrupt: list[Path] = []
    # Label order, not directory order, so train and val list classes identically.
    for folder in sorted(class_dirs, key=lambda p: label_of[p.name]):
        n_before = len(files)
        n_skipped = len(not_images) + len(corrupt)
        for path in _visible_children(folder):
            if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                not_images.append(path)
            elif not _has_image_signature(path):
                corrupt.append(path)
            else:
                files.append(str(path))
                labels.append(label_of[folder.name])
        if split == "train" and len(files) == n_before:
            skipped = len(not_images) + len(corrupt) - n_skipped
            raise DataError(
                f"class folder {folder} has no usable image ({skipped} non-image or corrupt entries skipped); "
                "add images or remove the folder"
            )
    if not files:
        raise DataError(f"no usable image in {split_dir} ({LAYOUT})")

    _warn_skipped(not_images, "entries that are not image files (.jpg/.jpeg/.png/.bmp)", split)
    _warn_skipped(corrupt, "empty or corrupt image files (no JPEG/PNG/BMP signature)", split)
    _warn_skipped(loose, "files outside any class folder", split)

    return FolderDataset(
        name=f"{root_path.name}/{split}",
        root=str(root_path),
        files=tuple(files),
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
    )


# torchvision prefixes C++ errors with "<function>, <source file>:<line>, "; users need only the reason.
_TV_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def decode_image_rgb(path: str) -> torch.Tensor:
    """Decode one image file to a uint8 (3, H, W) RGB tensor; raises :class:`DataError` naming the file on failure."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot decode image {path}: {exc.strerror or exc}") from exc
    if not data:
        raise DataError(f"cannot decode image {path}: file is empty")
    try:
        if data.startswith(_BMP_MAGIC):
            # torchvision.io cannot decode BMP; PIL's result matches DALI's exactly (checked in tests).
            with Image.open(io.BytesIO(data)) as img:
                rgb = np.asarray(img.convert("RGB"))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
        # bytearray: torch.frombuffer warns on a read-only buffer.
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = torchvision.io.decode_image(encoded, mode=torchvision.io.ImageReadMode.RGB)
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot decode image {path}: not a valid BMP file") from exc
    except (RuntimeError, OSError, ValueError, Image.DecompressionBombError) as exc:
        lines = str(exc).strip().splitlines()
        reason = _TV_LOCATION.sub("", lines[0]) if lines else type(exc).__name__
        raise DataError(f"cannot decode image {path}: {reason}") from exc
    if image.dtype == torch.uint16:
        # 16-bit PNG: scale with rounding to 0..255, which is what DALI's decoder outputs for uint8.
        image = torch.round(image.to(torch.float32) * (255.0 / 65535.0)).to(torch.uint8)
    return image
