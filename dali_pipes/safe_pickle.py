"""A restricted unpickler for the CIFAR "python version" files, which arrive from the network or from users.

``pickle.load`` runs whatever callable a file names, so a crafted ``data_batch_1`` could execute code on load.
:func:`safe_load` resolves only the few globals that plain numpy arrays need and refuses everything else.

Even those are narrowed to the calls numpy's own pickles make: ``numpy.ndarray`` is only a token that
``_reconstruct`` accepts as its first argument, and ``_reconstruct`` only builds the empty ``(0,)`` array that the
file's state then fills. Calling ``numpy.ndarray(shape, dtype)`` (REDUCE or NEWOBJ) or ``_reconstruct`` with
another shape would hand back uninitialised memory of any size as "pixels".
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import DataError

_FIX = ("CIFAR files contain only arrays, lists and dicts; the file is corrupt or crafted — "
        "replace it with the official download")


class _Refused(pickle.UnpicklingError):
    """An allowed global called in a way numpy's own pickles never call it."""


def _multiarray_attr(name: str) -> Any:
    """Return the installed numpy's ``multiarray.<name>``: numpy 2 moved it from ``numpy.core`` to ``numpy._core``."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return getattr(multiarray, name)


def _frombuffer(buf: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """Rebuild an array pickled with protocol 5 (the default from Python 3.14 for re-pickled derived datasets).

    Mirrors numpy's own ``_frombuffer`` but refuses object dtypes up front; numpy would refuse them too.
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise _Refused("an object dtype in a protocol-5 array")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 protocol-2 pickles store bytes as ``_codecs.encode(text, 'latin1')``.

    Only that codec is let through: ``codecs.encode`` also reaches the bytes-to-bytes codecs (zlib, bz2, ...),
    which a crafted file could use as a decompression bomb.
    """
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how pickle protocols 0-2 write ``b""``, e.g. the pixel buffer of a batch with no images."""
    if args:
        raise _Refused(f"bytes() called with {len(args)} arguments (only the empty bytes object is expected)")
    return b""


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: usable only as :func:`_reconstruct`'s first argument.

    Not callable, not a type (so NEWOBJ refuses it) and without attributes (so BUILD cannot change it).
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("numpy.ndarray called directly (it would return uninitialised memory)")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()
_EMPTY = (0,)  # the shape numpy's ndarray.__reduce__ always pickles; the file's state then sets the real one
_DUMMY_DTYPES = (b"b", "b")  # ... and its dummy dtype (bytes; str when read from a Python 2 text pickle)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the one call numpy's pickles make: ``(ndarray, (0,), b'b')``, an empty array."""
    if subtype is not _NDARRAY:
        raise _Refused(f"_reconstruct of {subtype!r} (only numpy.ndarray is expected)")
    if type(shape) is not tuple or shape != _EMPTY or dtype not in _DUMMY_DTYPES:
        raise _Refused(
            f"_reconstruct with shape {shape!r} and dtype {dtype!r} (numpy pickles (0,) and b'b' and fills the "
            "array from the file; anything else is uninitialised memory)"
        )
    return _multiarray_attr("_reconstruct")(np.ndarray, _EMPTY, b"b")


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | _NdarrayToken]:
    """The complete list of globals a CIFAR pickle (official or re-pickled by numpy 1 or 2) refers to."""
    scalar = _multiarray_attr("scalar")
    table: dict[tuple[str, str], Callable[..., Any] | _NdarrayToken] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
        ("__builtin__", "bytes"): _empty_bytes,  # protocol <= 2 names builtins the Python 2 way
        ("builtins", "bytes"): _empty_bytes,
    }
    # Both spellings map to the installed numpy's function: official files say numpy.core (Python 2 era),
    # files re-pickled under numpy 2 say numpy._core.
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = _reconstruct
        table[(f"{pkg}.multiarray", "scalar")] = scalar
        table[(f"{pkg}.numeric", "_frombuffer")] = _frombuffer
    return table


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays, dtypes, scalars and the builtin containers."""

    def __init__(self, file: Any, path: Path) -> None:
        # encoding="bytes": the official files are Python 2 pickles whose str objects are raw bytes
        # (image data and bytes dict keys); decoding them as text would corrupt the pixel buffers.
        super().__init__(file, encoding="bytes")
        self._path = path
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._table[(module, name)]
        except KeyError:
            raise DataError(f"{self._path}: refused to unpickle {module}.{name}: {_FIX}") from None


def _reject_object_arrays(obj: object, path: Path, depth: int = 0) -> None:
    """Refuse object-dtype arrays anywhere in the result.

    An object array's elements are arbitrary Python objects; even though find_class limits what they can be,
    pixel data and labels never need them, and letting them through would hand later code values of
    unexpected types (and a route for anything a future allow-list entry might enable).
    """
    if depth > 8:  # CIFAR dicts are 2 levels deep; deeper nesting is not a CIFAR file.
        raise DataError(f"{path}: nested more deeply than any CIFAR file; {_FIX}")
    if obj is _NDARRAY:
        raise DataError(f"{path}: holds numpy.ndarray itself where data belongs; {_FIX}")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{path}: contains an array of object dtype; {_FIX}")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _reject_object_arrays(key, path, depth + 1)
            _reject_object_arrays(value, path, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        # Labels are a list of 10 000 / 50 000 ints: only containers need a recursive look.
        for item in obj:
            if not isinstance(item, (int, float, str, bytes)):
                _reject_object_arrays(item, path, depth + 1)
    elif isinstance(obj, np.generic) and obj.dtype.hasobject:
        raise DataError(f"{path}: contains a scalar of object dtype; {_FIX}")


def safe_load(path: Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays and builtin containers; every failure is a one-line DataError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except _Refused as e:
        raise DataError(f"{path}: refused to unpickle {e}; {_FIX}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:
        # The bytes are untrusted, so any exception while decoding them (EOFError for a truncated file,
        # UnpicklingError / ValueError / TypeError / RecursionError / MemoryError for garbage) is a fact
        # about the file, not a bug here; report it as such instead of a traceback.
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"{path}: not a readable CIFAR pickle ({type(e).__name__}{': ' + detail if detail else ''}); "
            "the file is truncated or corrupt — delete it and download again"
        ) from None
    _reject_object_arrays(obj, path)
    return obj
