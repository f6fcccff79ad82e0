"""The augmentation recipe: presets match DESIGN.md, bad values are refused at build time, naming the field."""

from __future__ import annotations

import pytest

from dali_pipes import PRESETS, AugmentConfig, ConfigError, resolve_augment
from dali_pipes.config import CIFAR10_MEAN, eval_config


def test_presets_follow_the_design() -> None:
    none, weak, standard, strong = (resolve_augment(p) for p in ("none", "weak", "standard", "strong"))
    assert none == AugmentConfig()
    assert (weak.crop_padding, weak.flip_p, weak.has_color_jitter, weak.erase_p) == (4, 0.5, False, 0.0)
    assert (standard.brightness, standard.contrast, standard.saturation, standard.hue) == (0.2, 0.2, 0.2, 0.1)
    assert (standard.erase_p, standard.erase_scale, standard.crop_padding) == (0.5, (0.02, 0.33), 4)
    assert (strong.brightness, strong.hue, strong.rotation, strong.erase_p) == (0.4, 0.2, 15.0, 0.5)
    assert none.mean == CIFAR10_MEAN and set(PRESETS) == {"none", "weak", "standard", "strong"}


def test_policy_combines_with_a_preset_and_dataset_stats_apply() -> None:
    cfg = resolve_augment("weak+randaugment", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert cfg.policy == "randaugment" and cfg.crop_padding == 4 and cfg.mean == (0.5, 0.5, 0.5)
    assert eval_config(cfg) == AugmentConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_round_trip_through_a_plain_dict() -> None:
    cfg = resolve_augment("strong+autoaugment")
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.to_dict()["erase_scale"], list)


@pytest.mark.parametrize("field, value", [
    ("flip_p", 1.5), ("flip_p", -0.1), ("erase_p", 2), ("brightness", -0.2), ("hue", 0.6), ("rotation", 200),
    ("crop_padding", -1), ("crop_padding", 2.5), ("pad_fill", 300), ("pad_mode", "wrap"), ("policy", "autoaug"),
    ("randaugment_m", 31), ("randaugment_n", 0), ("erase_scale", (0.5, 0.1)), ("erase_scale", (0.1,)),
    ("erase_ratio", (0.0, 1.0)), ("mean", (0.5, 0.5)), ("std", (0.2, 0.0, 0.2)), ("contrast", float("nan")),
    ("saturation", True), ("erase_scale", 0.3),
])
def test_invalid_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"augment\.{field}="):
        AugmentConfig(**{field: value})


@pytest.mark.parametrize("name", ["medium", "weak+cutout", 3])
def test_unknown_preset_is_refused(name: object) -> None:
    with pytest.raises(ConfigError, match=r"augment(=|\.policy=)"):
        resolve_augment(name)  # type: ignore[arg-type]


def test_unknown_field_in_a_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown field.*flip_prob"):
        AugmentConfig.from_dict({"flip_prob": 0.5})


def test_config_is_frozen() -> None:
    cfg = AugmentConfig()
    with pytest.raises(AttributeError):
        cfg.flip_p = 0.5  # type: ignore[misc]


def test_the_default_warmup_scales_with_the_schedule_and_a_given_one_is_kept(tmp_path) -> None:
    from click.testing import CliRunner

    from training.cli import _config_file, main
    from training.config import TrainConfig, default_warmup_epochs

    assert TrainConfig().warmup_epochs == 5.0  # the 100-epoch recipe
    assert TrainConfig(epochs=15).warmup_epochs == 0.75  # 5% of a short run, not a third of it
    assert TrainConfig(epochs=200).warmup_epochs == 5.0  # at most 5 epochs
    assert TrainConfig(epochs=15, warmup_epochs=5.0).warmup_epochs == 5.0  # a value given is used as is
    assert TrainConfig(epochs=15, warmup_epochs=0.0).warmup_epochs == 0.0
    assert [default_warmup_epochs(e) for e in (1, 20, 60)] == [0.05, 1.0, 3.0]
    # resolved once: config.yaml (and a resume that extends the run) hold the number the run used
    assert TrainConfig.from_dict(TrainConfig(epochs=15).to_dict()).replace(epochs=40).warmup_epochs == 0.75
    # the CLI leaves it to the config unless given (its --help says the rule); a YAML "5e-1" is the number
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("warmup_epochs: 5e-1\n")
    assert _config_file(str(cfg_file))["warmup_epochs"] == 0.5
    result = CliRunner().invoke(main, ["--help"])
    assert "5% of --epochs, at most 5" in " ".join(result.output.split()), result.output
