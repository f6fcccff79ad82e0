"""YAML option files: the one reader behind `dali-train --config` and `dali-ablate --study`.

Keys are option names (``batch-size`` or ``batch_size``); YAML 1.1 reads ``5e-2`` (no dot) as a string, which for
a float option is plainly the number it spells. Read errors are one-line ConfigErrors naming the option and file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from dali_pipes import ConfigError
from dali_pipes.strict_yaml import YamlRefused, load_yaml

from .config import TrainConfig

_FLOATS = frozenset(f.name for f in fields(TrainConfig) if f.type in ("float", "float | None"))


def read_yaml(path: str | Path, where: str) -> Any:
    """The document in `path` (None when empty); `where` ("--config FILE") starts every error."""
    try:
        return load_yaml(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror}); check the path") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not a text file (byte {e.start} is not UTF-8); give a YAML file") from None
    except YamlRefused as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None


def option_values(values: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """Option names normalized (``-`` -> ``_``) and float options given as YAML 1.1 strings made numbers; anything
    else is left for TrainConfig to validate (and name). `where` starts the error for an option given twice."""
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for given, value in values.items():
        key = str(given).replace("-", "_")
        if key in out:  # batch-size and batch_size: one option, and YAML would keep either silently
            raise ConfigError(f"{where}: option {key} is given twice (as {spelled[key]!r} and {given!r}); keep one")
        spelled[key] = given
        if key in _FLOATS and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def read_options(path: str | Path, where: str) -> dict[str, Any]:
    """A file of option values (a mapping; an empty file is no options)."""
    values = read_yaml(path, where)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of option names to values")
    return option_values(values, where)
