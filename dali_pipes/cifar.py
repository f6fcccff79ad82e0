"""CIFAR-10 / CIFAR-100 from the official "python version" layout, plus a writer for derived datasets.

Local files are validated by structure, not checksum: a user's copy may be a derived dataset of any size
(see :func:`write_cifar`). Only the official archive, when downloaded or found next to the folder, is checked
against its md5. Every problem surfaces as a one-line :class:`DataError` naming the file and the fix.
"""

from __future__ import annotations

import os
import pickle
import socket
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

# Imported into this namespace (not called as torchvision.datasets.utils.X) so tests can monkeypatch them.
from torchvision.datasets.utils import check_integrity, download_and_extract_archive, extract_archive

from .atomic import atomic_write
from .errors import ConfigError, DataError
from .safe_pickle import safe_load
from .sources import ArrayDataset

__all__ = ["load_cifar", "write_cifar"]

_ROW = 3 * 32 * 32  # one image: R plane, G plane, B plane, each 32x32 row-major
# Per socket operation, not for the whole download: long enough for a slow mirror, short enough that an
# offline machine gets its error in seconds instead of hanging on the OS default.
_DOWNLOAD_TIMEOUT_S = 15.0
_SPLITS = ("train", "val")
# A cluster without internet points this at its own copy of the official archives (a URL prefix ending in "/",
# e.g. http://mirror.local/cifar/); the md5 check is the same.
MIRROR_ENV = "DALI_TRAIN_CIFAR_MIRROR"
Fetch = Callable[..., None]  # torchvision's download_and_extract_archive(url, download_root=, md5=)
Verify = Callable[[str, str], bool]  # torchvision's check_integrity(path, md5)


@dataclass(frozen=True)
class _Layout:
    """Where the official archive puts each file and which keys hold what."""

    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_LAYOUTS = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",  # fine labels: the 100-way task everyone reports
        names_key="fine_label_names",
        num_classes=100,
    ),
}


def _layout(name: str) -> _Layout:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(_LAYOUTS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Getting the files onto disk


def _url(layout: _Layout) -> str:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{layout.archive}" if mirror else layout.url


def _download(layout: _Layout, root: Path, *, had_bad_archive: bool, fetch: Fetch) -> None:
    """Fetch and extract the official archive, or fail fast with a DataError telling how to supply it by hand. A
    failed download leaves no folder it made: a mistyped --data-dir (dali-eval's, say) must not appear on disk."""
    made = [p for p in (root, *root.parents) if not p.exists()]  # deepest first; the download creates them
    url = _url(layout)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        fetch(url, download_root=str(root), md5=layout.md5)
    # URLError/HTTPError/timeouts are OSError; torchvision raises RuntimeError on an md5 mismatch;
    # the rest come from a truncated or damaged archive.
    except (OSError, RuntimeError, tarfile.TarError, EOFError, zlib.error, ValueError) as e:
        for folder in made:
            try:
                folder.rmdir()  # only while empty: a partial archive stays for the message below
            except OSError:
                break
        note = f" (the existing {layout.archive} failed its md5 check)" if had_bad_archive else ""
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"downloading {url} failed{note}: {reason}; put the extracted '{layout.folder}' folder "
            f"(or {layout.archive}) under {root} and run again"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _extract_local_archive(layout: _Layout, archive: Path) -> None:
    """Extract an official archive the user placed in data_dir."""
    try:
        extract_archive(str(archive), str(archive.parent))
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({e}); delete it and download again") from None


def _check_root(layout: _Layout, root: Path) -> None:
    """Refuse a data dir that is a file (or lies under one), saying which folder to pass instead."""
    existing = next(p for p in (root, *root.parents) if p.exists() or p == p.parent)
    if existing.is_dir():
        if (root / layout.folder).exists() and not (root / layout.folder).is_dir():
            raise DataError(f"{root / layout.folder} is a file, not the dataset folder; move it away or pass "
                            "another data dir")
        return
    if existing.name == layout.archive or existing.parent.name == layout.folder:
        # The archive itself or a file of the dataset folder: the folder to pass is the one holding them.
        instead = existing.parent if existing.name == layout.archive else existing.parent.parent
        hint = f"pass {instead}, the folder that holds '{layout.folder}' or {layout.archive}"
    else:
        hint = (f"pass the folder that holds (or should receive) '{layout.folder}', e.g. {existing.parent}, "
                "not a file")
    where = "is a file" if existing == root else f"lies under {existing}, which is a file"
    raise DataError(f"data dir {root} {where}; {hint}")


def _check_writable(layout: _Layout, root: Path, action: str) -> None:
    """Fail in one line, before any network traffic, when ``root`` (or the folder that would hold it) is read-only."""
    target = next(p for p in (root, *root.parents) if p.is_dir())  # download creates the missing folders below it
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".dali-train-write-test-")
    except OSError as e:
        raise DataError(
            f"cannot write to {target} ({e.strerror or e}), so {layout.archive} cannot be {action} there; pass a "
            f"writable data dir, or put the extracted '{layout.folder}' folder under {root} by hand"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _ensure_files(layout: _Layout, root: Path, needed: list[str], download: bool, fetch: Fetch,
                  verify: Verify) -> Path:
    """Make sure ``root/<folder>`` holds ``needed``; download or extract only when the folder is absent."""
    _check_root(layout, root)
    folder = root / layout.folder
    if not folder.is_dir():
        archive = root / layout.archive
        archive_ok = archive.is_file() and verify(str(archive), layout.md5)
        if archive_ok:
            _check_writable(layout, root, "extracted")
            _extract_local_archive(layout, archive)
        elif download:
            _check_writable(layout, root, "downloaded")
            # A bad archive here is usually a half-finished earlier download; torchvision overwrites it.
            _download(layout, root, had_bad_archive=archive.is_file(), fetch=fetch)
        elif archive.is_file():
            raise DataError(
                f"{archive}: md5 does not match the official archive ({layout.md5}); "
                "the file is incomplete or corrupt — delete it and download it again"
            )
        else:
            raise DataError(
                f"{folder} not found and download is off; put the extracted '{layout.folder}' folder "
                f"(or {layout.archive}) under {root}, or enable download"
            )
        if not folder.is_dir():
            raise DataError(
                f"{root / layout.archive} did not contain '{layout.folder}'; "
                "delete it and download the official archive again"
            )
    # A partial folder is never downloaded over: it may be the user's derived dataset, so say what is missing.
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder / missing[0]}: missing"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else "")
            + f"; the folder is incomplete — delete {folder} and download again, or restore the file"
        )
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Reading and validating


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    """Look up ``key`` as bytes (official Python 2 pickles) or str (re-pickled derived datasets)."""
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    found = ", ".join(sorted(repr(k) for k in d)[:8])
    raise DataError(
        f"{path}: missing key '{key}' (found: {found or 'none'}); "
        "the file is not a CIFAR batch — delete the folder and download again"
    )


