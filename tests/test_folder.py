"""Tests for dali_pipes.folder: image-folder listing rules and decoding parity between DALI (CPU) and torchvision."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder

from dali_pipes import create_loader
from dali_pipes.errors import ConfigError, DataError
from dali_pipes.folder import decode_image_rgb, list_image_folder

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec; the warning is about the library, not
# about these tests, so it must not fail them if the project turns warnings into errors.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning"
)

# Non-square so a swapped H/W shows up.
H, W = 24, 40


def _gradient(h: int = H, w: int = W) -> np.ndarray:
    """A smooth RGB image: JPEG round-trips it closely, so colour-conversion bugs stand out from compression noise."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 2], axis=-1).astype(np.uint8)


def _save(path: Path, mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a gradient image converted to ``mode`` (PIL modes: RGB, L, CMYK, RGBA, P) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_gradient()).convert(mode)
    is_jpeg = (fmt or path.suffix.lstrip(".")).lower() in {"jpg", "jpeg"}
    kwargs = {"quality": 90} if is_jpeg else {}
    image.save(path, format=fmt, **kwargs)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small dataset with one of every kind of entry the listing rules talk about."""
    r = tmp_path / "ds"
    cat, dog, zebra = r / "train" / "cat", r / "train" / "dog", r / "train" / "zebra"
    # Created out of name order, to check the listing sorts rather than trusting the directory order.
    _save(cat / "c.JPG", "L")  # upper-case extension, greyscale
    _save(cat / "a.jpg")
    _save(cat / "b.png")
    _write(cat / "notes.txt", b"not an image")
    _write(cat / "x.jpg", b"this is text, not a JPEG")
    _write(cat / ".hidden.jpg", b"hidden and also not a JPEG")
    _write(cat / ".cache" / "junk.jpg", b"inside a hidden folder")
    _save(dog / "d.jpeg", "CMYK")
    _save(dog / "e.png", "RGBA")
    _save(dog / "f.bmp")
    _save(dog / "p.png", "P")
    _save(zebra / "g.jpg")
    _write(r / "train" / ".DS_Store", b"\0\0")
    (r / "train" / ".git").mkdir()  # hidden folder: must not become a class
    _save(r / "val" / "dog" / "v1.jpg")
    _save(r / "val" / "cat" / "v2.png")
    (r / "val" / "zebra").mkdir()  # empty val class: allowed
    return r


def test_train_listing_labels_order_and_warnings(root: Path) -> None:
    with pytest.warns(UserWarning) as record:
        ds = list_image_folder(root, "train")
    assert ds.classes == ("cat", "dog", "zebra")
    names = [Path(f).name for f in ds.files]
    assert names == ["a.jpg", "b.png", "c.JPG", "d.jpeg", "e.png", "f.bmp", "p.png", "g.jpg"]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in ds.files)
    assert all(isinstance(f, str) for f in ds.files)
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert all(Path(f).parent.name == ds.classes[lab] for f, lab in zip(ds.files, ds.labels))
    assert len(ds) == 8 and ds.root == str(root.absolute())

    # Exactly one warning per kind of skipped entry; hidden entries produce none.
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    (not_image,) = [m for m in messages if "not image files" in m]
    (corrupt,) = [m for m in messages if "corrupt" in m]
    assert "skipped 1 " in not_image and "notes.txt" in not_image
    assert "skipped 1 " in corrupt and "x.jpg" in corrupt
    assert all(".hidden" not in m and ".cache" not in m for m in messages)


def test_val_labels_agree_with_train_and_missing_class_is_fine(root: Path) -> None:
    with pytest.warns(UserWarning):
        train = list_image_folder(root, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean val split must not warn
        val = list_image_folder(root, "val")
    assert val.classes == train.classes
    # val/zebra is empty and val lists cat before dog although dog's folder was created first.
    assert [Path(f).name for f in val.files] == ["v2.png", "v1.jpg"]
    assert val.labels.tolist() == [train.classes.index("cat"), train.classes.index("dog")]

    # A class missing entirely from val keeps the other labels unchanged.
    (root / "val" / "zebra").rmdir()
    assert list_image_folder(root, "val").labels.tolist() == val.labels.tolist()


def test_listing_is_deterministic(root: Path) -> None:
    with pytest.warns(UserWarning):
        a = list_image_folder(str(root), "train")
    with pytest.warns(UserWarning):
        b = list_image_folder(root, "train")
    assert a.files == b.files and a.labels.tolist() == b.labels.tolist()
    for label in range(len(a.classes)):
        in_class = [f for f, lab in zip(a.files, a.labels) if lab == label]
        assert in_class == sorted(in_class)


def test_missing_root_split_or_classes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nope.*expected <root>/train/<class>") as info:
        list_image_folder(tmp_path / "nope", "train")
    assert "\n" not in str(info.value)

    _save(tmp_path / "r" / "train" / "a" / "1.jpg")
    with pytest.raises(DataError, match=r"missing folder .*val.*expected"):
        list_image_folder(tmp_path / "r", "val")

    _save(tmp_path / "noval" / "val" / "a" / "1.jpg")
    with pytest.raises(DataError, match=r"missing folder .*train.*expected"):
        list_image_folder(tmp_path / "noval", "val")

    (tmp_path / "empty" / "train" / ".hidden").mkdir(parents=True)
    _write(tmp_path / "empty" / "train" / "loose.jpg", b"")
    with pytest.raises(DataError, match=r"no class folders in .*train.*expected"):
        list_image_folder(tmp_path / "empty", "train")

    (tmp_path / "r" / "val").mkdir()
    with pytest.raises(DataError, match=r"no class folders in .*val"):
        list_image_folder(tmp_path / "r", "val")


def test_bad_split_is_config_error(root: Path) -> None:
    with pytest.raises(ConfigError, match="split"):
        list_image_folder(root, "test")


def test_train_class_without_usable_image(root: Path) -> None:
    bad = root / "train" / "empty_class"
    _write(bad / "broken.png", b"")
    _write(bad / "readme.md", b"# hi")
    with pytest.raises(DataError, match=r"empty_class.*add images or remove the folder"):
        list_image_folder(root, "train")

    # Val does not need every class, but must not invent one.
    (bad / "broken.png").unlink()
    (bad / "readme.md").unlink()
    bad.rmdir()
    _save(root / "val" / "unicorn" / "u.jpg")
    with pytest.raises(DataError, match=r"unicorn.*not a class of"):
        list_image_folder(root, "val")


def test_val_with_no_usable_image(root: Path) -> None:
    for f in (root / "val" / "dog" / "v1.jpg", root / "val" / "cat" / "v2.png"):
        f.unlink()
    with pytest.raises(DataError, match=r"no usable image in .*val"):
        list_image_folder(root, "val")


def test_empty_file_content_sniffing_and_loose_files(root: Path) -> None:
    _write(root / "train" / "zebra" / "empty.jpg", b"")
    _write(root / "train" / "zebra" / "short.bmp", b"B")
    _write(root / "train" / "zebra" / "sub" / "deep.jpg", b"")  # only one level is read
    # A PNG named .jpg is kept: DALI and torchvision decode by content.
    _save(root / "train" / "zebra" / "really_png.jpg", fmt="PNG")
    _save(root / "train" / "stray.jpg")
    with pytest.warns(UserWarning) as record:
        ds = list_image_folder(root, "train")
    messages = [str(w.message) for w in record]
    assert len(messages) == 3, messages
    (corrupt,) = [m for m in messages if "corrupt" in m]
    assert "skipped 3 " in corrupt  # x.jpg, empty.jpg, short.bmp
    (not_image,) = [m for m in messages if "not image files" in m]
    assert "skipped 2 " in not_image  # notes.txt, the sub-folder
    (loose,) = [m for m in messages if "outside any class folder" in m]
    assert "skipped 1 " in loose and "stray.jpg" in loose
    assert "really_png.jpg" in {Path(f).name for f in ds.files}


def _dali_decode(files: list[str]) -> list[np.ndarray]:
    """Decode ``files`` with DALI's CPU decoder to RGB HWC, in the order given."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def
    def pipe_def(files: list[str]):
        encoded, labels = fn.readers.file(files=files, labels=list(range(len(files))))
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB), labels

    pipe = pipe_def(files=files, batch_size=len(files), num_threads=1, device_id=None)
    pipe.build()
    images, labels = pipe.run()
    out: list[np.ndarray | None] = [None] * len(files)
    for i in range(len(files)):
        # The label is the file's index, so the mapping holds whatever order the reader used.
        out[int(np.asarray(labels.at(i)).reshape(-1)[0])] = np.asarray(images.at(i))
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


