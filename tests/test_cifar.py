"""CIFAR loading: exact round trips through the official layout, and one-line DataErrors for bad files."""

from __future__ import annotations

import io
import os
import pickle
import socket
import tarfile
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dali_pipes.cifar import load_cifar, write_cifar
from dali_pipes.errors import DataError
from dali_pipes.safe_pickle import safe_load

N_TRAIN, N_TEST = 23, 7


def _make(name: str, root: Path, seed: int = 0) -> dict[str, Any]:
    """Write a tiny random dataset and return what was written."""
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    train = (rng.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8), rng.integers(0, k, N_TRAIN))
    test = (rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8), rng.integers(0, k, N_TEST))
    classes = [f"c{i}" for i in range(k)]
    folder = write_cifar(name, root, train, test, classes)
    return {"train": train, "val": test, "classes": classes, "folder": folder}


def _read(path: Path) -> dict[Any, Any]:
    with path.open("rb") as f:  # files this test wrote itself: plain pickle is fine here
        return pickle.load(f, encoding="bytes")


def _write(path: Path, obj: object, protocol: int = 2) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("download must not be attempted")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_round_trip_exact(tmp_path: Path, name: str) -> None:
    made = _make(name, tmp_path)
    for split in ("train", "val"):
        ds = load_cifar(name, tmp_path, split, download=False)
        images, labels = made[split]
        assert ds.name == name
        assert ds.images.shape == images.shape and ds.images.dtype == np.uint8
        assert ds.images.flags.c_contiguous
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(ds.images, images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.classes == tuple(made["classes"])
        assert len(ds) == len(labels)


def test_layout_matches_official(tmp_path: Path) -> None:
    """Bytes keys, planar rows, five near-equal CIFAR-10 batches, coarse labels for CIFAR-100."""
    made = _make("cifar10", tmp_path / "a")
    sizes = [len(_read(made["folder"] / f"data_batch_{i}")[b"labels"]) for i in range(1, 6)]
    assert sum(sizes) == N_TRAIN and max(sizes) - min(sizes) <= 1
    first = _read(made["folder"] / "data_batch_1")
    assert first[b"data"].shape == (sizes[0], 3072) and first[b"data"].dtype == np.uint8
    # Row layout: the first 1024 bytes are the red plane of image 0.
    np.testing.assert_array_equal(first[b"data"][0, :1024], made["train"][0][0, :, :, 0].ravel())
    assert isinstance(first[b"labels"], list)
    assert _read(made["folder"] / "batches.meta")[b"label_names"][0] == b"c0"

    made100 = _make("cifar100", tmp_path / "b")
    d = _read(made100["folder"] / "train")
    assert d[b"coarse_labels"] == [x // 5 for x in d[b"fine_labels"]]
    assert len(_read(made100["folder"] / "meta")[b"fine_label_names"]) == 100


def test_python2_style_pickle_loads(tmp_path: Path) -> None:
    """Official files: Python 2 strings (bytes on load) and numpy.core.multiarray globals."""
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "test_batch"
    d = _read(path)

    class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
        dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

        def save_py2str(self, obj: bytes | str) -> None:
            data = obj.encode("latin1") if isinstance(obj, str) else obj
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
            self.memoize(obj)

        dispatch[bytes] = save_py2str
        dispatch[str] = save_py2str

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(d)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw
    path.write_bytes(raw)
    ds = load_cifar("cifar10", tmp_path, "val", download=False)
    np.testing.assert_array_equal(ds.images, made["val"][0])
    np.testing.assert_array_equal(ds.labels, made["val"][1])


def test_str_keyed_derived_pickle_accepted(tmp_path: Path) -> None:
    made = _make("cifar100", tmp_path)
    for fname in ("train", "test", "meta"):
        path = made["folder"] / fname
        d = {k.decode(): ([v.decode() for v in val] if k.endswith(b"names") else val) for k, val in _read(path).items()}
        _write(path, d, protocol=pickle.HIGHEST_PROTOCOL)
    assert "fine_labels" in _read(made["folder"] / "train")
    ds = load_cifar("cifar100", tmp_path, "train", download=False)
    np.testing.assert_array_equal(ds.images, made["train"][0])
    np.testing.assert_array_equal(ds.labels, made["train"][1])
    assert ds.classes == tuple(made["classes"])


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.cmd,))


