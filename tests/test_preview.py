"""dali-preview: the grid's tiles are the images the loaders return, on both backends."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from dali_pipes import load_source
from dali_pipes.config import resolve_augment
from training.tools.preview import preview, single_operations, subset


def test_rows_are_the_originals_and_the_draws_of_each_backend(tmp_path) -> None:
    out = tmp_path / "grid.png"
    rows = preview(dataset="synthetic", data_dir="unused", augment="standard", output=out, num_images=5, draws=2,
                   num_samples=64)
    originals = subset(load_source("synthetic", "unused", "train", num_samples=64), 5).images
    assert np.array_equal(rows[0].tiles, originals)  # normalized and back: exact
    assert [r.label for r in rows] == ["original", "DALI CPU #1", "DALI CPU #2", "torchvision #1", "torchvision #2"]
    for row in rows[1:]:
        assert row.tiles.shape == originals.shape and row.tiles.dtype == np.uint8
        assert not np.array_equal(row.tiles, originals)  # the recipe was applied
    assert not np.array_equal(rows[1].tiles, rows[2].tiles)  # draws differ
    with Image.open(out) as png:
        assert png.size[0] > 5 * 60 and png.size[1] > 5 * 60


def test_one_row_per_operation_in_the_recipes_order(tmp_path) -> None:
    recipe = {"preset": "standard+autoaugment", "affine_p": 0.3, "affine_degrees": 10, "blur_p": 0.2}
    names = [name for name, _ in single_operations(resolve_augment(recipe))]
    assert names == ["pad-crop", "flip", "affine", "colour jitter", "blur", "autoaugment", "erasing"]
    rows = preview(dataset="synthetic", data_dir="unused", augment={"preset": "weak"}, output=tmp_path / "ops.png",
                   num_images=4, draws=1, ops=True, num_samples=32)
    assert [r.label for r in rows] == ["original", "pad-crop: DALI CPU #1", "pad-crop: torchvision #1",
                                       "flip: DALI CPU #1", "flip: torchvision #1"]
    for flipped in rows[3:]:  # flip alone is always applied: exactly the mirrored originals
        assert np.array_equal(flipped.tiles, rows[0].tiles[:, :, ::-1])


def test_the_command_refuses_an_unknown_field_in_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from training.tools.preview import main; main()", "--dataset",
                           "synthetic", "--aug", "blurr_p=0.5", "--output", str(tmp_path / "x.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown field 'blurr_p'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.png").exists()


def test_shards_preview_the_same_images_as_the_folder_they_were_packed_from(tmp_path) -> None:
    # dali-preview --dataset shards: the samples are read from the tars (stdlib tarfile) and shown through the
    # folder path, whose decoding and crops the shards path shares: the originals equal the folder's, pixel for pixel.
    from click.testing import CliRunner
    from conftest import write_image_folder

    from dali_pipes.shard_cli import pack
    from training.tools.preview import command

    write_image_folder(tmp_path / "ds", classes=("a", "b"), per_class=4, shape=(40, 48), ext="jpg", seed=4)
    pack(tmp_path / "ds", tmp_path / "sh", shard_size=12 << 10, seed=0, progress=False)
    shown = {}
    for dataset, root in (("shards", tmp_path / "sh"), ("folder", tmp_path / "ds")):
        rows = preview(dataset=dataset, data_dir=str(root), augment="standard", output=tmp_path / f"{dataset}.png",
                       num_images=8, draws=1, image_size=32)
        assert [r.label for r in rows] == ["original", "DALI CPU #1", "torchvision #1"]
        shown[dataset] = rows[0].tiles
    # the same 8 images (the shards hold them in another order): compare as sets of tiles
    key = lambda tiles: sorted(t.tobytes() for t in tiles)
    assert key(shown["shards"]) == key(shown["folder"])
    result = CliRunner().invoke(command(), ["--dataset", "shards", "--data-dir", str(tmp_path / "sh"),
                                            "--image-size", "32", "--num-images", "3", "--draws", "1",
                                            "--output", str(tmp_path / "cli.png")])
    assert result.exit_code == 0 and "wrote" in result.output, result.output


def test_a_folders_crop_is_named_and_drawn_as_the_random_resized_crop_it_runs(tmp_path) -> None:
    from conftest import write_image_folder

    write_image_folder(tmp_path / "ds", classes=("a", "b"), per_class=2, shape=(20, 24), ext="png")
    ops = single_operations(resolve_augment("weak+autoaugment"), folder=True)
    assert [name for name, _ in ops] == ["random-resized crop", "flip", "autoaugment"]
    assert [recipe.crop for _, recipe in ops] == ["resized", "centre", "centre"]  # one random operation per row
    assert single_operations(resolve_augment("weak"))[0][0] == "pad-crop"  # arrays pad-crop
    rows = preview(dataset="folder", data_dir=str(tmp_path / "ds"), augment="weak", output=tmp_path / "ops.png",
                   num_images=2, draws=1, ops=True, image_size=16, backend="torchvision")
    assert [r.label for r in rows] == ["original", "random-resized crop: torchvision #1", "flip: torchvision #1"]


def test_the_recipes_name_says_the_crop_that_runs() -> None:
    from dali_pipes.config import AugmentConfig, describe_augment, resolve_crop

    recipe = {"preset": "standard", "erase_p": 0.25}
    folder, arrays = (resolve_crop(resolve_augment(recipe), folder=f) for f in (True, False))
    named = describe_augment(recipe, folder)
    assert "crop_padding" not in named and named.endswith("(random-resized crop, area 0.08-1, ratio 0.75-1.33)")
    assert "erase_p=0.25" in named
    assert describe_augment("weak", resolve_crop(resolve_augment("weak"), folder=False)) == \
        "weak (pad-crop 4 px, constant)"
    assert describe_augment(recipe, arrays).endswith("(pad-crop 4 px, constant)")
    assert describe_augment("none", resolve_crop(AugmentConfig(), folder=True)).startswith("none (resize and centre")
