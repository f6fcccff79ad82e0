"""`dali-preview`: look at a recipe. The same images un-augmented, then several draws of the recipe through the DALI
graph and through the torchvision reference, as one labelled PNG grid; with ``--ops``, one row per single operation
of the recipe on both backends (the seed chapter's visual table).

Tiles are exactly what the loaders return (float, normalized), mapped back to uint8 with the recipe's mean/std.
"""

from __future__ import annotations

from dataclasses import replace
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dali_pipes import BACKENDS, AugmentConfig, ConfigError, DaliTrainError, Loader, load_source
from dali_pipes.config import describe_augment, eval_config, resolve_augment, resolve_crop
from dali_pipes.loader import FOLDER_IMAGE_SIZE, dataset_stats, resolve_device
from dali_pipes.shards import ShardDataset, TarSamples
from dali_pipes.sources import ArrayDataset, FolderDataset

from ..outputs import Row, to_uint8, write_grid

# What the grid can be written as (matplotlib's writers that need nothing beyond Pillow); a name without an
# extension gets .png, which is what matplotlib would write anyway, and the message says so.
GRID_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg")
PREVIEW_BACKENDS = ("both", *BACKENDS)  # both: DALI's draws and the reference's, one after the other
DALI_DEVICES = ("cpu", "cuda")  # where DALI runs its graph (the batch contract's devices)


def grid_path(output: str | Path) -> Path:
    """The file the grid will be written to, checked before any image is drawn: `output` with ``~`` expanded and
    .png added when it has no extension; ConfigError (naming --output) for another extension or a folder that
    cannot be made or written."""
    path = Path(output).expanduser()
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        path = path.with_name(path.name + ".png")
    elif suffix not in GRID_FORMATS:
        raise ConfigError(f"--output {output}: cannot write a grid as '.{suffix}'; give a name ending in "
                          f"{', '.join('.' + f for f in GRID_FORMATS)}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {output}: cannot create its folder {folder} ({e.strerror}); give a path in a "
                          "writable folder") from None
    if os.path.isdir(path):  # False, not an error, for a name the file system refuses: the write says why
        raise ConfigError(f"--output {output}: is a folder; give a file name ending in .png")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output {output}: the folder {folder} is not writable; give a path in a writable "
                          "folder")
    return path


def subset(data: ArrayDataset | FolderDataset | ShardDataset, count: int,
           scratch: Path | None = None) -> ArrayDataset | FolderDataset:
    """The first `count` samples (spread over the classes where the dataset is sorted by class). Samples of tar
    shards are copied out (their encoded bytes, as packed) into `scratch` and previewed as a folder: the shards
    path decodes and crops exactly as the folder path does."""
    if count < 1:
        raise ConfigError(f"--num-images={count} is invalid: expected an integer >= 1")
    pick = np.linspace(0, len(data) - 1, num=min(count, len(data))).round().astype(np.int64)
    if isinstance(data, ShardDataset):
        if scratch is None:
            raise ValueError("subset() of tar shards needs a scratch folder")
        reader, files = TarSamples(data), []
        for i in pick:
            image, _ = reader.read(int(i))
            path = Path(scratch) / os.path.basename(data.image_name(int(i)))
            path.write_bytes(image)
            files.append(str(path))
        return FolderDataset(data.name, str(scratch), tuple(files), data.labels[pick], data.classes)
    if isinstance(data, FolderDataset):
        return FolderDataset(data.name, data.root, tuple(data.files[i] for i in pick), data.labels[pick],
                             data.classes)
    return ArrayDataset(data.name, np.ascontiguousarray(data.images[pick]), data.labels[pick], data.classes)


def draw(data, cfg: AugmentConfig, *, backend: str, device: torch.device, size: tuple[int, int], epoch: int,
         seed: int = 0) -> np.ndarray:
    """One pass of `cfg` over every sample of `data` (epoch `epoch`'s draws), returned in dataset order."""
    loader = Loader(data, train=True, cfg=cfg, backend=backend, device=device, batch_size=len(data), seed=seed,
                    shard_id=0, num_shards=1, drop_last=False, return_index=True, num_threads=1, num_workers=0,
                    size=size)
    loader.set_epoch(epoch)
    images, _, index = next(iter(loader))
    return to_uint8(images[torch.argsort(index.cpu())], cfg)


def single_operations(cfg: AugmentConfig, *, folder: bool = False) -> list[tuple[str, AugmentConfig]]:
    """Each operation of the recipe alone (always applied where it has a probability), in the recipe's order, with
    the crop the recipe resolves to on this kind of dataset (`folder`: an image folder's random-resized crop, not
    the pad-crop its preset names) and, in every other row, the evaluation crop."""
    cfg = resolve_crop(cfg, folder=folder)
    plain = resolve_crop(eval_config(cfg), folder=folder)  # the crop fixed: no policy row turns it random
    ops = []
    if cfg.crop == "resized":
        ops.append(("random-resized crop", replace(plain, crop="resized", rrc_scale=cfg.rrc_scale,
                                                   rrc_ratio=cfg.rrc_ratio)))
    elif cfg.crop_padding > 0:
        ops.append(("pad-crop", replace(plain, crop_padding=cfg.crop_padding, pad_mode=cfg.pad_mode,
                                        pad_fill=cfg.pad_fill)))
    if cfg.flip_p > 0:
        ops.append(("flip", replace(plain, flip_p=1.0)))
    if cfg.rotation > 0:
        ops.append(("rotation", replace(plain, rotation=cfg.rotation, pad_fill=cfg.pad_fill)))
    if cfg.has_affine:
        ops.append(("affine", replace(plain, affine_p=1.0, affine_degrees=cfg.affine_degrees,
                                      affine_translate=cfg.affine_translate, affine_scale=cfg.affine_scale,
                                      affine_shear=cfg.affine_shear, pad_fill=cfg.pad_fill)))
    if cfg.has_color_jitter:
        ops.append(("colour jitter", replace(plain, brightness=cfg.brightness, contrast=cfg.contrast,
                                             saturation=cfg.saturation, hue=cfg.hue)))
    if cfg.has_blur:
        ops.append(("blur", replace(plain, blur_p=1.0, blur_kernel=cfg.blur_kernel, blur_sigma=cfg.blur_sigma)))
    if cfg.policy != "none":
        ops.append((cfg.policy, replace(plain, policy=cfg.policy, randaugment_n=cfg.randaugment_n,
                                        randaugment_m=cfg.randaugment_m)))
    if cfg.erase_p > 0:
        ops.append(("erasing", replace(plain, erase_p=1.0, erase_scale=cfg.erase_scale, erase_ratio=cfg.erase_ratio,
                                       erase_value=cfg.erase_value)))
    return ops