def _load_dict(path: Path) -> dict[Any, Any]:
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, not a dict; the file is not a CIFAR batch — "
            "delete the folder and download again"
        )
    return obj


def _read_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (data uint8 (n, 3072), labels int64 (n,)), validated."""
    d = _load_dict(path)
    fix = "the file is corrupt — delete the folder and download again"
    data = _get(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {desc}, expected a uint8 array of shape (N, {_ROW}); {fix}")

    raw = _get(d, layout.label_key, path)
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: '{layout.label_key}' is a {type(raw).__name__}, expected a list of ints; {fix}")
    if len(raw) != data.shape[0]:
        raise DataError(
            f"{path}: '{layout.label_key}' has {len(raw)} entries but 'data' has {data.shape[0]} rows; {fix}"
        )
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError):  # ragged nested lists
        raise DataError(f"{path}: '{layout.label_key}' is not a flat list of integers; {fix}") from None
    # An empty list comes back as float64; anything non-empty must be plain integers (bools and
    # out-of-int64 Python ints come back as bool/object dtype and are refused here).
    if arr.size and (arr.ndim != 1 or arr.dtype.kind not in "iu"):
        raise DataError(f"{path}: '{layout.label_key}' holds {arr.dtype} values, expected integers; {fix}")
    labels = arr.astype(np.int64, copy=False) if arr.size else np.zeros(0, np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= layout.num_classes))
    if bad.size:
        raise DataError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside [0, {layout.num_classes}) "
            f"({bad.size} such labels); {fix}"
        )
    return data, labels


def _read_classes(path: Path, layout: _Layout) -> tuple[str, ...]:
    names = _get(_load_dict(path), layout.names_key, path)
    fix = "the file is corrupt — delete the folder and download again"
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        count = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise DataError(f"{path}: '{layout.names_key}' has {count} names, expected {layout.num_classes}; {fix}")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise DataError(f"{path}: '{layout.names_key}' holds a {type(n).__name__}, expected text; {fix}")
        out.append(n)
    return tuple(out)


def load_cifar(name: str, data_dir: str | Path, split: str, *, download: bool = True,
               fetch: Fetch = download_and_extract_archive, verify: Verify = check_integrity) -> ArrayDataset:
    """Load one split ("train" or "val" = the official test set) of "cifar10" or "cifar100".

    Images come back as uint8 (N, 32, 32, 3) C-contiguous, labels as int64 (CIFAR-100: fine labels).
    The folder is downloaded (md5-checked) only when it is entirely absent and ``download`` is true, from the
    official URL or the mirror in ``$DALI_TRAIN_CIFAR_MIRROR``. `fetch` and `verify`: torchvision's downloader and
    md5 check, or stand-ins that take the same arguments.
    """
    layout = _layout(name)
    if split not in _SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {list(_SPLITS)} ('val' is the official test set)")
    root = Path(data_dir).expanduser().absolute()  # messages name real folders, not "."
    files = list(layout.train_files) if split == "train" else [layout.test_file]
    folder = _ensure_files(layout, root, [*files, layout.meta_file], download, fetch, verify)

    classes = _read_classes(folder / layout.meta_file, layout)
    batches = [_read_batch(folder / f, layout) for f in files]
    n = sum(b[0].shape[0] for b in batches)
    if n == 0:
        # Valid files without rows would otherwise run whole "epochs" of nothing and report 0 img/s.
        where = f"{folder / files[0]} holds" if len(files) == 1 else f"{folder}: {', '.join(files)} all hold"
        raise DataError(
            f"{where} 0 images, so the {split} split is empty; write the dataset again with images "
            f"(write_cifar), or delete {folder} to download the official one"
        )
    # Write each batch's planar rows straight into the HWC output: one copy, no intermediate concatenation.
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    start = 0
    for data, lab in batches:
        stop = start + data.shape[0]
        images[start:stop] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels[start:stop] = lab
        start = stop
    return ArrayDataset(name=name, images=images, labels=labels, classes=classes)


# ---------------------------------------------------------------------------------------------------------------
# Writing derived datasets


def _check_split(what: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Validate one (images, labels) pair and convert it to the on-disk form: planar rows and a list of ints."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ConfigError(f"{what} images must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise ConfigError(
            f"{what} labels must be {images.shape[0]} integers (one per image), got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"{what} labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(images.shape[0], _ROW))
    return rows, [int(x) for x in labels]


def _dump(obj: object, path: Path) -> None:
    """Pickle with protocol 2 (what the official files use), atomically: a crash never leaves half a batch."""
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=2))


def write_cifar(
    name: str,
    data_dir: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str] | None = None,
) -> Path:
    """Write a dataset of any size in the official layout under ``data_dir``; returns the dataset folder.

    ``train``/``test`` are (uint8 images (N, 32, 32, 3), integer labels (N,)). ``classes`` defaults to
    "class_0", "class_1", .... The result loads with :func:`load_cifar` and round-trips exactly.
    """
    layout = _layout(name)
    names = list(classes) if classes is not None else [f"class_{i}" for i in range(layout.num_classes)]
    if len(names) != layout.num_classes or not all(isinstance(c, str) for c in names):
        raise ConfigError(f"{name} needs {layout.num_classes} class names (str), got {len(names)}")
    train_rows, train_labels = _check_split("train", *train, layout.num_classes)
    test_rows, test_labels = _check_split("test", *test, layout.num_classes)

    folder = Path(data_dir).expanduser() / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    encoded = [c.encode("utf-8") for c in names]

    def batch(label: str, rows: np.ndarray, labels: list[int], offset: int) -> dict[bytes, Any]:
        # Bytes keys and bytes strings, like the Python 2 originals read with encoding="bytes".
        d: dict[bytes, Any] = {
            b"batch_label": label.encode("ascii"),
            b"data": rows,
            b"filenames": [f"image_{offset + i:06d}.png".encode("ascii") for i in range(len(labels))],
        }
        if name == "cifar100":
            d[b"fine_labels"] = labels
            d[b"coarse_labels"] = [lab // 5 for lab in labels]
        else:
            d[b"labels"] = labels
        return d

    if name == "cifar10":
        # Split as evenly as possible: floor boundaries make the five sizes differ by at most one.
        n = len(train_labels)
        bounds = [i * n // 5 for i in range(6)]
        for i, fname in enumerate(layout.train_files):
            a, b = bounds[i], bounds[i + 1]
            _dump(batch(f"training batch {i + 1} of 5", train_rows[a:b], train_labels[a:b], a), folder / fname)
        _dump(batch("testing batch 1 of 1", test_rows, test_labels, 0), folder / layout.test_file)
        meta: dict[bytes, Any] = {
            b"label_names": encoded,
            b"num_cases_per_batch": -(-len(train_labels) // 5),
            b"num_vis": _ROW,
        }
    else:
        _dump(batch("training", train_rows, train_labels, 0), folder / "train")
        _dump(batch("testing", test_rows, test_labels, 0), folder / layout.test_file)
        meta = {
            b"fine_label_names": encoded,
            b"coarse_label_names": [f"superclass_{i}".encode("ascii") for i in range(20)],
        }
    _dump(meta, folder / layout.meta_file)
    return folder
