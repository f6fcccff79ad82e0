"""Per-epoch resource figures, from :meth:`ResourceMonitor.figures`:

- ``host_rss_peak_mib``: peak resident memory of this process, sampled in a background thread (every device);
- ``max_mem_allocated_mib`` / ``max_mem_reserved_mib``: PyTorch's caching allocator peaks (CUDA, reset each epoch).
  These count PyTorch's tensors only: DALI's buffers and the CUDA context are not in them;
- ``gpu_util_mean_pct``: NVML utilization of the device, mean over the samples;
- ``gpu_mem_used_max_mib``: NVML memory used on the whole device (every process on it), peak over the samples;
- ``gpu_mem_process_max_mib``: NVML memory of this process on the device, peak over the samples: PyTorch's
  allocator, DALI's pipelines and the CUDA context together (what the process really costs the GPU).

The NVML figures need the ``pynvml`` module (nvidia-ml-py). The device's NVML handle is found by the UUID CUDA
reports for it, so ``CUDA_VISIBLE_DEVICES`` remapping (and MIG instances) pick the right one. Each NVML query is
dropped on its first failure (utilization is "Not Supported" on MIG instances, for example) with one log line
saying why; the other queries and the host figures keep being sampled. A figure whose query never answered is
left out rather than reported as a number.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

_SAMPLE_S = 0.2  # sampling period of the background thread, seconds
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024 * 1024
_NAN = float("nan")
_log = logging.getLogger(__name__)

# The NVML queries the sampler makes, by the figure each one feeds.
UTIL, MEM, PROC = "gpu_util_mean_pct", "gpu_mem_used_max_mib", "gpu_mem_process_max_mib"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------ which NVML device
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def normalize_uuid(uuid: Any) -> str:
    """A GPU or MIG UUID as bare lowercase hex groups: CUDA prints them without a prefix, NVML with ``GPU-`` or
    ``MIG-``, so both are compared in this form."""
    s = _text(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if s.startswith(prefix):
            return s[len(prefix):]
    return s


def cuda_uuid(device: torch.device) -> str | None:
    """The UUID CUDA reports for `device` (a MIG instance's own UUID under MIG), or None where torch cannot say."""
    try:
        return str(torch.cuda.get_device_properties(device).uuid)
    except Exception:  # noqa: BLE001 - no CUDA, or a build without the field: the caller falls back
        return None


def _nvml_devices(nvml: Any) -> Iterator[tuple[str, Any]]:
    """(normalized UUID, handle) of every GPU NVML sees, and of every MIG instance on them."""
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        yield normalize_uuid(nvml.nvmlDeviceGetUUID(handle)), handle
        try:
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except Exception:  # noqa: BLE001 - no MIG support on this GPU or in this binding
            continue
        for j in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
            except Exception:  # noqa: BLE001 - an empty MIG slot
                continue
            yield normalize_uuid(nvml.nvmlDeviceGetUUID(mig)), mig


def nvml_handle(nvml: Any, *, uuid: str | None, index: int, visible: str | None,
                device_order: str | None) -> tuple[Any, str | None]:
    """The NVML handle of CUDA device `index`: ``(handle, None)``, or ``(None, why not)``.

    With CUDA's `uuid` (the normal case) the handle is looked up by it. Without it, `visible`
    (``CUDA_VISIBLE_DEVICES``) is read: UUID entries are matched by prefix as CUDA does; plain indices, or no
    variable, count in CUDA's order, which is NVML's (PCI bus) order only under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    or when NVML sees a single GPU. Anything else gets no handle: figures of another GPU would mislead.
    """
    if uuid:
        wanted = normalize_uuid(uuid)
        for prefix in ("GPU-", "MIG-"):
            try:
                return nvml.nvmlDeviceGetHandleByUUID(prefix + wanted), None
            except Exception:  # noqa: BLE001 - not this prefix; enumerating below also finds MIG instances
                pass
        for found, handle in _nvml_devices(nvml):
            if found == wanted:
                return handle, None
        return None, f"no NVML device has the UUID CUDA reports ({wanted})"
    entries = None if visible is None else [e.strip() for e in visible.split(",") if e.strip()]
    if entries is not None and index >= len(entries):
        return None, f"CUDA_VISIBLE_DEVICES={visible!r} has no entry for device {index}"
    entry = str(index) if entries is None else entries[index]
    if entries is not None and not all(e.isdigit() for e in entries):
        if not entry.lower().startswith(("gpu-", "mig-")):
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} mixes indices and UUIDs or holds something else"
        wanted = normalize_uuid(entry)
        matches = [h for found, h in _nvml_devices(nvml) if found.startswith(wanted)]
        if len(matches) != 1:
            return None, f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(matches)} NVML devices"
        return matches[0], None
    if device_order != "PCI_BUS_ID" and nvml.nvmlDeviceGetCount() != 1:
        return None, ("CUDA's device order (fastest first) need not be NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID "
                      "to map device indices")
    return nvml.nvmlDeviceGetHandleByIndex(int(entry)), None


