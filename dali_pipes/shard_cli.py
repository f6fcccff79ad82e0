"""``dali-shard FOLDER OUTPUT``: pack an image folder into tar shards (WebDataset layout) with DALI index files.

What it writes is described in :mod:`dali_pipes.shards`. How:

* The folder is listed with the image-folder listing's checks (:func:`dali_pipes.folder.list_image_folder`): what it
  leaves out (not an image, empty, truncated or corrupt, too large, a name that is not UTF-8) is skipped, and every
  skipped file is written to ``OUTPUT/skipped.txt`` with its reason.
* Each split's samples are shuffled once from ``--seed`` and cut into shards of about ``--shard-size`` bytes (a
  shard ends before the sample that would take it past the size; one sample larger than the size is a shard).
* Shards are byte-for-byte functions of the listing, the seed and the size (tar headers carry no time or owner),
  so a rerun rewrites exactly what an interrupted run would have written.
* Every file is written to a temporary name, flushed to disk, then renamed: a killed run leaves whole shards and
  ``.partial`` files, never a half shard under a shard's name. ``OUTPUT/.dali-shard-state.json`` records the
  shards done; ``manifest.json`` is written last, so a folder with a manifest is complete. A rerun with the same
  folder, seed and size keeps the shards recorded as done (same size and modification time, index present) and
  writes the rest; a folder holding another packing is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from .atomic import atomic_write
from .errors import ConfigError, DaliTrainError, DataError
from .notices import skipped_to
from .shards import (BLOCK, FORMAT, FORMAT_VERSION, IMAGE_EXTS, MANIFEST, SKIPPED, key_of, load_shards,
                     read_manifest, repack_hint, write_index)

STATE = ".dali-shard-state.json"
DEFAULT_SHARD_SIZE = 256 << 20  # bytes; see the README: large enough that opens are rare, small enough to spread
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_OURS = re.compile(r"^(train|val)-\d{6}\.(tar|idx)$|^\.(train|val)-\d{6}\.(tar|idx)\.partial$")


def parse_size(text: str) -> int:
    """'512', '64K', '256M', '1G' (powers of 1024) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"--shard-size {text!r} is invalid: give bytes with an optional K, M or G suffix, "
                          "e.g. 256M")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


@dataclass
class PlannedShard:
    split: str
    number: int
    start: int  # index (key) of its first sample in the split
    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    @property
    def tar(self) -> str:
        return f"{self.split}-{self.number:06d}.tar"

    @property
    def index(self) -> str:
        return f"{self.split}-{self.number:06d}.idx"


