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
  are sub-folders (only one level is read); ONE notice per split gives how many were skipped and one example.
* Files with an image extension are checked by structure before the epoch (a few small reads per file, no
  decoding), and skipped with ONE notice per split (count, one example and its reason) when they are empty,
  do not start with a JPEG, PNG or BMP signature, or fail the structure check of their format. A JPEG named ``.png``
  is kept: decoders go by content, not by name. A file that cannot be opened (permissions, dangling link) raises
  :class:`DataError`. The structure checks mirror what DALI's image parser reads before decoding (a file it cannot
  parse fails the pipeline without naming the file, and can crash the process), plus the file's end:

  - JPEG: the marker segments from the start up to the first scan (SOS) are walked by their lengths: every marker
    must be ``FF xx`` (fill bytes allowed), no segment may run past the end of the file, and a frame header (SOF)
    with non-zero width and height and 1, 3 or 4 components must come before the scan. The file must end with the
    end-of-image marker ``FF D9``, followed by at most padding (NUL or whitespace) in its last 64 bytes: this
    catches truncation. A JPEG with other data appended after its end marker (some cameras' trailers) is skipped.
  - PNG: the chunks are walked by their lengths from IHDR to IEND: IHDR comes first with a valid bit depth and
    colour type and non-zero size, and no chunk runs past the end of the file before IEND (truncation).
  - BMP: the header is one DALI knows (12 bytes, or 40 and more), width and height are non-zero, and for
    uncompressed or bit-field files the pixel rows fit in the file (truncation).

  - Size: an image of more than ``MAX_IMAGE_PIXELS`` (2**26) pixels, read from the same header, is skipped with
    ONE notice per split naming the file and its size, so memory per decoded image stays bounded.

  Not checked: the compressed image data itself (JPEG entropy-coded scans, PNG IDAT contents and CRCs, RLE BMP
  data), since that means decoding every file. Damage there either decodes to wrong pixels (JPEG decoders conceal
  it and say so on stderr only: dali_pipes.damage names the file after the epoch) or fails in the middle of an
  epoch, as a one-line :class:`DataError` on both backends that names the file (with DALI: whenever DALI's own
  report names it, as its decoder and file reader do; otherwise it names the root and how to find the file).
* Files whose name is not valid UTF-8 (a byte name such as ``b"bad\\xff.jpg"``) are skipped with ONE
  ``UserWarning`` per split giving the name's bytes with ``repr`` and asking to rename them: DALI's file reader takes
  text paths only, and the torchvision backend skips them too so that both backends see the same dataset. A root
  or class folder whose name is not valid UTF-8 raises :class:`DataError` asking to rename it.
* Files lying directly in the split folder (outside any class folder) are skipped with ONE notice per split.
* A train class folder with no usable image raises :class:`DataError` ("add images or remove the folder"). In val,
  a class folder may be empty or missing, but a val folder whose name is not a train class raises
  :class:`DataError`, and a val split with no usable image at all raises :class:`DataError`.
* ``files`` are absolute path strings, sorted by name within each class, classes in label order, so the listing is
  deterministic; ``labels`` is an int64 array.
* A notice about skipped entries goes through ``notices.report_skipped``: a command prints and records it, a caller
  without a handler gets a :class:`DataWarning`.

:func:`decode_image_rgb` returns uint8 CHW RGB for any file the listing keeps (grey, CMYK, RGBA, palette, 16-bit),
matching DALI's CPU decoder, with EXIF orientation applied as DALI's decoders do by default (a photo taken on its
side comes out upright, as a viewer shows it; torchvision's ``decode_image`` and PIL ignore EXIF unless asked), and
turns decode failures into :class:`DataError`; a PNG is first checked for what makes libpng stop with an error, on
which torchvision's PNG decoder would crash the process. :func:`dali_file_error` does the same for DALI's
multi-line report of a file it cannot read or decode.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.io
from PIL import Image, UnidentifiedImageError

from dali_pipes.errors import ConfigError, DataError
from dali_pipes.notices import Skipped, report_skipped
from dali_pipes.sources import FolderDataset

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
SPLITS: tuple[str, ...] = ("train", "val")
LAYOUT = "expected <root>/train/<class>/*.jpg|jpeg|png|bmp and <root>/val/<class>/..."

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BMP_MAGIC = b"BM"


_TAIL = 64  # bytes read from the end of a JPEG: its end marker plus a little padding
_PADDING = b"\0\t\n\r "
_JPEG_EOI = b"\xff\xd9"
# SOF0-SOF15 without DHT (C4), JPG (C8) and DAC (CC): the markers that carry the frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA
# PNG colour type -> allowed bit depths (PNG specification, table 11.1)
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_PNG_MAX_CHUNK = 2**31 - 1
# Largest image (width x height) a listing keeps: decoding one takes 3 bytes per pixel (6 for 16-bit PNG) on the
# host or the GPU, per image of a DALI batch and per worker, so a 20000x20000 scan would need 1.2 GB for one image.
# 2**26 pixels (e.g. 8192x8192, 192 MiB decoded) is above any camera's output and bounds memory per decoded image.
MAX_IMAGE_PIXELS = 1 << 26


class _TooLarge(str):
    """A problem string for an image above MAX_IMAGE_PIXELS (warned about separately from damaged files)."""


def _size_problem(width: int, height: int) -> str | None:
    if width * height > MAX_IMAGE_PIXELS:
        return _TooLarge(f"{width}x{height} pixels, above the limit of {MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS)")
    return None


class _Bytes:
    """Random access to a file through one read of its start: header walks rarely leave the first 4 KiB."""

    def __init__(self, fh, size: int) -> None:
        self.fh, self.size = fh, size
        self.head = fh.read(4096)

    def at(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (fewer at the end of the file)."""
        if offset + n <= len(self.head):
            return self.head[offset:offset + n]
        self.fh.seek(offset)
        return self.fh.read(n)


def _jpeg_problem(data: _Bytes) -> str | None:
    """Why DALI's JPEG parser would fail on the file, or why it is truncated; None when it looks whole."""
    pos, has_frame = 2, False
    while True:
        seg = data.at(pos, 4)  # marker (2 bytes) and segment length (2 bytes, counting itself)
        if len(seg) < 2:
            return "truncated: ends before the image data"
        if seg[0] != 0xFF or seg[1] == 0x00:
            return f"corrupt: no JPEG marker at byte {pos}"
        if seg[1] == 0xFF:  # a fill byte: the marker starts one byte later
            pos += 1
            continue
        if seg[1] == _JPEG_SOS:
            break
        length = int.from_bytes(seg[2:], "big") if len(seg) == 4 else 0
        if length < 2 or pos + 2 + length > data.size:
            return f"truncated or corrupt: the segment at byte {pos} runs past the end of the file"
        if seg[1] in _JPEG_SOF:
            frame = data.at(pos + 4, 6)  # precision, height, width, components
            if length < 8 or len(frame) < 6:
                return f"corrupt: the frame header at byte {pos} is too short"
            height, width, components = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
            if components not in (1, 3, 4):
                return f"corrupt: {components} colour components (1, 3 or 4 expected)"
            if not height or not width:
                return f"corrupt: frame size {width}x{height}"
            if too_large := _size_problem(width, height):
                return too_large
            has_frame = True
        pos += 2 + length
    if not has_frame:
        return "corrupt: no frame header (SOF) before the image data"
    tail = data.at(max(0, data.size - _TAIL), _TAIL).rstrip(_PADDING)
    if not tail.endswith(_JPEG_EOI):
        return "truncated or corrupt: does not end with the JPEG end-of-image marker FF D9"
    return None


def _png_problem(data: _Bytes) -> str | None:
    """Why DALI's PNG parser would fail on the file (it walks every chunk to IEND); None when it looks whole."""
    header = data.at(8, 8 + 13)
    if len(header) < 21 or header[:8] != b"\0\0\0\x0dIHDR":
        return "corrupt: the first chunk is not a 13-byte IHDR"
    width, height = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    depth, colour = header[16], header[17]
    if depth not in _PNG_DEPTHS.get(colour, ()):
        return f"corrupt: bit depth {depth} with colour type {colour}"
    if not width or not height:
        return f"corrupt: image size {width}x{height}"
    if too_large := _size_problem(width, height):
        return too_large
    pos = 8 + 25
    while True:
        chunk = data.at(pos, 8)
        if len(chunk) < 8:
            return "truncated: ends before the IEND chunk"
        length = int.from_bytes(chunk[:4], "big")
        if length > _PNG_MAX_CHUNK or pos + 12 + length > data.size:
            return f"truncated or corrupt: the chunk at byte {pos} runs past the end of the file"
        if chunk[4:] == b"IEND":
            return None
        pos += 12 + length


def _bmp_problem(data: _Bytes) -> str | None:
    """Why DALI's BMP parser would fail on the file, or why its pixel rows are cut short; None when it looks whole."""
    header = data.at(0, 54)
    if data.size < 26 or len(header) < 26:
        return "truncated: shorter than a BMP header"
    offset, header_size = int.from_bytes(header[10:14], "little"), int.from_bytes(header[14:18], "little")
    if header_size == 12:  # OS/2 core header: unsigned 16-bit sizes, always uncompressed
        width, height = int.from_bytes(header[18:20], "little"), int.from_bytes(header[20:22], "little")
        bits, compression = int.from_bytes(header[24:26], "little"), 0
    elif header_size >= 40 and data.size >= 54:
        width = abs(int.from_bytes(header[18:22], "little", signed=True))
        height = abs(int.from_bytes(header[22:26], "little", signed=True))  # negative: rows stored top-down
        bits, compression = int.from_bytes(header[28:30], "little"), int.from_bytes(header[30:34], "little")
    else:
        return f"corrupt: BMP header of {header_size} bytes (12, or 40 and more, expected)"
    if not width or not height:
        return f"corrupt: image size {width}x{height}"
    if too_large := _size_problem(width, height):
        return too_large
    if compression in (0, 3):  # BI_RGB, BI_BITFIELDS: rows of whole 32-bit words, so the size is known
        if offset + (width * bits + 31) // 32 * 4 * height > data.size:
            return "truncated: the pixel rows run past the end of the file"
    return None


_CHECKS = ((_JPEG_MAGIC, _jpeg_problem), (_PNG_MAGIC, _png_problem), (_BMP_MAGIC, _bmp_problem))


def _image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable JPEG, PNG or BMP file (see the module docstring), or None."""
    try:
        with path.open("rb") as fh:
            data = _Bytes(fh, os.fstat(fh.fileno()).st_size)
            if not data.head:
                return "empty file"
            for magic, check in _CHECKS:
                if data.head.startswith(magic):
                    return check(data)
    except OSError as exc:
        raise DataError(f"cannot read {_shown(path)}: {exc.strerror or exc}") from exc
    return "no JPEG, PNG or BMP signature"


def _utf8(path: Path | str) -> bool:
    """False for names that came from the file system as undecodable bytes (surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path | str) -> str:
    """``path`` for a message: as is, or the ``repr`` of its bytes when it is not valid UTF-8 (printable anywhere)."""
    return str(path) if _utf8(path) else repr(os.fsencode(path))


def _visible_children(folder: Path) -> list[Path]:
    """Entries of ``folder`` not starting with ".", sorted by name."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _warn_skipped(paths: list[Path], what: str, split: str, detail: str = "") -> None:
    """Report the single per-split notice for one kind of skipped entry (notices.report_skipped: printed and
    recorded by a command, a DataWarning otherwise); ``detail`` is about the example."""
    if paths:
        report_skipped(Skipped(split, what, tuple(_shown(p) for p in paths), detail), stacklevel=3)


def list_image_folder(root: str | Path, split: str) -> FolderDataset:
    """List ``<root>/<split>/<class>/*`` images with labels from the sorted class folders of ``<root>/train``."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise DataError(f"image folder root not found: {_shown(root_path)} ({LAYOUT})")
    if not _utf8(root_path):
        raise DataError(f"image folder root {_shown(root_path)} is not valid UTF-8 (DALI's file reader needs UTF-8 "
                        "paths); rename it or pass a UTF-8 path to it, e.g. a symbolic link")
    train_dir = root_path / "train"
    split_dir = root_path / split
    for needed in dict.fromkeys((train_dir, split_dir)):
        if not needed.is_dir():
            raise DataError(f"missing folder {needed} ({LAYOUT})")

    train_classes = [p for p in _visible_children(train_dir) if p.is_dir()]
    if not train_classes:
        raise DataError(f"no class folders in {train_dir} ({LAYOUT})")
    entries = _visible_children(split_dir)
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if not p.is_dir()]
    for folder in (*train_classes, *class_dirs):
        if not _utf8(folder.name):
            raise DataError(f"class folder {_shown(folder)} has a name that is not valid UTF-8 (class names are "
                            "text, and DALI's file reader needs UTF-8 paths); rename it")
    classes = tuple(p.name for p in train_classes)
    label_of = {name: i for i, name in enumerate(classes)}
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
    not_utf8: list[Path] = []
    corrupt: list[Path] = []
    problems: list[str] = []  # why each of `corrupt` was skipped
    too_large: list[Path] = []
    sizes: list[str] = []  # the size of each of `too_large`
    # Label order, not directory order, so train and val list classes identically.
    for folder in sorted(class_dirs, key=lambda p: label_of[p.name]):
        n_before = len(files)
        skipped_before = (len(not_images), len(not_utf8), len(corrupt), len(too_large))
        for path in _visible_children(folder):
            if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                not_images.append(path)
            elif not _utf8(path.name):
                not_utf8.append(path)
            elif problem := _image_problem(path):
                if isinstance(problem, _TooLarge):
                    too_large.append(path)
                    sizes.append(problem)
                else:
                    corrupt.append(path)
                    problems.append(problem)
            else:
                files.append(str(path))
                labels.append(label_of[folder.name])
        if split == "train" and len(files) == n_before:
            counts = (len(now) - before
                      for now, before in zip((not_images, not_utf8, corrupt, too_large), skipped_before))
            kinds = ("non-image entries", "names not valid UTF-8", "empty, truncated or corrupt images",
                     "images too large")
            detail = ", ".join(f"{n} {kind}" for n, kind in zip(counts, kinds) if n)
            if len(corrupt) > skipped_before[2]:
                detail += f", e.g. {_shown(corrupt[-1])}: {problems[-1]}"
            raise DataError(
                f"class folder {_shown(folder)} has no usable image ({f'skipped {detail}' if detail else 'empty'}); "
                "add images or remove the folder"
            )
    if not files:
        raise DataError(f"no usable image in {split_dir} ({LAYOUT})")

    _warn_skipped(not_images, "entries that are not image files (.jpg/.jpeg/.png/.bmp)", split)
    _warn_skipped(corrupt, "empty, truncated or corrupt image files", split, f" ({problems[0]})" if problems else "")
    _warn_skipped(too_large, f"image files larger than {MAX_IMAGE_PIXELS} pixels (memory per decoded image is "
                  "bounded; downscale them)", split, f" ({sizes[0]})" if sizes else "")
    _warn_skipped(not_utf8, "image files whose names are not valid UTF-8 (DALI's file reader cannot open them; "
                  "rename them to UTF-8)", split)
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


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
# Adam7 interlacing: (first column, first row, column step, row step) of each of the 7 passes
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_damage(data: bytes) -> str | None:
    """Why libpng would stop with an error on the PNG ``data``, or None.

    torchvision's PNG decoder crashes the process (SIGSEGV) when libpng reports an error, so the reference checks
    first what libpng treats as errors rather than warnings: a bad IHDR, a critical chunk (upper-case first letter)
    failing its CRC, a chunk cut short, no IDAT or (palette images) no PLTE, a zlib stream that is corrupt, does
    not end or holds fewer rows than the image has, and a row filter type above 4. Inflating the image data once
    more about doubles the time of a PNG decode here; decoding with PIL, which raises instead, takes longer still.
    """
    view = memoryview(data)
    if len(data) < 33 or bytes(view[8:16]) != b"\0\0\0\x0dIHDR":
        return "the first chunk is not a 13-byte IHDR"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", view[16:29])
    if (depth not in _PNG_DEPTHS.get(colour, ()) or not 0 < width <= _PNG_MAX_CHUNK
            or not 0 < height <= _PNG_MAX_CHUNK or compression or filtering or interlace > 1):
        return "its IHDR chunk is invalid"
    pos, idat, has_palette = 8, [], False
    while True:
        if pos + 12 > len(data):
            return "the file is truncated (it ends before the IEND chunk)"
        length, kind = int.from_bytes(view[pos:pos + 4], "big"), bytes(view[pos + 4:pos + 8])
        end = pos + 12 + length
        if length > _PNG_MAX_CHUNK or end > len(data):
            return f"the chunk at byte {pos} runs past the end of the file (truncated)"
        if not kind[0] & 0x20 and zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            return f"the {kind.decode('latin-1')!r} chunk at byte {pos} fails its CRC check"
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            idat.append(view[pos + 8:end - 4])
        has_palette |= kind == b"PLTE"
        pos = end
    if not idat or (colour == 3 and not has_palette):
        return "it has no image data (IDAT)" if not idat else "it has no palette (PLTE)"
    bits = _PNG_CHANNELS[colour] * depth
    sizes = [(width, height)] if not interlace else [
        (-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7]
    rows = [(h, 1 + (w * bits + 7) // 8) for w, h in sizes if w and h]  # (rows, bytes per row incl. filter type)
    expected = sum(h * row for h, row in rows)
    inflater, raw = zlib.decompressobj(), bytearray()
    try:
        for part in idat:
            while part and not inflater.eof:
                out = inflater.decompress(part, 1 << 20)  # bounded steps: a zlib bomb costs time, not memory
                raw += out[:max(0, expected - len(raw))]
                part = inflater.unconsumed_tail
    except zlib.error as exc:
        return f"its compressed image data is corrupt ({exc})"
    if len(raw) < expected or not inflater.eof:
        return "its compressed image data is truncated"
    start = 0
    for h, row in rows:
        if max(raw[start:start + h * row:row]) > 4:
            return "its image data is corrupt (unknown row filter)"
        start += h * row
    return None


def decode_image_rgb(path: str) -> torch.Tensor:
    """Decode one image file to a uint8 (3, H, W) RGB tensor; raises :class:`DataError` naming the file on failure."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot decode image {path}: {exc.strerror or exc}") from exc
    return decode_bytes_rgb(data, path)


def decode_bytes_rgb(data: bytes, path: str) -> torch.Tensor:
    """:func:`decode_image_rgb` of an encoded image already read (`path` names it in errors: a file or a shard's
    sample)."""
    if not data:
        raise DataError(f"cannot decode image {path}: file is empty")
    if data.startswith(_PNG_MAGIC) and (damage := _png_damage(data)):
        raise DataError(f"cannot decode image {path}: corrupt PNG: {damage}")
    try:
        if data.startswith(_BMP_MAGIC):
            # torchvision.io cannot decode BMP; PIL's result matches DALI's exactly (checked in tests).
            with Image.open(io.BytesIO(data)) as img:
                rgb = np.asarray(img.convert("RGB"))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
        # bytearray: torch.frombuffer warns on a read-only buffer.
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = torchvision.io.decode_image(encoded, mode=torchvision.io.ImageReadMode.RGB,
                                            apply_exif_orientation=True)
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


# "Error in CPU operator `nvidia.dali.fn.decoders.image`," (MIXED/GPU for the GPU decoder), then after "encountered:"
# the operator's own message, e.g. "Failed to decode sample #9 : /data/train/cat/x.png".
_DALI_OPERATOR = re.compile(r"Error in \w+ operator `nvidia\.dali\.fn\.([\w.]+)`")
_DALI_REASON = re.compile(r"encountered:\s*\n\s*(\S.*)")
# Every decoder that reads the files: the plain one (val, centre and pad crops) and the random-resized-crop one
# fused with decoding (the training split of a folder), which fail on the same damage with the same report.
_FILE_OPERATORS = {"decoders.image": "image decoder", "decoders.image_random_crop": "image decoder",
                   "readers.file": "file reader"}


def dali_file_error(exc: BaseException, files: Sequence[str], root: str) -> DataError | None:
    """The one-line :class:`DataError` for a DALI pipeline failure caused by one of ``files``; None for other errors.

    DALI reports a file its decoder or reader fails on as a multi-line pipeline error, usually naming the file; the
    listing's structure checks keep out what DALI's parser cannot read, so what remains is damage inside the
    compressed data, or a file that changed after listing.
    """
    text = str(exc)
    operator = _DALI_OPERATOR.search(text)
    if operator is None or operator.group(1) not in _FILE_OPERATORS:
        return None
    what = _FILE_OPERATORS[operator.group(1)]
    named = [f for f in set(files) if f in text]
    path = max(named, key=len) if named else None  # the longest: "/a/1.jpg" is also in "/a/1.jpg.jpg"
    reason = _DALI_REASON.search(text)
    detail = reason.group(1).strip() if reason else "no reason given"
    if path is not None:
        detail = detail.replace(path, "").strip(" :")
    detail = " ".join(detail.split())[:200]
    if path is None:
        return DataError(f"DALI's {what} failed on a file under {root} ({detail}); run once with backend "
                         "'torchvision' to find the file, then re-encode or remove it")
    if operator.group(1) == "readers.file":
        return DataError(f"cannot read image {path}: DALI's file reader failed ({detail}); the file changed or "
                         "vanished after listing — restore it or start again to list the folder anew")
    return DataError(f"cannot decode image {path}: DALI's image decoder failed ({detail}); the file is corrupt — "
                     "re-encode or remove it")
