"""What a report says about the machine it ran on: the CPU, cores, GPUs and package versions (labels, not figures).

Imports torch and DALI only inside the functions that need them (training.harness stays standard-library only).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (for reports), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "cpu model", "hardware", "processor name") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(module: str) -> str | None:
    """`module.__version__` as a string, or None where it does not import (a label in reports only)."""
    try:
        return str(__import__(module, fromlist=["__version__"]).__version__)
    except Exception:  # noqa: BLE001
        return None


def gpu_info() -> dict[str, Any]:
    """GPU name(s) through torch, driver through pynvml (nvidia-ml-py) when importable; no GPUs when no CUDA."""
    import torch

    info: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available()), "gpus": [], "driver": None,
                            "cuda_runtime": torch.version.cuda}
    if not info["cuda_available"]:
        return info
    try:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver should not stop the header
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - pynvml absent or NVML unusable: skip quietly
        pass
    return info


def machine_info() -> dict[str, Any]:
    """The machine a report was measured on: CPU model, cores (available to this process and in total), torch
    threads, GPUs and driver, and the versions of python, torch, torchvision and DALI; with the date (UTC)."""
    import torch

    from dali_pipes.loader import cpu_count

    return {
        "cpu_model": cpu_model(),
        "cores_available": cpu_count(),
        "cores_total": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **gpu_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "dali": package_version("nvidia.dali"),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
