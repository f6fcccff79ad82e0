"""The CUDA-fit check (dali_pipes.cuda_fit): DALI's, torch's and the driver's CUDA builds, with the versions given."""

from __future__ import annotations

import pytest

from dali_pipes import ConfigError
from dali_pipes.cuda_fit import INSTALL, check, driver_from_file, driver_major, misfit, require_dali

DALI13 = {"nvidia-dali-cuda130": "2.4.0"}
DALI12 = {"nvidia-dali-cuda120": "2.4.0"}
TORCH13 = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0"}
TORCH12 = {"torch_version": "2.14.1+cu126", "torch_cuda": "12.6"}


@pytest.mark.parametrize("versions", [
    dict(dali=DALI13, **TORCH13, driver="580.65.06", driver_cuda=13000),
    dict(dali=DALI13, **TORCH13, driver="590.10", driver_cuda=13010),
    dict(dali=DALI12, **TORCH12, driver="535.183.01", driver_cuda=12020),  # minor-version compatibility
    dict(dali=DALI12, **TORCH12, driver="580.65.06", driver_cuda=13000),  # a newer driver runs an older major
    dict(dali=DALI13, **TORCH13),                                          # driver unknown: the builds agree
    dict(dali={}, **TORCH12, driver="550.54.15", driver_cuda=12040),       # no DALI (the torchvision backend)
])
def test_builds_that_fit_say_nothing(versions) -> None:
    assert misfit(**versions) is None


@pytest.mark.parametrize("dali", [DALI12, DALI13, {**DALI12, **DALI13}, {}])
def test_a_cpu_build_of_torch_is_never_refused(dali) -> None:
    assert misfit(dali=dali, torch_version="2.14.1+cpu", torch_cuda=None, driver="470.1", driver_cuda=11040) is None


def test_dali_of_another_major_than_torch_names_both_and_the_fix() -> None:
    line = misfit(dali=DALI12, **TORCH13, driver="580.65.06", driver_cuda=13000)
    assert "\n" not in line
    assert "nvidia-dali-cuda120 2.4.0 is DALI's CUDA 12 build" in line and "torch 2.14.1+cu130 (CUDA 13.0)" in line
    # torch fits the driver, so only DALI is swapped
    assert line.endswith(f": pip uninstall -y nvidia-dali-cuda120 && {INSTALL[13]}")
    line = misfit(dali=DALI13, **TORCH12, driver="550.54.15", driver_cuda=12040)
    assert "driver >= 580" in line and "this one (550.54.15) runs CUDA up to 12.4" in line
    assert f"pip uninstall -y nvidia-dali-cuda130 && {INSTALL[12]}" in line


def test_a_driver_too_old_for_the_stack_points_to_the_cuda12_variant() -> None:
    line = misfit(dali=DALI13, **TORCH13, driver="550.54.15", driver_cuda=12040)
    assert "\n" not in line
    assert "torch 2.14.1+cu130 (CUDA 13.0) and nvidia-dali-cuda130 2.4.0 (CUDA 13) need an NVIDIA driver >= 580" in line
    assert "this one (550.54.15) runs CUDA up to 12.4" in line
    assert line.endswith(f"pip uninstall -y nvidia-dali-cuda130 torch torchvision && {INSTALL[12]} "
                         "(or update the driver)")
    # only the version file's driver (no NVML in the container): its branch says the major
    line = misfit(dali={}, **TORCH13, driver="570.86.10", driver_cuda=None)
    assert "torch 2.14.1+cu130 (CUDA 13.0) needs an NVIDIA driver >= 580" in line
    assert line.endswith(f"pip uninstall -y torch torchvision && {INSTALL[12]} (or update the driver)")


def test_a_driver_older_than_both_majors_asks_for_a_driver_update() -> None:
    line = misfit(dali=DALI12, **TORCH12, driver="470.256.02", driver_cuda=11040)
    assert line.endswith(": update the NVIDIA driver to >= 525")


def test_both_dali_builds_installed_are_refused() -> None:
    line = misfit(dali={**DALI12, **DALI13}, **TORCH13, driver="580.65.06", driver_cuda=13000)
    assert "nvidia-dali-cuda120 2.4.0 and nvidia-dali-cuda130 2.4.0 are both installed" in line
    assert line.endswith(f"pip uninstall -y nvidia-dali-cuda120 nvidia-dali-cuda130 && {INSTALL[13]}")


@pytest.mark.parametrize("driver, driver_cuda, major", [
    ("550.54.15", 12040, 12), ("580.65.06", 13000, 13), ("575.57.08", None, 12), ("580.82.07", None, 13),
    ("470.256.02", None, 11), (None, None, None), ("garbage", None, None)])
def test_driver_major_from_nvml_or_the_branch(driver, driver_cuda, major) -> None:
    assert driver_major(driver, driver_cuda) == major


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: ...",
     "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)",
     "580.65.06"),
    ("something else", None)])
def test_driver_version_from_the_kernel_module_file(text, version) -> None:
    assert driver_from_file(text) == version


def _never() -> dict:
    raise AssertionError("the versions were read on a path that must cost nothing")


def test_check_reads_nothing_where_no_driver_is_loaded() -> None:
    check(usable=False, read=_never, driver_loaded=lambda: False)


def test_check_without_a_visible_device_weighs_only_torch_against_the_driver() -> None:
    # GPUs hidden (CUDA_VISIBLE_DEVICES=""): DALI runs its CPU operators, so its build does not matter here
    check(usable=False, read=lambda: dict(dali=DALI12, **TORCH13, driver="580.65.06", driver_cuda=13000),
          driver_loaded=lambda: True)
    with pytest.raises(ConfigError, match=r"^CUDA builds that do not fit: torch 2\.14\.1\+cu130 .* needs an NVIDIA "
                                          r"driver >= 580 and this one \(550\.54\.15\).*; or run on the CPU with "
                                          r"--device cpu, which checks nothing$"):
        check(usable=False, read=lambda: dict(dali=DALI13, **TORCH13, driver="550.54.15", driver_cuda=12040),
              driver_loaded=lambda: True, cpu="--device cpu")


def test_check_with_a_device_refuses_a_misfit() -> None:
    with pytest.raises(ConfigError, match="nvidia-dali-cuda120 2.4.0 is DALI's CUDA 12 build"):
        check(usable=True, read=lambda: dict(dali=DALI12, **TORCH13, driver="580.65.06", driver_cuda=13000),
              driver_loaded=_never)
    check(usable=True, read=lambda: dict(dali=DALI13, **TORCH13, driver="580.65.06", driver_cuda=13000))


def _no_nvidia(name: str):
    raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")


@pytest.mark.parametrize("find_spec", [lambda name: None, _no_nvidia])
def test_the_dali_backend_without_dali_installed_names_both_installs(find_spec) -> None:
    with pytest.raises(ConfigError) as e:
        require_dali(find_spec)
    assert str(e.value).startswith("backend dali needs NVIDIA DALI, which is not installed: ")
    assert INSTALL[13] in str(e.value) and INSTALL[12] in str(e.value) and "--backend torchvision" in str(e.value)
    require_dali()  # installed here


@pytest.mark.gpu
def test_the_installed_stack_fits_the_driver_of_a_machine_with_a_gpu() -> None:
    # Where a GPU is lent: the stack under test and the driver fit, and the driver is read (NVML or /proc).
    from dali_pipes.cuda_fit import installed
    from dali_pipes.loader import resolve_device

    versions = installed()
    assert versions["driver"] is not None and versions["torch_cuda"] is not None, versions
    assert misfit(**versions) is None, versions
    assert resolve_device("auto").type == "cuda"
