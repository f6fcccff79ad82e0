"""Whether the CUDA builds of this environment fit together: DALI's (the installed ``nvidia-dali-cudaNNN``
distribution), torch's (``torch.version.cuda``) and the NVIDIA driver's. When they do not, one line names what is
installed and the command that fixes it.

:func:`dali_pipes.loader.resolve_device` asks :func:`check` whenever a run would use CUDA, and when torch is a CUDA
build that sees no device while an NVIDIA driver is loaded (a driver too old for torch's CUDA hides the GPUs that
way). A CPU-only run costs nothing: ``--device cpu`` never asks, and "auto" on a machine without an NVIDIA driver
pays one stat. A CPU build of torch never fails the check.

:func:`misfit` is the rule, a function of the versions alone; :func:`installed` reads them from this environment.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

# DALI's builds on PyPI, by the CUDA major they are built for.
DALI_BUILDS = {"nvidia-dali-cuda120": 12, "nvidia-dali-cuda130": 13}
# The oldest driver branch each CUDA major runs on (CUDA's minor-version compatibility within a major).
MIN_DRIVER = {12: 525, 13: 580}
# The project's install of each CUDA major (pyproject.toml's extras, held to the pinned stack; README "Quickstart").
INSTALL = {13: 'pip install -c requirements/stack.txt ".[cuda13]"',
           12: 'pip install -c requirements/stack-cuda12.txt ".[cuda12]"'}
# The kernel module's version file: present wherever an NVIDIA driver is loaded, in containers too (/proc).
DRIVER_FILE = "/proc/driver/nvidia/version"


def _major(cuda: str) -> int:
    return int(cuda.split(".")[0])


def driver_major(driver: str | None, driver_cuda: int | None) -> int | None:
    """The newest CUDA major the driver runs: from NVML's CUDA version (12040 -> 12) where known, else from the
    driver's branch (575.x -> 12); None where neither is known."""
    if driver_cuda:
        return driver_cuda // 1000
    m = re.match(r"(\d+)\.", driver or "")
    if not m:
        return None
    fits = [major for major, branch in MIN_DRIVER.items() if int(m.group(1)) >= branch]
    return max(fits) if fits else 11


def _fix(target: int | None, remove: list[str]) -> str:
    if target is None:
        return f"update the NVIDIA driver to >= {MIN_DRIVER[min(MIN_DRIVER)]}"
    return (f"pip uninstall -y {' '.join(remove)} && " if remove else "") + INSTALL[target]


def misfit(*, dali: dict[str, str], torch_version: str, torch_cuda: str | None, driver: str | None = None,
           driver_cuda: int | None = None) -> str | None:
    """One line saying why the CUDA builds do not fit, with the command that fixes it; None when they fit.

    `dali`: the DALI builds installed, distribution name -> version ({} for none). `torch_version`,
    `torch_cuda`: ``torch.__version__`` and ``torch.version.cuda`` (None for a CPU build: nothing to fit).
    `driver`: the NVIDIA driver's version ("550.54.15"), `driver_cuda`: the CUDA version it runs in NVML's form
    (12040 for 12.4); either None where unknown.
    """
    if torch_cuda is None:
        return None
    t_major = _major(torch_cuda)
    builds = {name: DALI_BUILDS[name] for name in sorted(dali) if name in DALI_BUILDS}
    d_major = driver_major(driver, driver_cuda)
    # The major to install: torch's where the driver runs it (no torch reinstall), else the newest it runs.
    runs = [m for m in sorted(MIN_DRIVER, reverse=True) if d_major is None or d_major >= m]
    target = t_major if t_major in runs else (runs[0] if runs else None)
    remove = [name for name, m in builds.items() if m != target or len(builds) > 1]
    if t_major != target:
        remove += ["torch", "torchvision"]
    named = [f"{name} {dali[name]}" for name in builds]
    torch_named = f"torch {torch_version} (CUDA {torch_cuda})"
    if len(builds) > 1:
        return (f"{' and '.join(named)} are both installed, and one overwrites the other's files: "
                f"{_fix(target, remove)}")
    need = max([t_major, *builds.values()])
    if d_major is not None and d_major < need:
        shown = f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}" if driver_cuda else str(d_major)
        what = " and ".join([torch_named] + [f"{n} (CUDA {m})" for n, m in zip(named, builds.values())])
        this = f"this one ({driver})" if driver else "this one"
        return (f"{what} need{'s' if not builds else ''} an NVIDIA driver >= {MIN_DRIVER.get(need, '?')} and {this} "
                f"runs CUDA up to {shown}: {_fix(target, remove)}" + (" (or update the driver)" if target else ""))
    for (name, m), shown in zip(builds.items(), named):
        if m != t_major:
            return (f"{shown} is DALI's CUDA {m} build but {torch_named} is a CUDA {t_major} build (one CUDA major "
                    f"per process): {_fix(target, remove)}")
    return None


def driver_from_file(text: str) -> str | None:
    """The driver version in /proc/driver/nvidia/version's text ("... Kernel Module  550.54.15  ..."), or None."""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def _nvml_driver() -> tuple[str | None, int | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            return (driver.decode() if isinstance(driver, bytes) else str(driver),
                    int(pynvml.nvmlSystemGetCudaDriverVersion()))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no binding, no NVML library (a container without `utility`), no permission
        return None, None


@functools.cache
def installed() -> dict[str, Any]:
    """:func:`misfit`'s arguments as this environment has them (read once per process)."""
    import torch

    dali = {}
    for name in DALI_BUILDS:
        try:
            dali[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    driver, driver_cuda = _nvml_driver()
    if driver is None:
        try:
            with open(DRIVER_FILE, encoding="utf-8", errors="replace") as f:
                driver = driver_from_file(f.read())
        except OSError:
            pass
    return {"dali": dali, "torch_version": torch.__version__, "torch_cuda": torch.version.cuda, "driver": driver,
            "driver_cuda": driver_cuda}


def check(*, usable: bool, read: Callable[[], dict[str, Any]] = installed,
          driver_loaded: Callable[[], bool] = lambda: os.path.exists(DRIVER_FILE), cpu: str = "") -> None:
    """Raise :func:`misfit`'s line as a ConfigError. `usable`: torch sees a CUDA device (a run would use it); where
    it sees none, only a loaded driver is checked, and only against torch's CUDA (DALI then runs its CPU operators,
    whatever its build), and `cpu` (e.g. "--device cpu") is named as the way to run on the CPU as things are."""
    if not usable and not driver_loaded():
        return
    versions = read()
    line = misfit(**(versions if usable else {**versions, "dali": {}}))
    if line is not None:
        alternative = f"; or run on the CPU with {cpu}, which checks nothing" if cpu and not usable else ""
        raise ConfigError(f"CUDA builds that do not fit: {line}{alternative}")


def require_dali(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> None:
    """The DALI backend's precondition: a DALI build installed (it comes with the cuda13 or cuda12 extra)."""
    try:
        found = find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` package at all
        found = False
    if not found:
        raise ConfigError("backend dali needs NVIDIA DALI, which is not installed: "
                          f"{INSTALL[13]} (NVIDIA driver >= {MIN_DRIVER[13]}) or {INSTALL[12]} (driver >= "
                          f"{MIN_DRIVER[12]}); or --backend torchvision")
