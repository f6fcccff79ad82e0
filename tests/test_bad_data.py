"""Damaged image folders: files the listing skips (one warning each kind), files only decoding can find out (one-line
DataError naming the file mid-epoch), on both backends, and never a crash of the process."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder

from dali_pipes import create_loader
from dali_pipes.errors import DataError
from dali_pipes.folder import dali_file_error, list_image_folder

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning"
)

BACKENDS = ("dali", "torchvision")
PER_CLASS = 3  # good images per class and split that write_image_folder makes


def _folder(root: Path, ext: str = "jpg") -> Path:
    write_image_folder(root, classes=("a", "b"), per_class=PER_CLASS, shape=(20, 24), ext=ext)
    return root


def _encoded(fmt: str, shape: tuple[int, int] = (20, 24), seed: int = 1) -> bytes:
    """A valid image file's bytes: random RGB pixels, so compression leaves long image data to cut or corrupt."""
    import io

    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _jpeg_signature_then_random() -> bytes:
    tail = np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    assert not tail.endswith(b"\xff\xd9")
    return b"\xff\xd8\xff" + tail


def _jpeg_with_zero_size() -> bytes:
    data = bytearray(_encoded("JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = bytes(4)
    return bytes(data)


def _png_with_corrupt_idat(fix_crc: bool) -> bytes:
    """Bytes inside the compressed image data changed: the structure (chunks, lengths, IEND) stays intact."""
    data = bytearray(_encoded("PNG"))
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4 + 10:at + 4 + 40] = bytes(30)  # zeros where the deflate stream had bits
    if fix_crc:  # a CRC that matches: only inflating the data shows the damage
        data[at + 4 + length:at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + length])))
    return bytes(data)


def _epoch(root: Path, backend: str, split: str = "train", workers: int = 0) -> int:
    """Samples one epoch yields."""
    loader = create_loader("folder", root, split, batch_size=4, backend=backend, device="cpu", augment="none",
                           num_threads=1, num_workers=workers)
    return sum(len(images) for images, _ in loader)


# ---------------------------------------------------------------------------------------------------------------
# Skipped at listing