def preview_rows(data, cfg: AugmentConfig, *, backends: tuple[str, ...], device: torch.device,
                 size: tuple[int, int], draws: int, ops: bool) -> list[Row]:
    """The grid's rows: the originals, then `draws` draws of the recipe per backend (or of each operation)."""
    rows = [Row("original", draw(data, eval_config(cfg), backend="torchvision", device=torch.device("cpu"),
                                 size=size, epoch=0))]
    recipes = single_operations(cfg, folder=isinstance(data, FolderDataset)) if ops else [("recipe", cfg)]
    for name, recipe in recipes:
        for backend in backends:
            label = "DALI " + ("GPU" if device.type == "cuda" else "CPU") if backend == "dali" else "torchvision"
            for k in range(draws):
                tiles = draw(data, recipe, backend=backend, device=device if backend == "dali" else
                             torch.device("cpu"), size=size, epoch=k)
                rows.append(Row(f"{name}: {label} #{k + 1}" if name != "recipe" else f"{label} #{k + 1}", tiles))
    return rows


def preview(*, dataset: str, data_dir: str, augment, output: Path, backend: str = "both", device: str = "cpu",
            num_images: int = 8, draws: int = 3, ops: bool = False, image_size: int | None = None,
            num_samples: int = 512, split: str = "train") -> list[Row]:
    """Build the rows and write the grid to :func:`grid_path` of `output`; returns the rows (what the tiles are
    made of)."""
    path = grid_path(output)
    dev = resolve_device(device)
    mean, std = dataset_stats(dataset)
    cfg = resolve_augment(augment, mean=mean, std=std)
    with tempfile.TemporaryDirectory(prefix="dali-preview-") as scratch:  # shards' samples, copied out
        data = subset(load_source(dataset, data_dir, split, num_samples=num_samples), num_images, Path(scratch))
        side = image_size or FOLDER_IMAGE_SIZE  # folders: the loader's default crop side unless given
        size = (side, side) if isinstance(data, FolderDataset) else tuple(data.images.shape[1:3])
        backends = BACKENDS if backend == "both" else (backend,)
        rows = preview_rows(data, cfg, backends=backends, device=dev, size=size, draws=draws, ops=ops)
    name = describe_augment(augment, resolve_crop(cfg, folder=isinstance(data, FolderDataset)))  # the crop that ran
    try:
        write_grid(rows, path, f"{dataset}: {name}" + (" — one operation per row" if ops else ""))
    except OSError as e:
        raise DaliTrainError(f"--output {path}: cannot write the grid ({e.strerror or e}); give a path in a "
                             "writable folder with free space") from None
    return rows


def command():
    """The `dali-preview` click command."""
    import click

    from dali_pipes import DATASETS
    from dali_pipes.config import parse_override

    from ..cli import _run_guarded

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
    @click.option("--dataset", type=click.Choice(DATASETS), default="cifar10")
    @click.option("--data-dir", default="./data")
    @click.option("--augment", default="weak+autoaugment", help="Preset, optionally +policy.")
    @click.option("--aug", "overrides", multiple=True, metavar="FIELD=VALUE",
                  help="Override one recipe field (repeatable), e.g. --aug blur_p=0.5.")
    @click.option("--backend", type=click.Choice(PREVIEW_BACKENDS), default="both")
    @click.option("--device", type=click.Choice(DALI_DEVICES), default="cpu", help="Where DALI runs.")
    @click.option("--num-images", type=click.IntRange(1, 32), default=8)
    @click.option("--draws", type=click.IntRange(1, 8), default=3, help="Draws per backend.")
    @click.option("--ops/--no-ops", default=False, help="One row per single operation of the recipe.")
    @click.option("--image-size", type=click.IntRange(8, 1024), default=None,
                  help="Folder datasets only [default: the loader's, 224].")
    @click.option("--output", default="augment_preview.png",
                  help=f"The grid's file: {', '.join('.' + f for f in GRID_FORMATS)} (none: .png is added).")
    def preview_command(dataset, data_dir, augment, overrides, backend, device, num_images, draws, ops,
                        image_size, output) -> None:
        """Write a PNG grid of a recipe: the same images un-augmented and augmented on both backends."""

        def work() -> None:
            recipe = {"preset": augment, **dict(parse_override(o) for o in overrides)} if overrides else augment
            path = grid_path(output)  # what preview writes to: the name it was given may lack ".png"
            rows = preview(dataset=dataset, data_dir=data_dir, augment=recipe, output=path, backend=backend,
                           device=device, num_images=num_images, draws=draws, ops=ops, image_size=image_size)
            click.echo(f"wrote {path}: {len(rows)} rows x {rows[0].tiles.shape[0]} images")

        _run_guarded(work)

    return preview_command


def main() -> None:
    command()()
