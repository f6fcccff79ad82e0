"""Sharded datasets: tar files in the WebDataset layout, with DALI's index files and a manifest.

Layout of a shard folder (written by ``dali-shard``, :mod:`dali_pipes.shard_cli`)::

    <out>/manifest.json            classes, per split: shards with sample count, bytes, sha256, labels
    <out>/skipped.txt              files of the image folder left out at packing, one per line with the reason
    <out>/train-000000.tar         <key>.<jpg|jpeg|png|bmp> + <key>.cls (the label in ASCII decimal) per sample
    <out>/train-000000.idx         DALI's index of that tar (format v1.2, below)
    <out>/val-000000.tar ...

A sample's key is its index in its split (nine digits or more), so ``return_index`` and every error name the same
number; samples are numbered shard by shard in tar order, and a split's samples were shuffled once at packing
(``--seed``), so a shard holds many classes.

DALI's index format v1.2 (``fn.readers.webdataset(index_paths=...)``): a first line ``v1.2 <samples>``, then one line
per sample listing its components as ``<ext> <offset> <size> <name>`` groups, where ``offset`` is where the
component's data (not its 512-byte tar header) starts. DALI reads the samples in the order of the lines and seeks to
each offset, which is what lets the loader follow its own epoch plan: it writes, per epoch, index files that list a
shard's samples in the planned order (see :mod:`dali_pipes.plan`).

:func:`load_shards` checks a split before anything reads it (the manifest, every tar's size, every index against
its manifest entry and against the tar headers of its first and last sample) and raises a one-line
:class:`DataError` naming the file and the fix. Checksums (sha256 over every byte) are checked by
``dali-shard --verify OUT``, not at every start: hashing ImageNet's 140 GB would take minutes per rank.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

FORMAT = "dali-train-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SKIPPED = "skipped.txt"
INDEX_VERSION = "v1.2"
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp")  # code of an image's extension = its position here
BLOCK = 512  # tar block: headers and data start on multiples of it
KEY_DIGITS = 9


def key_of(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def repack_hint(root: str | Path) -> str:
    return f"rerun `dali-shard <image folder> {root}` (it rewrites what is missing or damaged)"


@dataclass(frozen=True)
class ShardDataset:
    """A split of a shard folder: where each sample's components lie, and its label.

    Sample ``i`` (its key, its index in the split) lies in tar ``shard[i]``; its image's data starts at byte
    ``offsets[i]`` and is ``sizes[i]`` bytes long, its label's at ``cls_offsets[i]`` (``cls_sizes[i]`` bytes).
    """

    name: str
    root: str
    split: str
    tars: tuple[str, ...]
    counts: tuple[int, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    shard: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    exts: np.ndarray
    cls_offsets: np.ndarray
    cls_sizes: np.ndarray
    digest: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image_name(self, index: int) -> str:
        return f"{key_of(index)}.{IMAGE_EXTS[int(self.exts[index])]}"

    def index_line(self, index: int) -> str:
        """Sample ``index``'s line in a DALI index file (v1.2)."""
        key = key_of(index)
        return (f"{IMAGE_EXTS[int(self.exts[index])]} {int(self.offsets[index])} {int(self.sizes[index])} "
                f"{self.image_name(index)} cls {int(self.cls_offsets[index])} {int(self.cls_sizes[index])} "
                f"{key}.cls")


def write_index(path: str | Path, lines: list[str]) -> None:
    """A DALI index file (v1.2) holding `lines` (from :meth:`ShardDataset.index_line` or the packer) in order."""
    Path(path).write_text(f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))


