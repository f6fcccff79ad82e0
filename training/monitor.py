"""Per-epoch resource figures: CUDA peak memory (reset each epoch), NVML utilization and memory sampled in a
background thread during the epoch, and host peak RSS. On the CPU, the host figures alone."""

from __future__ import annotations

import os
import platform
import resource
import threading
from typing import Any

import torch

_SAMPLE_S = 0.2  # sampling period of the background thread, seconds
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024 * 1024


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ResourceMonitor:
    """Use as ``with monitor: ...`` around one epoch; :meth:`figures` then returns that epoch's numbers."""

    def __init__(self, device: torch.device):
        self.device = device
        self._nvml = None
        if device.type == "cuda":
            try:
                import pynvml  # from the nvidia-ml-py package

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
            except Exception:  # no driver library or no permission: the CUDA allocator figures still work
                self._nvml = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[int, float, float]] = []

    def _sample(self) -> None:
        while True:
            util = mem = float("nan")
            if self._nvml is not None:
                nvml, handle = self._nvml
                util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle).used / MIB
            self._samples.append((_rss_bytes(), util, mem))
            if self._stop.wait(_SAMPLE_S):
                return

    def __enter__(self) -> ResourceMonitor:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def figures(self) -> dict[str, float]:
        rss = [s[0] for s in self._samples] or [_rss_bytes()]
        out = {"host_rss_peak_mib": max(rss) / MIB}
        if self.device.type == "cuda":
            out["max_mem_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
            out["max_mem_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / MIB
            if self._nvml is not None and self._samples:
                out["gpu_util_mean_pct"] = sum(s[1] for s in self._samples) / len(self._samples)
                out["gpu_mem_used_max_mib"] = max(s[2] for s in self._samples)
        return out


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