def _tar_bytes(size: int) -> int:
    """Bytes a sample of an image of `size` bytes takes in a tar: two headers, the image and its label, padded."""
    return 3 * BLOCK + -(-size // BLOCK) * BLOCK


def _skipped(split_dir: Path, kept: set[str]) -> list[tuple[str, str]]:
    """(path, reason) of every entry under the split's class folders that the listing did not keep."""
    from .folder import IMAGE_EXTENSIONS, _image_problem, _utf8

    out = []
    for entry in sorted(p for p in split_dir.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir():
            out.append((str(entry), "outside any class folder"))
            continue
        for path in sorted(p for p in entry.iterdir() if not p.name.startswith(".")):
            if str(path) in kept:
                continue
            if path.is_dir():
                reason = "a sub-folder (one level of class folders is read)"
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                reason = "not an image file (.jpg/.jpeg/.png/.bmp)"
            elif not _utf8(path.name):
                reason = "its name is not valid UTF-8"
            else:
                reason = _image_problem(path) or "left out by the listing"
            out.append((os.fsencode(path).decode("utf-8", "backslashreplace"), reason))
    return out


def plan_packing(folder: Path, seed: int, shard_size: int):
    """(classes, planned shards per split, skipped files, plan id): everything a packing writes follows from it."""
    from .folder import list_image_folder

    plan, skipped, classes = {}, [], ()
    ident = hashlib.blake2b(f"{FORMAT_VERSION} {seed} {shard_size}".encode(), digest_size=16)
    for split_no, split in enumerate(("train", "val")):
        if split == "val" and not (folder / "val").is_dir():
            continue
        with skipped_to(lambda notice: None):  # every skipped file goes to skipped.txt instead
            data = list_image_folder(folder, split)
        classes = data.classes
        skipped += [(split, path, reason) for path, reason in _skipped(folder / split, set(data.files))]
        order = np.random.default_rng([seed, split_no]).permutation(len(data))
        shards, filled = [PlannedShard(split, 0, 0)], 0
        for i in order:
            path = data.files[i]
            st = os.stat(path)
            ident.update(f"{split}\0{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_mtime_ns}\0"
                         f"{data.labels[i]}\n".encode("utf-8", "surrogateescape"))
            need = _tar_bytes(st.st_size)
            if shards[-1].files and filled + need > shard_size:
                done = shards[-1]
                shards.append(PlannedShard(split, done.number + 1, done.start + len(done.files)))
                filled = 0
            shards[-1].files.append(path)
            shards[-1].labels.append(int(data.labels[i]))
            filled += need
        plan[split] = shards
    ident.update("\0".join(classes).encode())
    return classes, plan, skipped, ident.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(out: Path, shard: PlannedShard, progress=None) -> dict:
    """Write one shard and its index (atomically); its manifest entry."""
    lines: list[str] = []

    def write(fh) -> None:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for k, (path, label) in enumerate(zip(shard.files, shard.labels)):
                try:
                    image = Path(path).read_bytes()
                except OSError as exc:
                    raise DataError(f"cannot read {path} ({exc.strerror or exc}); restore it and rerun") from None
                key, ext = key_of(shard.start + k), Path(path).suffix.lower().lstrip(".")
                parts = []
                for name, payload in ((f"{key}.{ext}", image), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(payload), 0o444, 0
                    header = fh.tell()
                    tar.addfile(info, io.BytesIO(payload))
                    # a ustar header is one block, so the data starts right after it
                    assert fh.tell() == header + BLOCK + -(-len(payload) // BLOCK) * BLOCK
                    parts.append(f"{name.rsplit('.', 1)[1]} {header + BLOCK} {len(payload)} {name}")
                lines.append(" ".join(parts))
                if progress is not None:
                    progress.update(1)

    tar_path = out / shard.tar
    atomic_write(tar_path, write)
    atomic_write(out / shard.index, lambda fh: fh.write(f"v1.2 {len(lines)}\n{''.join(x + chr(10) for x in lines)}"
                                                         .encode()))
    st = tar_path.stat()
    return {"tar": shard.tar, "index": shard.index, "samples": len(shard.files), "bytes": st.st_size,
            "sha256": _sha256(tar_path), "mtime_ns": st.st_mtime_ns, "labels": shard.labels}


def _json_write(path: Path, value: dict) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(value, indent=1).encode()))


def _reusable(out: Path, entry: dict | None) -> bool:
    if not entry:
        return False
    try:
        st = (out / entry["tar"]).stat()
    except OSError:
        return False
    return st.st_size == entry["bytes"] and st.st_mtime_ns == entry["mtime_ns"] and (out / entry["index"]).is_file()


def _previous(out: Path, plan_id: str) -> dict[str, dict]:
    """Shards a previous run of this same packing recorded as written; refuses a folder holding anything else."""
    if not out.exists():
        return {}
    if not out.is_dir():
        raise DataError(f"output {out} is a file; give a folder (new or empty)")
    done: dict[str, dict] = {}
    for name in (MANIFEST, STATE):
        try:
            record = json.loads((out / name).read_text())
        except (OSError, ValueError):
            continue
        if record.get("plan_id") != plan_id:
            raise DataError(f"{out} holds shards of another packing (another image folder, --seed or --shard-size, "
                            f"or the folder changed since); give an empty folder, or delete {out} to repack")
        shards = record.get("done", {}).values() if name == STATE else [
            s for split in record.get("splits", {}).values() for s in split.get("shards", [])]
        done.update({s["tar"]: s for s in shards})
    strangers = [p.name for p in out.iterdir() if p.name not in (MANIFEST, STATE, SKIPPED) and not _OURS.match(p.name)]
    if strangers or (not done and any(_OURS.match(p.name) for p in out.iterdir() if not p.name.startswith("."))):
        what = strangers[0] if strangers else "shards with no record of their packing"
        raise DataError(f"{out} is not empty (it holds {what}); give a new or empty folder")
    return done


def pack(folder: str | Path, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0,
         progress: bool | None = None, write=None) -> dict:
    """Pack `folder` into `out` (see the module docstring); returns the summary printed by the command. `write`:
    what writes one shard (:func:`write_shard`, or a stand-in with its arguments)."""
    write = write_shard if write is None else write
    from tqdm import tqdm

    started = time.perf_counter()
    folder, out = Path(folder).expanduser().absolute(), Path(out).expanduser().absolute()
    classes, plan, skipped, plan_id = plan_packing(folder, seed, shard_size)
    done = _previous(out, plan_id)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.partial"):  # what a killed run was writing
        stale.unlink()
    state = {"plan_id": plan_id, "done": {k: v for k, v in done.items() if _reusable(out, v)}}
    total = sum(len(s.files) for shards in plan.values() for s in shards)
    reused = sum(e["samples"] for e in state["done"].values())
    bar = tqdm(total=total, initial=reused, unit="img", desc="dali-shard", disable=None if progress is None
               else not progress, file=sys.stderr)
    written = 0
    splits = {}
    with bar:
        for split, shards in plan.items():
            entries = []
            for shard in shards:
                entry = state["done"].get(shard.tar)
                if not _reusable(out, entry):
                    entry = write(out, shard, bar)
                    state["done"][shard.tar] = entry
                    _json_write(out / STATE, state)
                    written += 1
                entries.append(entry)
            splits[split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    (out / SKIPPED).write_text("".join(f"{split}\t{path}\t{reason}\n" for split, path, reason in skipped))
    from . import __name__ as package
    try:
        from importlib.metadata import version
        tool_version = version("dali-train")
    except Exception:  # noqa: BLE001  (not installed: run from a checkout)
        tool_version = "unknown"
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool": f"dali-shard ({package})",
                "tool_version": tool_version, "plan_id": plan_id, "dataset_id": plan_id, "source": str(folder),
                "seed": seed, "shard_size": shard_size, "classes": list(classes), "splits": splits,
                "skipped": len(skipped)}
    _json_write(out / MANIFEST, manifest)
    (out / STATE).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    nbytes = sum(e["bytes"] for s in splits.values() for e in s["shards"])
    return {"samples": total, "per_split": {k: v["samples"] for k, v in splits.items()},
            "shards": sum(len(s["shards"]) for s in splits.values()), "written": written, "bytes": nbytes,
            "seconds": seconds, "skipped": len(skipped), "output": str(out)}


def verify(out: str | Path) -> int:
    """Check every shard of `out` against its manifest (sha256 included) and every index; the number of shards."""
    out = Path(out).expanduser().absolute()
    manifest = read_manifest(out)
    count = 0
    for split, entry in manifest.get("splits", {}).items():
        load_shards(out, split)  # sizes, indexes, headers
        for shard in entry["shards"]:
            if _sha256(out / shard["tar"]) != shard["sha256"]:
                raise DataError(f"shard {out / shard['tar']} fails its checksum (sha256 differs from "
                                f"{out / MANIFEST}): damaged since packing; {repack_hint(out)}")
            count += 1
    return count


def _summary_line(s: dict) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in s["per_split"].items())
    rate = s["samples"] / s["seconds"] if s["seconds"] > 0 else 0.0
    reused = s["shards"] - s["written"]
    return (f"packed {s['samples']} samples ({splits}) into {s['shards']} shards"
            f"{f' ({reused} kept from an earlier run)' if reused else ''}, {s['bytes'] / 1e6:.1f} MB, in "
            f"{s['seconds']:.1f} s ({rate:.0f} images/s) -> {s['output']}; {s['skipped']} files skipped"
            f"{f' (listed in {SKIPPED})' if s['skipped'] else ''}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.argument("output", required=False, type=click.Path(path_type=Path))
@click.option("--shard-size", default="256M", show_default=True,
              help="Bytes per shard, with an optional K, M or G suffix (powers of 1024).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the one shuffle of each split's samples before they are cut into shards.")
@click.option("--verify", "verify_dir", default=None, type=click.Path(path_type=Path),
              help="Check the shards in this folder against their manifest (sha256) and index files, then exit.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def main(folder: Path | None, output: Path | None, shard_size: str, seed: int, verify_dir: Path | None,
         progress: bool | None) -> None:
    """Pack FOLDER (train/<class>/..., val/<class>/...) into tar shards with DALI index files in OUTPUT."""
    try:
        if verify_dir is not None:
            n = verify(verify_dir)
            click.echo(f"{n} shards in {verify_dir} match their manifest and index files")
            return
        if folder is None or output is None:
            raise ConfigError("give FOLDER and OUTPUT: dali-shard FOLDER OUTPUT [--shard-size 256M] [--seed 0]")
        click.echo(_summary_line(pack(folder, output, shard_size=parse_size(shard_size), seed=seed,
                                      progress=progress)))
    except DaliTrainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("\nerror: interrupted; whole shards are kept, rerun the same command to finish", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