def parse_index(path: Path) -> list[list[tuple[str, int, int, str]]]:
    """The samples of a v1.2 index file: per sample, its (ext, offset, size, name) components. DataError if malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"missing index file {path}; {repack_hint(path.parent)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read index file {path} ({exc}); {repack_hint(path.parent)}") from None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit() or int(head[1]) != len(lines) - 1:
        raise DataError(f"index file {path} is damaged (its first line must be '{INDEX_VERSION} <samples>' followed "
                        f"by that many lines); {repack_hint(path.parent)}")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise DataError(f"index file {path} line {number} is damaged (expected '<ext> <offset> <size> <name>' "
                            f"groups); {repack_hint(path.parent)}")
        try:
            samples.append([(fields[k], int(fields[k + 1]), int(fields[k + 2]), fields[k + 3])
                            for k in range(0, len(fields), 4)])
        except ValueError:
            raise DataError(f"index file {path} line {number} is damaged (an offset or size is not a number); "
                            f"{repack_hint(path.parent)}") from None
    return samples


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(f"shard folder not found: {root}; pack an image folder into it with "
                        f"`dali-shard <image folder> {root}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {MANIFEST} in {root}: not a dali-shard output, or its packing did not finish; "
                        f"{repack_hint(root)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({str(exc).splitlines()[0]}); {repack_hint(root)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a dali-shard manifest (no 'format': '{FORMAT}'); {repack_hint(root)}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} has format version {manifest.get('format_version')!r}; this dali-train reads "
                        f"version {FORMAT_VERSION}: repack with this version's dali-shard")
    return manifest


def _check_header(tar: Path, fh, offset: int, name: str, index_path: Path) -> None:
    """The tar header before `offset` must name `name`: an index from another tar (or a shard replaced since
    packing) fails here rather than feeding DALI bytes from the middle of other files."""
    fh.seek(offset - BLOCK)
    try:
        found = tarfile.TarInfo.frombuf(fh.read(BLOCK), "utf-8", "surrogateescape").name
    except tarfile.TarError:
        found = None
    if found != name:
        raise DataError(f"index file {index_path} does not match its tar {tar} (byte {offset - BLOCK} holds "
                        f"{found!r}, not {name!r}); {repack_hint(tar.parent)}")


def load_shards(root: str | Path, split: str) -> ShardDataset:
    """Read and check a split of a shard folder (see the module docstring); DataError names the file and the fix."""
    root = Path(root).expanduser().absolute()
    manifest = read_manifest(root)
    entry = (manifest.get("splits") or {}).get(split)
    classes = tuple(manifest.get("classes") or ())
    if not entry or not entry.get("shards"):
        raise DataError(f"{root / MANIFEST} lists no {split} samples; pack a folder with a {split}/ split into it")
    tars, counts, labels, columns = [], [], [], [[] for _ in range(6)]
    start = 0
    for number, shard in enumerate(entry["shards"]):
        tar, index_path = root / shard["tar"], root / shard["index"]
        try:
            size = tar.stat().st_size
        except FileNotFoundError:
            raise DataError(f"missing shard {tar}; restore it or {repack_hint(root)}") from None
        if size != shard["bytes"]:
            raise DataError(f"shard {tar} is {size} bytes where {root / MANIFEST} says {shard['bytes']}: truncated, "
                            f"or a manifest from another packing; {repack_hint(root)}")
        samples = parse_index(index_path)
        if len(samples) != shard["samples"] or len(shard["labels"]) != shard["samples"]:
            raise DataError(f"index file {index_path} lists {len(samples)} samples where {root / MANIFEST} says "
                            f"{shard['samples']}: a manifest from another packing; {repack_hint(root)}")
        for k, components in enumerate(samples):
            exts = [c[0] for c in components]
            image = [c for c in components if c[0] in IMAGE_EXTS]
            cls = [c for c in components if c[0] == "cls"]
            where = f"sample {key_of(start + k)} (line {k + 2} of index file {index_path})"
            if len(image) != 1 or len(cls) != 1 or len(components) != 2:
                what = "no label (.cls)" if not cls else "no image" if not image else f"components {exts}"
                raise DataError(f"{where} has {what}; {repack_hint(root)}")
            for ext, offset, length, name in components:
                if offset % BLOCK or offset < BLOCK or offset + length > size or name != f"{key_of(start + k)}.{ext}":
                    raise DataError(f"{where} does not match its tar {tar} ({name} at byte {offset}, {length} "
                                    f"bytes, in a file of {size}); {repack_hint(root)}")
            columns[0].append(image[0][1])
            columns[1].append(image[0][2])
            columns[2].append(IMAGE_EXTS.index(image[0][0]))
            columns[3].append(cls[0][1])
            columns[4].append(cls[0][2])
            columns[5].append(number)
        with tar.open("rb") as fh:
            for k in (0, len(samples) - 1):
                for _, offset, _, name in samples[k]:
                    _check_header(tar, fh, offset, name, index_path)
        bad = [v for v in shard["labels"] if not isinstance(v, int) or not 0 <= v < len(classes)]
        if bad:
            raise DataError(f"{root / MANIFEST}: label {bad[0]!r} of {tar.name} is not a class index "
                            f"(0..{len(classes) - 1}); {repack_hint(root)}")
        tars.append(str(tar))
        counts.append(len(samples))
        labels += shard["labels"]
        start += len(samples)
    as64 = [np.asarray(c, dtype=np.int64) for c in columns]
    digest = f"{manifest.get('dataset_id', '')}:{split}"
    return ShardDataset(name=f"{root.name}/{split}", root=str(root), split=split, tars=tuple(tars),
                        counts=tuple(counts), labels=np.asarray(labels, dtype=np.int64), classes=classes,
                        shard=as64[5], offsets=as64[0], sizes=as64[1], exts=as64[2].astype(np.uint8),
                        cls_offsets=as64[3], cls_sizes=as64[4], digest=digest)


class TarSamples:
    """Reads samples of a ShardDataset with the standard library's tarfile (the torchvision reference's reader).

    tarfile finds a member by walking the tar's own headers (once per tar and process), independently of the index
    files DALI reads, so the reference is a check on them as well as a second reader. The ``webdataset`` package
    was not taken: it streams a tar start to end with its own shuffle buffer, so it cannot follow the loader's epoch
    plan (random access by key), and it would be one more dependency for what 30 lines of tarfile do.
    """

    def __init__(self, data: ShardDataset):
        self.data = data
        self._open: dict[int, tarfile.TarFile] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # open tars do not travel to DataLoader workers
        return {"data": self.data}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["data"])

    def _tar(self, shard: int) -> tarfile.TarFile:
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        if shard not in self._open:
            path = self.data.tars[shard]
            try:
                self._open[shard] = tarfile.open(path, "r:")
            except (OSError, tarfile.TarError) as exc:
                raise DataError(f"cannot read shard {path} ({exc}); {repack_hint(self.data.root)}") from None
        return self._open[shard]

    def read(self, index: int) -> tuple[bytes, int]:
        """Sample `index`'s encoded image and the label its .cls holds."""
        shard = int(self.data.shard[index])
        tar, path = self._tar(shard), self.data.tars[shard]
        key = key_of(index)
        try:
            image = tar.extractfile(self.data.image_name(index)).read()
            label = tar.extractfile(f"{key}.cls").read()
        except KeyError as exc:
            raise DataError(f"shard {path} has no {exc.args[0].split()[-1] if exc.args else key} (truncated, or "
                            f"not the shard the manifest lists); {repack_hint(self.data.root)}") from None
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise DataError(f"cannot read sample {key} from shard {path} ({exc}); "
                            f"{repack_hint(self.data.root)}") from None
        if not re.fullmatch(rb"\d+", label.strip()):
            raise DataError(f"sample {key} of shard {path} has a label that is not a number ({label[:20]!r}); "
                            f"{repack_hint(self.data.root)}")
        return image, int(label)