def _truncated(fmt: str) -> bytes:
    data = _encoded(fmt)
    return data[:len(data) // 2]


SKIPPED = {
    "truncated.jpg": (lambda: _truncated("JPEG"), "end-of-image marker"),
    "signature_then_random.jpg": (_jpeg_signature_then_random, "corrupt"),
    "junk_after_end.jpg": (lambda: _encoded("JPEG") + b"trailing data", "end-of-image marker"),
    "zero_size.jpg": (lambda: _jpeg_with_zero_size(), "frame size 0x0"),
    "no_frame.jpg": (lambda: b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02\xff\xd9", "no frame header"),
    "truncated.png": (lambda: _truncated("PNG"), "truncated"),
    "bad_depth.png": (lambda: _encoded("PNG")[:24] + b"\x03" + _encoded("PNG")[25:], "bit depth 3"),
    "truncated.bmp": (lambda: _truncated("BMP"), "pixel rows run past the end"),
}


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_damaged_file_is_skipped_at_listing_with_one_warning(tmp_path: Path, name: str) -> None:
    root = _folder(tmp_path / "ds")
    make, reason = SKIPPED[name]
    bad = root / "train" / "b" / name
    bad.write_bytes(make())
    with pytest.warns(UserWarning) as record:
        ds = list_image_folder(root, "train")
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert f"skipped 1 empty, truncated or corrupt image files, e.g. {bad} (" in messages[0]
    assert reason in messages[0]
    assert str(bad) not in ds.files and len(ds) == 2 * PER_CLASS


@pytest.mark.parametrize("name", ["padded.jpg", "trailer_after_iend.png", "fill_bytes.jpg"])
def test_tolerated_variants_are_kept(tmp_path: Path, name: str) -> None:
    """Padding after a JPEG's end marker, data after a PNG's IEND and fill bytes before a marker decode fine."""
    root = _folder(tmp_path / "ds")
    data = {
        "padded.jpg": _encoded("JPEG") + b"\0\0\r\n",
        "trailer_after_iend.png": _encoded("PNG") + b"anything after IEND",
        "fill_bytes.jpg": _encoded("JPEG").replace(b"\xff\xdb", b"\xff\xff\xff\xdb", 1),
    }[name]
    (root / "train" / "b" / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ds = list_image_folder(root, "train")
    assert str(root / "train" / "b" / name) in ds.files
    for backend in BACKENDS:
        assert _epoch(root, backend) == 2 * PER_CLASS + 1, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_runs_past_skipped_files(tmp_path: Path, backend: str) -> None:
    """Files DALI's parser fails on (the run dies, or the process with SIGSEGV) are left out at listing."""
    root = _folder(tmp_path / "ds")
    for name, (make, _) in SKIPPED.items():
        (root / "train" / "a" / name).write_bytes(make())
    with pytest.warns(UserWarning, match=f"skipped {len(SKIPPED)} empty, truncated or corrupt"):
        assert _epoch(root, backend) == 2 * PER_CLASS


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_whose_only_image_is_corrupt(tmp_path: Path, backend: str) -> None:
    root = _folder(tmp_path / "ds")
    only = root / "train" / "c" / "only.jpg"
    only.parent.mkdir()
    only.write_bytes(_jpeg_signature_then_random())
    with pytest.raises(DataError) as info:
        create_loader("folder", root, "train", batch_size=4, backend=backend, device="cpu")
    message = str(info.value)
    assert f"class folder {only.parent} has no usable image" in message
    assert f"e.g. {only}: truncated or corrupt" in message and "add images or remove the folder" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# Found only by decoding: a one-line DataError naming the file, mid-epoch


@pytest.mark.parametrize("fix_crc", [False, True], ids=["idat_crc_fails", "idat_crc_matches"])
@pytest.mark.parametrize("backend,workers", [("dali", 0), ("torchvision", 0), ("torchvision", 2)])
def test_corrupt_image_data_is_a_one_line_error_naming_the_file(tmp_path: Path, backend: str, workers: int,
                                                               fix_crc: bool) -> None:
    root = _folder(tmp_path / "ds", ext="png")
    bad = root / "train" / "b" / "bad.png"
    bad.write_bytes(_png_with_corrupt_idat(fix_crc))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the structure is intact: the listing keeps it, silently
        assert str(bad) in list_image_folder(root, "train").files
    with pytest.raises(DataError) as info:
        _epoch(root, backend, workers=workers)
    message = str(info.value)
    assert message.startswith(f"cannot decode image {bad}: ") and "corrupt" in message
    assert "\n" not in message and "Traceback" not in message and "worker" not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_removed_after_listing_is_a_one_line_error_naming_it(tmp_path: Path, backend: str) -> None:
    root = _folder(tmp_path / "ds")
    loader = create_loader("folder", root, "train", batch_size=4, backend=backend, device="cpu", augment="none",
                           num_threads=1, num_workers=0)
    gone = Path(loader.data.files[-1])
    gone.unlink()
    with pytest.raises(DataError) as info:
        sum(len(x) for x, _ in loader)
    message = str(info.value)
    assert str(gone) in message and "\n" not in message


def test_dali_file_error_names_the_file_or_declines() -> None:
    files = ["/d/train/a/1.jpg", "/d/train/a/1.jpg.jpg", "/d/train/b/odd\nname.jpg"]
    report = ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`,\nwhich was used "
              "...\n\nencountered:\n\nFailed to decode sample #3 : {}\nCurrent pipeline object is no longer valid.")
    error = dali_file_error(RuntimeError(report.format(files[1])), files, "/d")
    assert error is not None and str(error).startswith(f"cannot decode image {files[1]}: ")  # the longest match
    assert "\n" not in str(error)
    reader = report.replace("decoders.image", "readers.file").replace("Failed to decode sample #3 :",
                                                                      "File mapping failed:")
    error = dali_file_error(RuntimeError(reader.format(files[2])), files, "/d")
    assert error is not None and str(error).startswith(f"cannot read image {files[2]}: ")
    unnamed = dali_file_error(RuntimeError(report.format("<somewhere>")), files, "/d")
    assert unnamed is not None and "under /d" in str(unnamed) and "torchvision" in str(unnamed)
    # Not a file's fault: left to propagate as it is.
    assert dali_file_error(RuntimeError("DALI returned 3 images for a planned batch of 4"), files, "/d") is None
    other_op = report.replace("decoders.image", "resize")
    assert dali_file_error(RuntimeError(other_op.format(files[0])), files, "/d") is None


# ---------------------------------------------------------------------------------------------------------------
# File names that are not valid UTF-8


def _bytes_path(folder: Path, name: bytes) -> bytes:
    path = os.fsencode(folder) + b"/" + name
    try:
        with open(path, "wb") as fh:
            fh.write(_encoded("JPEG"))
    except OSError as exc:  # e.g. a file system that stores names as UTF-16
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_utf8_file_name_is_skipped_with_one_warning(tmp_path: Path, backend: str) -> None:
    root = _folder(tmp_path / "ds")
    raw = _bytes_path(root / "train" / "a", b"bad\xff.jpg")
    with pytest.warns(UserWarning) as record:
        n = _epoch(root, backend)
    assert n == 2 * PER_CLASS
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    (message,) = [m for m in messages if "UTF-8" in m]
    assert "skipped 1 " in message and "rename" in message and repr(raw) in message
    message.encode("ascii")  # printable on any console: the name is shown escaped


def test_non_utf8_class_folder_is_a_data_error(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds")
    folder = os.fsencode(root / "train") + b"/cls\xfe"
    try:
        os.mkdir(folder)
    except OSError as exc:
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    _bytes_path(Path(os.fsdecode(folder)), b"ok.jpg")
    with pytest.raises(DataError, match="not valid UTF-8.*rename it") as info:
        list_image_folder(root, "train")
    assert repr(folder) in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Splits without a usable image


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_whose_images_are_all_corrupt(tmp_path: Path, backend: str) -> None:
    root = _folder(tmp_path / "ds")
    for path in (root / "val").rglob("*.jpg"):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"no usable image in {root / 'val'} \(expected <root>/train"):
        create_loader("folder", root, "val", batch_size=4, backend=backend, device="cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_split_without_images(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
    with pytest.raises(DataError, match=rf"class folder {root / 'train' / 'a'} has no usable image \(empty\)"):
        create_loader("folder", root, "train", batch_size=4, backend=backend, device="cpu")
    (root / "train" / "a").rmdir()
    (root / "train" / "b").rmdir()
    with pytest.raises(DataError, match=r"no class folders in .*train"):
        create_loader("folder", root, "train", batch_size=4, backend=backend, device="cpu")
