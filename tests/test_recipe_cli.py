"""The whole recipe is the user's: a YAML `augment:` mapping and repeatable --aug overrides, resolved once, saved in
config.yaml, trained end to end on both backends, and refused naming the field when wrong."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from dali_pipes.config import resolve_augment
from training.cli import main
from training.config import TrainConfig

RECIPE = {"preset": "weak", "affine_p": 0.5, "affine_degrees": 15, "affine_translate": 0.1,
          "affine_scale": [0.9, 1.1], "blur_p": 0.5, "blur_kernel": 5, "blur_sigma": [0.1, 2.0]}
TINY = ["--dataset", "synthetic", "--model", "resnet20", "--epochs", "1", "--num-samples", "96", "--batch-size",
        "32", "--device", "cpu", "--num-threads", "1", "--no-amp"]


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dali", "torchvision"])
def test_a_yaml_recipe_with_affine_and_blur_trains_and_is_saved_resolved(tmp_path, backend: str) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"augment": RECIPE, "backend": backend}))
    code, text = invoke(["--config", str(config), *TINY, "--aug", "erase_p=0.25", "--output", str(tmp_path / "run")])
    assert code == 0, text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    expected = resolve_augment({**RECIPE, "erase_p": 0.25})
    assert "preset" not in saved["augment"]  # every field spelled out: the saved recipe is what resume runs
    assert resolve_augment(saved["augment"], mean=expected.mean, std=expected.std) == expected
    assert TrainConfig.from_dict(saved).augment == saved["augment"]
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.slow
def test_overrides_apply_to_a_preset_given_on_the_command_line(tmp_path) -> None:
    code, text = invoke([*TINY, "--epochs", "1", "--augment", "standard+autoaugment", "--aug", "blur_p=0.2",
                         "--aug", "affine-scale=[0.8, 1.2]", "--aug", "affine_p=1", "--output", str(tmp_path / "r")])
    assert code == 0, text
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["augment"]
    assert saved["policy"] == "autoaugment" and saved["brightness"] == 0.2  # the preset's fields stay
    assert saved["blur_p"] == 0.2 and saved["affine_scale"] == [0.8, 1.2] and saved["affine_p"] == 1


@pytest.mark.parametrize("args, words", [
    (["--aug", "blurr_p=0.5"], "unknown field 'blurr_p'"),
    (["--aug", "blur_p"], "expected FIELD=VALUE"),
    (["--aug", "blur_p=2"], "augment.blur_p=2 is invalid"),
    (["--aug", "blur_kernel=4"], "odd integer"),
    (["--aug", "affine_scale=[1.2, 0.9]"], "affine_scale"),
])
def test_bad_overrides_are_refused_naming_the_field(tmp_path, args: list[str], words: str) -> None:
    code, text = invoke([*TINY, *args, "--output", str(tmp_path / "never")])
    assert code == 2 and words in text and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "never").exists()


def test_a_yaml_recipe_with_an_unknown_field_is_refused(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"augment": {"preset": "weak", "blur": 0.5}}))
    code, text = invoke(["--config", str(config), *TINY, "--output", str(tmp_path / "never")])
    assert code == 2 and "unknown field(s) blur" in text, text


def test_image_folders_train_at_the_size_asked_and_cifar_stems_are_refused_when_large(tmp_path) -> None:
    from conftest import write_image_folder

    write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4, shape=(40, 48), ext="jpg")
    folder = ["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
              "--device", "cpu", "--num-threads", "1", "--no-amp"]
    code, text = invoke([*folder, "--output", str(tmp_path / "big")])  # resnet18 (CIFAR stem) at 224 px
    assert code == 2 and "CIFAR stem" in text and "tv_resnet18" in text, text
    assert not (tmp_path / "big").exists()
    code, text = invoke([*folder, "--model", "tv_resnet18", "--image-size", "48", "--output", str(tmp_path / "r")])
    assert code == 0, text
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["image_size"] == 48