_DALI_OPERATOR = re.compile(r"Error in \w+ operator `nvidia\.dali\.fn\.([\w.]+)`")
_DALI_REASON = re.compile(r"encountered:\s*\n\s*(\S.*)")


def dali_shard_error(exc: BaseException, data: ShardDataset) -> DataError | None:
    """One line for a DALI pipeline failure on a shard (reader or decoder); None for any other error."""
    text = str(exc)
    operator = _DALI_OPERATOR.search(text)
    if operator is None or not operator.group(1).startswith(("decoders.", "readers.webdataset")):
        return None
    reason = _DALI_REASON.search(text)
    detail = " ".join((reason.group(1) if reason else "no reason given").split())[:200]
    tar = max((t for t in data.tars if t in text), key=len, default=None)
    where = f"shard {tar}" if tar else f"a shard under {data.root}"
    if operator.group(1).startswith("decoders."):
        key = re.search(r":(\d{%d,})\.\w+" % KEY_DIGITS, text)
        if key is None:  # nvImageCodec's failures do not always name the sample
            return DataError(f"cannot decode a sample of {where}: DALI's image decoder failed ({detail}) without "
                             "naming it; run once with backend 'torchvision' to find the sample, then remove or "
                             f"re-encode its image in the image folder and {repack_hint(data.root)}")
        return DataError(f"cannot decode sample {key.group(1)} of {where}: DALI's image decoder failed ({detail}); "
                         f"the source image is corrupt: remove or re-encode it in the image folder and "
                         f"{repack_hint(data.root)}")
    return DataError(f"cannot read {where}: DALI's webdataset reader failed ({detail}); {repack_hint(data.root)}")
