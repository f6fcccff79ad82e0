"""Models from timm and torchvision by name, and --pretrained weights from a local file: built without a download,
trained, resumed exactly and evaluated through the same paths as this project's own models."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import write_image_folder
from helpers import StopAfter
from safetensors.torch import save_file

from dali_pipes import ConfigError, DataError
from training import loop as run_mod
from training.cli import eval_main, main
from training.config import TrainConfig
from training.loop.checkpoint import load_checkpoint
from training.recipe.models import DropPath, create_model
from training.choices import model_spec
from training.recipe.pretrained import classifier_name, load_pretrained

# Two small timm models of different families (plain ResNet; inverted residuals with SE and hard-swish).
TIMM_MODELS = ("resnet10t", "mobilenetv3_small_050")
SIDE = 64


def _images(n: int = 2, side: int = SIDE) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_a_timm_model_builds_by_name_with_the_recipes_drop_path(name: str) -> None:
    model = create_model(name, num_classes=3, drop_path=0.1)
    assert model.__class__.__module__.startswith("timm.")
    assert model.get_classifier().out_features == 3
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and 0.05 < max(rates) <= 0.1 + 1e-12  # timm's rules, linear in depth up to --drop-path
    assert not any(m.drop_prob for m in create_model(name, num_classes=3).modules() if type(m).__name__ == "DropPath")
    assert create_model(name, num_classes=3).eval()(_images()).shape == (2, 3)


def test_timm_and_torchvision_models_take_any_size_cifar_stems_stay_refused() -> None:
    assert create_model("resnet10t", num_classes=3, image_size=224).eval()(_images(1, 96)).shape == (1, 3)
    assert create_model("tv_mobilenet_v3_small", num_classes=3, image_size=224) is not None
    with pytest.raises(ConfigError, match="CIFAR stem"):
        create_model("resnet20", image_size=224)


@pytest.mark.parametrize("side", [32, 64])
def test_a_vit_is_built_for_the_image_size_it_is_given(side: int) -> None:
    # timm sizes a ViT's position embeddings for img_size (224 by default); built without it, 32 px fails to run
    with pytest.raises(AssertionError, match=f"Input height \\({side}\\) doesn't match model \\(224\\)"):
        timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()(_images(1, side))
    model = create_model("vit_tiny_patch16_224", num_classes=3, drop_path=0.1, image_size=side).eval()
    assert model.patch_embed.img_size == (side, side)
    assert model.pos_embed.shape[1] == 1 + (side // 16) ** 2  # the class token and one per 16x16 patch
    with torch.inference_mode():
        assert model(_images(2, side)).shape == (2, 3)
    # at its own size, and with no size known (a bare create_model), it is timm's model as timm defines it
    for size in (224, None):
        assert create_model("vit_tiny_patch16_224", num_classes=3, image_size=size).patch_embed.img_size == (224, 224)


def test_a_torchvision_model_builds_by_name_and_the_old_names_are_unchanged() -> None:
    model = create_model("tv_mobilenet_v3_small", num_classes=3, drop_path=0.0)
    assert model.__class__.__module__.startswith("torchvision.models")
    assert model.eval()(_images()).shape == (2, 3)
    assert model_spec("tv_mobilenet_v3_small", 3)["source"] == "torchvision"
    with pytest.raises(ConfigError, match=r"^--model tv_resnet34: torchvision's resnet34 has no stochastic depth; "
                                          r"use --drop-path 0$"):
        create_model("tv_resnet34", drop_path=0.1)
    # this project's names still win over timm's and torchvision's: its own modules, its DropPath
    for name in ("resnet18", "tv_resnet18", "resnet20", "resnet50"):
        assert model_spec(name, 10)["source"] == "dali-train"
        assert any(isinstance(m, DropPath) for m in create_model(name, drop_path=0.1).modules())


def test_an_unknown_model_name_is_one_line_exit_2_naming_where_names_are(tmp_path) -> None:
    result = CliRunner().invoke(main, ["--model", "resnet10x", "--dataset", "synthetic", "--output",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model 'resnet10x' is unknown"), result.output
    assert "timm.list_models" in lines[0] and "tv.models.list_models" in lines[0]
    assert not (tmp_path / "run").exists()


# --pretrained


def _file_with(tmp_path: Path, state, name: str = "w.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd}, lambda sd: {"model": sd}])
def test_pretrained_with_another_class_count_replaces_the_head_and_says_so(tmp_path, wrap) -> None:
    source = create_model("resnet10t", num_classes=5)
    path = _file_with(tmp_path, wrap(source.state_dict()))
    torch.manual_seed(1)
    model = create_model("resnet10t", num_classes=3)
    fresh_head = model.fc.weight.detach().clone()
    note = load_pretrained(model, path, 3)
    assert note == (f"note: --pretrained {path}: classifier head fc replaced (5 classes in the file, 3 here), "
                    "randomly initialised; every other layer loaded")
    assert torch.equal(model.fc.weight, fresh_head)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)  # the stem came from the file


def test_pretrained_of_the_same_class_count_loads_whole_from_safetensors(tmp_path) -> None:
    source = create_model("mobilenetv3_small_050", num_classes=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("mobilenetv3_small_050", num_classes=3)
    assert classifier_name(model, 3) == "classifier"
    assert load_pretrained(model, path, 3) is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_pretrained_refuses_missing_corrupt_unsafe_and_foreign_files_in_one_line(tmp_path) -> None:
    model = create_model("resnet10t", num_classes=3)
    with pytest.raises(ConfigError, match=r"^--pretrained .*nope.pth: no such file; .*nothing is downloaded"):
        load_pretrained(model, tmp_path / "nope.pth", 3)
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with open(tmp_path / "code.pth", "wb") as f:
        pickle.dump({"fc.weight": Path("/")}, f, protocol=2)  # an arbitrary class: loading it would run code
    for name in ("bad.pth", "bad.safetensors", "code.pth"):
        with pytest.raises(DataError, match=r"^--pretrained .*: not a readable weights file") as e:
            load_pretrained(model, tmp_path / name, 3)
        assert "\n" not in str(e.value)
    path = _file_with(tmp_path, create_model("resnet20", num_classes=3).state_dict(), "other.pth")
    with pytest.raises(DataError, match=r"do not fit this --model .*same architecture$"):
        load_pretrained(model, path, 3)
    with pytest.raises(DataError, match="holds no state dict"):
        load_pretrained(model, _file_with(tmp_path, {"epoch": 3}, "empty.pth"), 3)


def test_cli_pretrained_missing_file_is_one_line_exit_2_before_a_run_directory(tmp_path) -> None:
    result = CliRunner().invoke(main, ["--model", "resnet10t", "--dataset", "synthetic", "--num-samples", "8",
                                       "--pretrained", str(tmp_path / "nope.pth"), "--device", "cpu",
                                       "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    expected = (f"error: --pretrained {tmp_path / 'nope.pth'}: no such file; give a local .safetensors or .pth/.pt "
                "state dict (nothing is downloaded)")
    assert result.output.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()


# Training, resuming and evaluating a timm model on a 64-px image folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "data"
    write_image_folder(root, classes=("a", "b"), per_class=8, shape=(72, 80), ext="png")
    return root


def _cfg(folder: Path, out: Path, name: str, **changes) -> TrainConfig:
    return TrainConfig(dataset="folder", data_dir=str(folder), model=name, image_size=SIDE, epochs=2, batch_size=4,
                       augment="standard", mixup_alpha=0.2, cutmix_alpha=1.0, drop_path=0.1, num_threads=2,
                       patience=0, device="cpu", channels_last=False, tensorboard=False, output=str(out)
                       ).replace(**changes)


@pytest.mark.slow  # trains three short runs
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_a_timm_model_trains_resumes_exactly_and_dali_eval_rebuilds_it(folder, tmp_path, name: str) -> None:
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    summary = run_mod.fit(_cfg(folder, straight, name), log=lambda *_: None)
    with pytest.raises(run_mod.Interrupted):
        run_mod.fit(_cfg(folder, out, name), log=lambda *_: None, stop=StopAfter(3))  # mid-epoch 1 of 4 steps
    assert load_checkpoint(out / "last.pth")["batch"] == 3
    run_mod.resume(out, log=lambda *_: None)
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(out / "last.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["model_spec"] == {"name": name, "source": "timm", "version": timm.__version__, "num_classes": 2}
    # dali-eval rebuilds the timm model from the checkpoint alone and measures what the run measured
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(straight), "--device", "cpu", "--batch-size", "4",
                                            "--num-threads", "2"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output.strip().splitlines()[-1])
    assert measured["val_images"] == 16
    assert measured["val_acc"] == pytest.approx(summary["best_reloaded_val_acc"], abs=1e-6)


@pytest.mark.slow  # trains one short run
def test_fit_starts_from_pretrained_weights_prints_the_head_note_and_a_resume_does_not_reread_them(
        folder, tmp_path) -> None:
    source = create_model("resnet10t", num_classes=10)
    weights = _file_with(tmp_path, source.state_dict())
    lines: list[str] = []
    out = tmp_path / "run"
    cfg = _cfg(folder, out, "resnet10t", pretrained=str(weights), epochs=1, drop_path=0.0)
    with pytest.raises(run_mod.Interrupted):
        run_mod.fit(cfg, log=lines.append, stop=StopAfter(1))  # stops after one step: weights moved by one step
    assert f"note: --pretrained {weights}: classifier head fc replaced (10 classes in the file, 2 here), randomly " \
           "initialised; every other layer loaded" in lines
    state = load_checkpoint(out / "last.pth")
    assert state["config"]["pretrained"] == str(weights)
    # one step away from the file's stem, where a fresh init would be as far away as the weights are large
    start = source.conv1[0].weight.detach()
    moved = (state["model"]["conv1.0.weight"] - start).norm()
    assert 0 < moved < 0.3 * start.norm()
    weights.unlink()  # a resume continues from last.pth: the pretrained file is not needed any more
    lines.clear()
    run_mod.resume(out, log=lines.append)
    assert not any("--pretrained" in line for line in lines)
