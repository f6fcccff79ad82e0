"""dali-ablate's studies: the built-in ones, YAML study files (arms of option changes, the first the baseline),
and each arm's validated TrainConfig."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dali_pipes import ConfigError

from ..config import TrainConfig
from ..options import option_values, read_yaml

_D = TrainConfig()
ARM_NAME = re.compile(r"^[A-Za-z0-9+][A-Za-z0-9._+=-]*$")
MANAGED = ("seed", "output")  # set by dali-ablate for every run


def _base_or_default(base: TrainConfig, name: str) -> Any:
    """The base config's value of an option an arm switches on, or dali-train's default where the base has it off."""
    value = getattr(base, name)
    return value if value else getattr(_D, name)


def _augment_strength(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {name: {"augment": name} for name in ("none", "weak", "strong")}


def _mixing(base: TrainConfig) -> dict[str, dict[str, Any]]:
    mixup, cutmix = _base_or_default(base, "mixup_alpha"), _base_or_default(base, "cutmix_alpha")
    prob = {"mix_prob": _base_or_default(base, "mix_prob")}
    return {"none": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
            "mixup": {"mixup_alpha": mixup, "cutmix_alpha": 0.0, **prob},
            "cutmix": {"mixup_alpha": 0.0, "cutmix_alpha": cutmix, **prob},
            "both": {"mixup_alpha": mixup, "cutmix_alpha": cutmix, **prob}}


def _label_smoothing(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {f"ls-{eps:g}": {"label_smoothing": eps} for eps in (0.0, 0.05, 0.1, 0.2)}


def _precision(base: TrainConfig) -> dict[str, dict[str, Any]]:
    return {"fp32": {"amp": False},
            "fp16": {"amp": True, "amp_dtype": "float16"},
            "bf16": {"amp": True, "amp_dtype": "bfloat16"}}


def _recipe(base: TrainConfig) -> dict[str, dict[str, Any]]:
    """The seed chapter's exercise 6: a plain baseline, then one technique added at a time up to the full recipe."""
    steps = [
        ("baseline", {"augment": "weak", "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0,
                      "drop_path": 0.0, "amp": False}),
        ("+autoaugment", {"augment": "weak+autoaugment"}),
        ("+mixup-cutmix", {"mixup_alpha": _base_or_default(base, "mixup_alpha"),
                           "cutmix_alpha": _base_or_default(base, "cutmix_alpha"),
                           "mix_prob": _base_or_default(base, "mix_prob")}),
        ("+label-smoothing", {"label_smoothing": _base_or_default(base, "label_smoothing")}),
        ("+drop-path", {"drop_path": _base_or_default(base, "drop_path")}),
        ("+amp", {"amp": True}),  # the full recipe; the autocast dtype is the base's (bfloat16 on the CPU)
    ]
    arms: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for name, step in steps:
        changes = {**changes, **step}
        arms[name] = changes
    return arms


STUDIES: dict[str, tuple[Callable[[TrainConfig], dict[str, dict[str, Any]]], str]] = {
    "augment-strength": (_augment_strength, "augment none / weak / strong"),
    "mixing": (_mixing, "no mixing / Mixup / CutMix / both"),
    "label-smoothing": (_label_smoothing, "label smoothing 0 / 0.05 / 0.1 / 0.2"),
    "precision": (_precision, "fp32 / fp16 / bf16 autocast (fp16 is skipped on the CPU)"),
    "recipe": (_recipe, ("plain crop+flip baseline, then +autoaugment, +mixup/cutmix, +label smoothing, "
                         "+drop path, +AMP (the full recipe)")),
}


@dataclass(frozen=True)
class Study:
    name: str
    source: str  # "built-in" or the YAML file's path
    arms: dict[str, dict[str, Any]]  # arm -> the options it changes; the first arm is the baseline


def load_study(spec: str, base: TrainConfig) -> Study:
    if spec in STUDIES:
        return Study(spec, "built-in", STUDIES[spec][0](base))
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.exists():
        return _study_file(path)
    raise ConfigError(f"--study {spec!r}: unknown study; choose one of {', '.join(STUDIES)}, or give a YAML file "
                      "(arms: {name: {option: value, ...}, ...})")


def _study_file(path: Path) -> Study:
    where = f"--study {path}"
    doc = read_yaml(path, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("arms"), dict) or not doc["arms"]:
        raise ConfigError(f"{where}: expected a mapping with 'arms: {{name: {{option: value, ...}}, ...}}' "
                          "(the first arm is the baseline)")
    extra = sorted(str(k) for k in doc if k not in ("arms", "description"))
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(extra)}; expected arms (and description)")
    known = {f.name for f in fields(TrainConfig)}
    arms: dict[str, dict[str, Any]] = {}
    for name, options in doc["arms"].items():
        name = str(name)
        if not ARM_NAME.match(name):
            raise ConfigError(f"{where}: arm name {name!r} is not usable as a directory name; use letters, digits "
                              "and . _ + = -")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: arm {name!r}: expected a mapping of option names to values")
        options = option_values(options, f"{where}: arm {name!r}")
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"{where}: arm {name!r}: unknown option(s) {', '.join(unknown)}")
        managed = sorted(set(options) & set(MANAGED))
        if managed:
            raise ConfigError(f"{where}: arm {name!r}: {', '.join(managed)} is set by dali-ablate for every run "
                              "(--seed is the base seed, --output the study directory); remove it from the arm")
        arms[name] = options
    return Study(path.stem, str(path), arms)


def arm_configs(study: Study, base: TrainConfig) -> dict[str, TrainConfig]:
    """Every arm's TrainConfig (base options, then the arm's changes), validated before anything runs."""
    configs = {}
    for name, changes in study.arms.items():
        try:
            configs[name] = base.replace(**changes)
        except ConfigError as e:
            raise ConfigError(f"study {study.name}: arm {name!r}: {e}") from None
    return configs


def skip_reason(changes: dict[str, Any], cfg: TrainConfig, device_type: str) -> str | None:
    """Why an arm cannot run as named here, or None. An arm that asks for float16 autocast on the CPU would run
    bfloat16 (dali-train's CPU fallback) and be mislabelled, so it is skipped instead."""
    if device_type == "cpu" and cfg.amp and changes.get("amp_dtype") == "float16":
        return ("float16 autocast needs a CUDA device; on the CPU dali-train would run bfloat16 instead, "
                "so this arm is not run here")
    return None