def test_crafted_pickle_refused(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    marker = tmp_path / "pwned"
    path = made["folder"] / "data_batch_1"
    _write(path, {b"data": _Evil(f"touch {marker}"), b"labels": []})
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, "train", download=False)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg and "system" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "objs"
    _write(path, {b"data": np.array([1, "x"], dtype=object)})
    with pytest.raises(DataError, match="object dtype") as err:
        safe_load(path)
    assert str(path) in str(err.value)


def test_codecs_other_than_latin1_refused(tmp_path: Path) -> None:
    """_codecs.encode is allowed for Python 3 bytes, but not to reach zlib & co."""
    path = tmp_path / "bomb"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataError, match="bomb"):
        safe_load(path)


class _NdarrayCall:
    """Pickles as a call of numpy.ndarray(shape, dtype): REDUCE on the class itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.ndarray, ((self.n, 3072), np.dtype(np.uint8)))


class _ReconstructFull:
    """Pickles as _reconstruct(ndarray, (n, 3072), 'B') without the state that would fill it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (self.n, 3072), b"B"))


# NEWOBJ: numpy.ndarray.__new__(numpy.ndarray, (4, 3072)), written with opcodes since pickle refuses to emit it.
_NEWOBJ_NDARRAY = b"\x80\x02}U\x04datacnumpy\nndarray\nK\x07M\x00\x0c\x86\x85\x81s."


@pytest.mark.parametrize("how", ["ndarray_called", "reconstruct_full_shape", "ndarray_newobj"])
def test_uninitialised_arrays_refused(tmp_path: Path, how: str) -> None:
    """Allowed globals called other than the way numpy's pickles call them would yield uninitialised memory."""
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "test_batch"
    if how == "ndarray_newobj":
        path.write_bytes(_NEWOBJ_NDARRAY)
        expected = "NEWOBJ"
    else:
        data = _NdarrayCall(N_TEST) if how == "ndarray_called" else _ReconstructFull(N_TEST)
        _edit(path, data=data)
        expected = "refused to unpickle numpy.ndarray called directly" if how == "ndarray_called" else \
            "refused to unpickle _reconstruct with shape (7, 3072)"
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, "val", download=False)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


def test_ndarray_is_only_reconstructs_argument(tmp_path: Path) -> None:
    path = tmp_path / "bare"
    path.write_bytes(b"\x80\x02}U\x04datacnumpy\nndarray\ns.")  # {b"data": numpy.ndarray}, the class itself
    with pytest.raises(DataError, match="holds numpy.ndarray itself"):
        safe_load(path)
    other = tmp_path / "other_subtype"  # _reconstruct(numpy.dtype, (0,), b"b")
    other.write_bytes(b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R.")
    with pytest.raises(DataError, match=r"refused to unpickle _reconstruct of <class 'numpy.dtype'>"):
        safe_load(other)


@pytest.mark.parametrize("protocol", sorted({2, 3, 4, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL}))
def test_numpy2_pickles_load_with_every_protocol(tmp_path: Path, protocol: int) -> None:
    """Files re-pickled under numpy 2 name numpy._core; protocols 2-4 use _reconstruct, 5 uses _frombuffer."""
    made = _make("cifar10", tmp_path)
    for path in made["folder"].iterdir():
        _write(path, _read(path), protocol=protocol)
    raw = (made["folder"] / "test_batch").read_bytes()
    assert (b"_frombuffer" if protocol >= 5 else b"numpy._core.multiarray") in raw
    for split in ("train", "val"):
        ds = load_cifar("cifar10", tmp_path, split, download=False)
        np.testing.assert_array_equal(ds.images, made[split][0])
        np.testing.assert_array_equal(ds.labels, made[split][1])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_empty_split_refused(tmp_path: Path, name: str) -> None:
    """Valid files with zero rows: refused at load, named, and called empty (not corrupt or crafted)."""
    none = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    folder = write_cifar(name, tmp_path, none, none)
    test_file = "test_batch" if name == "cifar10" else "test"
    with pytest.raises(DataError) as err:
        load_cifar(name, tmp_path, "val", download=False)
    msg = str(err.value)
    assert msg.startswith(f"{folder / test_file} holds 0 images, so the val split is empty")
    assert "crafted" not in msg and "corrupt" not in msg and "\n" not in msg
    with pytest.raises(DataError, match="0 images, so the train split is empty") as err:
        load_cifar(name, tmp_path, "train", download=False)
    assert str(folder) in str(err.value)


def test_empty_batches_among_full_ones_load(tmp_path: Path) -> None:
    """Three images over five CIFAR-10 batch files leave two of them empty: protocol 2 writes b"" as bytes()."""
    rng = np.random.default_rng(3)
    train = (rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), np.array([1, 2, 3]))
    folder = write_cifar("cifar10", tmp_path, train, train)
    empty = [f for f in sorted(folder.glob("data_batch_*")) if not _read(f)[b"labels"]]
    assert len(empty) == 2 and b"__builtin__\nbytes" in empty[0].read_bytes()
    ds = load_cifar("cifar10", tmp_path, "train", download=False)
    np.testing.assert_array_equal(ds.images, train[0])
    np.testing.assert_array_equal(ds.labels, train[1])