# ------------------------------------------------------------------------------------------------ the monitor
class _Unavailable(Exception):
    """A query that answered, but without the number (it will not have it later either)."""


class ResourceMonitor:
    """Use as ``with monitor: ...`` around one epoch; :meth:`figures` then returns that epoch's numbers.

    `nvml`: the NVML binding (``pynvml``; imported when None). `gpu_uuid`: the device's UUID (read from torch when
    None). `log`: where the one-line notices go (a warning on this module's logger when None). `sample_s`: seconds
    between samples.
    """

    def __init__(self, device: torch.device, *, nvml: Any = None, gpu_uuid: str | None = None,
                 log: Callable[[str], None] | None = None, sample_s: float = _SAMPLE_S):
        self.device = torch.device(device)
        self._say = log or _log.warning
        self._sample_s = sample_s
        self._pid = os.getpid()
        self._said: set[str] = set()
        self._off: set[str] = set()  # queries dropped after their first failure
        self._nvml = self._handle = None
        # The allocator figures need a CUDA runtime; a monitor given a fake NVML on a machine without one still runs.
        self._allocator = self.device.type == "cuda" and torch.cuda.is_available()
        if self.device.type == "cuda":
            self._open_nvml(nvml, gpu_uuid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[int, float, float, float]] = []  # (rss bytes, util %, used MiB, process MiB)

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(f"resource monitor: {message}")

    def _open_nvml(self, nvml: Any, gpu_uuid: str | None) -> None:
        try:
            if nvml is None:
                import pynvml as nvml  # from the nvidia-ml-py package
            nvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            handle, why = nvml_handle(nvml, uuid=gpu_uuid or cuda_uuid(self.device), index=index,
                                      visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
                                      device_order=os.environ.get("CUDA_DEVICE_ORDER"))
        except Exception as e:  # noqa: BLE001 - no binding, no driver library or no permission
            handle, why = None, f"{type(e).__name__}: {e}"
        if handle is None:
            self._once("open", f"no NVML figures for {self.device} ({why}); the allocator and host figures remain")
            return
        self._nvml, self._handle = nvml, handle

    # -- sampling (background thread) --
    def _query(self, name: str, read: Callable[[], float]) -> float:
        if name in self._off:
            return _NAN
        try:
            return read()
        except Exception as e:  # noqa: BLE001 - one query failing must not stop the others or the thread
            self._off.add(name)
            self._once(name, f"NVML query for {name} failed ({type(e).__name__}: {e}); {name} is not reported "
                             "from now on, the other figures still are")
            return _NAN

    def _process_mib(self) -> float:
        used = [p.usedGpuMemory for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                if p.pid == self._pid]
        if not used:  # no CUDA context yet, or a PID namespace: kept trying, explained if never found
            return _NAN
        if any(u is None for u in used):
            raise _Unavailable("NVML lists this process but not its memory (usedGpuMemory unavailable)")
        return sum(used) / MIB

    def sample(self) -> None:
        """Take one sample (the thread calls this every `sample_s` seconds)."""
        util = mem = proc = _NAN
        if self._handle is not None:
            nvml, handle = self._nvml, self._handle
            util = self._query(UTIL, lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            mem = self._query(MEM, lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / MIB)
            proc = self._query(PROC, self._process_mib)
        self._samples.append((_rss_bytes(), util, mem, proc))

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - the host figures must outlive any surprise in one sample
                self._once("sample", f"a sample failed ({type(e).__name__}: {e}); sampling goes on")
            if self._stop.wait(self._sample_s):
                return

    def __enter__(self) -> ResourceMonitor:
        if self._allocator:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def figures(self) -> dict[str, float]:
        rss = [s[0] for s in self._samples] or [_rss_bytes()]
        out = {"host_rss_peak_mib": max(rss) / MIB}
        if self._allocator:
            out["max_mem_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
            out["max_mem_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / MIB
        if self._handle is None:
            return out
        for column, name, reduce in ((1, UTIL, lambda v: sum(v) / len(v)), (2, MEM, max), (3, PROC, max)):
            values = [s[column] for s in self._samples if math.isfinite(s[column])]
            if values:
                out[name] = reduce(values)
            elif name == PROC and name not in self._off and self._samples:
                self._once("pid", f"{PROC} not reported: NVML does not list this process (pid {self._pid}) on "
                                  "the device; inside a container NVML shows the host's PIDs")
        return out