def test_dali_and_torchvision_decode_agree(tmp_path: Path) -> None:
    kinds = {
        "rgb.jpg": "RGB",
        "grey.jpg": "L",
        "cmyk.jpg": "CMYK",
        "rgb.png": "RGB",
        "rgba.png": "RGBA",
        "palette.png": "P",
        "rgb.bmp": "RGB",
        "grey.bmp": "L",
    }
    files = [str(_save(tmp_path / name, mode)) for name, mode in kinds.items()]
    grey16 = tmp_path / "grey16.png"
    Image.fromarray((_gradient()[..., 0].astype(np.uint16) * 257 + 3)).save(grey16)  # PIL mode I;16
    files.append(str(grey16))

    dali = dict(zip(files, _dali_decode(files)))
    for f in files:
        ref = decode_image_rgb(f)
        assert ref.dtype == torch.uint8 and tuple(ref.shape) == (3, H, W), f
        got = dali[f]
        assert got.dtype == np.uint8 and got.shape == (H, W, 3), f
        diff = np.abs(got.astype(np.int16) - ref.permute(1, 2, 0).numpy().astype(np.int16))
        name = Path(f).name
        if name.endswith(".jpg"):
            # Observed: DALI's CPU decoder and torchvision (both libjpeg-turbo) agree exactly (mean 0, max 0) for
            # RGB, grey and CMYK JPEGs here; the bound leaves room for a different IDCT/upsampling build. CMYK
            # (Adobe, inverted, as PIL writes it) is also 0 levels apart, so 1 level mean is already margin.
            assert diff.mean() < (3.0 if name == "rgb.jpg" else 1.0), (name, diff.mean())
        else:
            # Lossless: PNG (RGBA drops alpha, palette expands, 16-bit rounds x*255/65535) and BMP must match exactly.
            assert diff.max() == 0, (name, diff.max())

    grey = dali[str(tmp_path / "grey.jpg")]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    # CMYK must come back in the source colours, not inverted or channel-swapped (observed mean 0.0-0.4 levels).
    cmyk = dali[str(tmp_path / "cmyk.jpg")]
    assert np.abs(cmyk.astype(np.int16) - _gradient().astype(np.int16)).mean() < 3.0