def test_bytes_with_arguments_refused(tmp_path: Path) -> None:
    path = tmp_path / "sized"
    path.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")  # bytes(2**30): a gigabyte of zeros
    with pytest.raises(DataError, match="refused to unpickle bytes\\(\\) called with 1 arguments"):
        safe_load(path)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_broken_file(tmp_path: Path, how: str) -> None:
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": os.urandom(500), "empty": b""}[how])
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, "train", download=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _edit(path: Path, **changes: Any) -> None:
    d = _read(path)
    d.update({k.encode(): v for k, v in changes.items()})
    _write(path, d)


def test_wrong_shape(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "data_batch_2"
    n = len(_read(path)[b"labels"])
    _edit(path, data=np.zeros((n, 3000), np.uint8))
    with pytest.raises(DataError, match="3000") as err:
        load_cifar("cifar10", tmp_path, "train", download=False)
    assert str(path) in str(err.value)


def test_wrong_dtype(tmp_path: Path) -> None:
    made = _make("cifar100", tmp_path)
    path = made["folder"] / "test"
    _edit(path, data=np.zeros((N_TEST, 3072), np.float32))
    with pytest.raises(DataError, match="float32"):
        load_cifar("cifar100", tmp_path, "val", download=False)


def test_label_out_of_range(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "test_batch"
    labels = _read(path)[b"labels"]
    labels[2] = 10
    _edit(path, labels=labels)
    with pytest.raises(DataError, match=r"label 10 at index 2") as err:
        load_cifar("cifar10", tmp_path, "val", download=False)
    assert str(path) in str(err.value)


def test_cifar100_label_out_of_range(tmp_path: Path) -> None:
    made = _make("cifar100", tmp_path)
    path = made["folder"] / "train"
    labels = _read(path)[b"fine_labels"]
    labels[0] = -1
    _edit(path, fine_labels=labels)
    with pytest.raises(DataError, match="outside"):
        load_cifar("cifar100", tmp_path, "train", download=False)


def test_label_count_mismatch(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    path = made["folder"] / "data_batch_5"
    labels = _read(path)[b"labels"]
    _edit(path, labels=labels[:-1])
    with pytest.raises(DataError, match=f"{len(labels) - 1} entries but 'data' has {len(labels)} rows"):
        load_cifar("cifar10", tmp_path, "train", download=False)


def test_missing_key_and_bad_meta(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    meta = made["folder"] / "batches.meta"
    _write(meta, {b"label_names": [b"a", b"b"]})
    with pytest.raises(DataError, match="2 names, expected 10"):
        load_cifar("cifar10", tmp_path, "val", download=False)
    _write(meta, {b"something": 1})
    with pytest.raises(DataError, match="missing key 'label_names'") as err:
        load_cifar("cifar10", tmp_path, "val", download=False)
    assert str(meta) in str(err.value)


def test_missing_folder_no_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, "train", download=False, fetch=_no_download)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg


def test_missing_folder_offline(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def offline(url: str, download_root: str, md5: str | None = None, **kw: Any) -> None:
        seen.update(url=url, root=download_root, md5=md5, timeout=socket.getdefaulttimeout())
        raise urllib.error.URLError("offline")

    before = socket.getdefaulttimeout()
    with pytest.raises(DataError) as err:
        load_cifar("cifar100", tmp_path, "val", download=True, fetch=offline)
    msg = str(err.value)
    assert "download" in msg and "offline" in msg
    assert "cifar-100-python" in msg and str(tmp_path) in msg and "\n" not in msg
    assert seen["md5"] == "eb9058c3a382ffc7106e4002c42a8d85" and seen["url"].endswith("cifar-100-python.tar.gz")
    assert seen["timeout"] is not None and seen["timeout"] <= 60  # fail fast, not the OS default
    assert socket.getdefaulttimeout() == before  # restored


def test_missing_batch_file(tmp_path: Path) -> None:
    made = _make("cifar10", tmp_path)
    (made["folder"] / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, "train", download=True, fetch=_no_download)
    assert str(made["folder"] / "data_batch_4") in str(err.value)
    # The test split needs only test_batch and the meta file, so it still loads.
    assert len(load_cifar("cifar10", tmp_path, "val", download=True, fetch=_no_download)) == N_TEST


def test_local_archive_extracted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    made = _make("cifar10", src)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(made["folder"], arcname="cifar-10-batches-py")
    # Not the official archive, so its md5 fails: refused without download...
    with pytest.raises(DataError, match="md5"):
        load_cifar("cifar10", data_dir, "train", download=False, fetch=_no_download)
    # ...and extracted once the checksum passes.
    verify = lambda path, md5: md5 == "c58f30108f718f92721af3b95e74349a"
    ds = load_cifar("cifar10", data_dir, "train", download=False, fetch=_no_download, verify=verify)
    np.testing.assert_array_equal(ds.images, made["train"][0])


@pytest.mark.parametrize("download", [True, False])
def test_data_dir_that_is_a_file(tmp_path: Path, download: bool) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", a_file, "train", download=download, fetch=_no_download)
    msg = str(err.value)
    assert msg.startswith(f"data dir {a_file} is a file;") and f"e.g. {tmp_path}" in msg
    assert "File exists" not in msg and "\n" not in msg
    with pytest.raises(DataError, match=f"data dir {a_file / 'sub'} lies under {a_file}, which is a file"):
        load_cifar("cifar10", a_file / "sub", "train", download=download, fetch=_no_download)


def test_data_dir_that_is_a_file_of_the_dataset(tmp_path: Path) -> None:
    """The archive or a batch file passed as the data dir: the message names the folder to pass."""
    made = _make("cifar10", tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    for wrong in (tmp_path / "cifar-10-python.tar.gz", made["folder"] / "data_batch_1"):
        with pytest.raises(DataError, match=f"data dir {wrong} is a file; pass {tmp_path}, the folder that holds"):
            load_cifar("cifar10", wrong, "train", download=True, fetch=_no_download)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # Permission bits do not stop root; kernel file systems refuse it files.
    for folder in (Path("/sys"), Path("/proc")):
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    pytest.skip("running as root, and /sys and /proc accept new files here: no folder to refuse a download")


def test_unwritable_data_dir_when_a_download_is_needed(tmp_path: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    for data_dir in (folder, folder / "cifar" / "here"):  # missing folders are created under the first existing one
        with pytest.raises(DataError) as err:
            load_cifar("cifar100", data_dir, "train", download=True, fetch=_no_download)
        msg = str(err.value)
        assert msg.startswith(f"cannot write to {folder} (") and "cannot be downloaded there" in msg
        assert "writable data dir" in msg and "\n" not in msg