def test_decode_failures_are_data_errors(tmp_path: Path) -> None:
    text = _write(tmp_path / "x.jpg", b"this is text")
    whole = _save(tmp_path / "ok.jpg").read_bytes()
    truncated = _write(tmp_path / "trunc.jpg", whole[: len(whole) // 2])
    bad_bmp = _write(tmp_path / "bad.bmp", b"BM" + b"\0" * 10)
    for path in (text, truncated, bad_bmp, _write(tmp_path / "empty.png", b""), tmp_path / "missing.png"):
        with pytest.raises(DataError, match=rf"cannot decode image .*{path.name}") as info:
            decode_image_rgb(str(path))
        message = str(info.value)
        assert "\n" not in message and ".cpp" not in message, message


def test_a_folder_pipeline_is_released_before_the_next_epoch_builds_its_own(tmp_path) -> None:
    import weakref

    write_image_folder(tmp_path, classes=("a", "b"), per_class=3, shape=(20, 24), ext="png")
    loader = create_loader("folder", tmp_path, "train", batch_size=4, backend="dali", device="cpu", augment="weak",
                           num_threads=1)
    assert sum(len(x) for x, _ in loader) == 6
    backend = loader._backend
    previous = weakref.ref(backend._pipe)  # the file list is the epoch plan: one pipeline per epoch
    define, alive_while_defining = backend.define, []

    def watched_define(*args, **kwargs):
        alive_while_defining.append(previous() is not None)
        return define(*args, **kwargs)

    backend.define = watched_define
    loader.set_epoch(1)
    batches = iter(loader)
    next(batches)  # the new epoch's pipeline is built and running
    assert alive_while_defining == [False]  # decoder buffers of two pipelines never coexist
    assert sum(len(x) for x, _ in batches) == 2
