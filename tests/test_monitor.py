"""ResourceMonitor against a fake NVML binding (given to the constructor): the right device under remapping, queries
that fail dropped one by one with one notice each, host RSS sampled throughout, the process's own GPU memory."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest
import torch

from training.outputs.monitor import MEM, MIB, PROC, UTIL, ResourceMonitor, normalize_uuid, nvml_handle

UUIDS = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-1111-1111-1111-111111111111"]
MIG_UUID = "MIG-cccccccc-2222-2222-2222-222222222222"


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - the name pynvml gives it
    def __str__(self) -> str:
        return "Not Supported"


class NVMLError_NotFound(NVMLError):  # noqa: N801
    pass


class FakeNVML:
    """The pynvml calls the monitor makes, over two GPUs (the second holding one MIG instance). `fail` names the
    queries that raise NotSupported; `procs` is what nvmlDeviceGetComputeRunningProcesses lists."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, *, fail: tuple[str, ...] = (), procs=None, enough: int = 0, by_uuid: bool = True):
        self.fail = set(fail)
        self.procs = [SimpleNamespace(pid=os.getpid(), usedGpuMemory=300 * MIB)] if procs is None else procs
        self.by_uuid = by_uuid  # False: a binding whose nvmlDeviceGetHandleByUUID knows no MIG (or nothing)
        self.calls = {UTIL: 0, MEM: 0, PROC: 0}
        self.enough, self.sampled = enough, threading.Event()  # set once `enough` memory queries answered

    # devices: handles are plain strings
    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(UUIDS)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"handle-{i}"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return MIG_UUID if handle == "mig-1-0" else UUIDS[int(handle.split("-")[1])]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if self.by_uuid and uuid in UUIDS:
            return f"handle-{UUIDS.index(uuid)}"
        raise NVMLError_NotFound("Not Found")

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: str) -> int:
        if handle == "handle-0":
            raise NVMLError_NotSupported()
        return 2

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: str, j: int) -> str:
        if j == 0:
            return "mig-1-0"
        raise NVMLError_NotFound("Not Found")  # an empty slot

    # queries
    def nvmlDeviceGetUtilizationRates(self, handle):
        self.calls[UTIL] += 1
        if UTIL in self.fail:
            raise NVMLError_NotSupported()
        return SimpleNamespace(gpu=40 if handle == "handle-1" else 90)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls[MEM] += 1
        if MEM in self.fail:
            raise NVMLError_NotSupported()
        if self.calls[MEM] >= self.enough:
            self.sampled.set()
        return SimpleNamespace(used=(1000 if handle == "handle-1" else 5000) * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self.calls[PROC] += 1
        if PROC in self.fail:
            raise NVMLError_NotSupported()
        return [SimpleNamespace(pid=1, usedGpuMemory=7 * MIB), *self.procs]


def monitor(nvml: FakeNVML, notes: list[str], *, uuid: str | None = UUIDS[1], index: int = 0,
            sample_s: float = 0.2) -> ResourceMonitor:
    return ResourceMonitor(torch.device("cuda", index), nvml=nvml, gpu_uuid=uuid, log=notes.append,
                           sample_s=sample_s)


def test_uuid_picks_the_device_cuda_means_not_the_index() -> None:
    # CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is the second GPU; its index would name the first.
    nvml = FakeNVML()
    assert nvml_handle(nvml, uuid=UUIDS[1][4:], index=0, visible="1", device_order=None) == ("handle-1", None)
    notes: list[str] = []
    m = monitor(nvml, notes, uuid=UUIDS[1][4:], index=0)
    m.sample()
    fig = m.figures()
    assert fig[UTIL] == 40 and fig[MEM] == 1000 and not notes  # the second GPU's numbers, not the first's


def test_uuid_of_a_mig_instance_is_found_by_enumerating() -> None:
    nvml = FakeNVML(by_uuid=False)
    assert nvml_handle(nvml, uuid=MIG_UUID[4:].upper(), index=0, visible=None, device_order=None) == ("mig-1-0", None)
    handle, why = nvml_handle(nvml, uuid="dddddddd-3333-3333-3333-333333333333", index=0, visible=None,
                              device_order=None)
    assert handle is None and "dddddddd" in why
    assert normalize_uuid(b"GPU-AbC") == "abc" and normalize_uuid("MIG-x") == "x"


@pytest.mark.parametrize("visible, order, expected", [
    ("1,0", "PCI_BUS_ID", "handle-1"),  # plain indices in PCI order: entry `index` is the NVML index
    (None, "PCI_BUS_ID", "handle-0"),
    ("GPU-bbbb", None, "handle-1"),  # a UUID prefix, as CUDA accepts it
    ("MIG-cccc", None, "mig-1-0"),
    ("1,0", None, None),  # fastest-first order: an index says nothing about NVML's order
    (None, None, None),
    ("GPU-", None, None),  # ambiguous prefix
    ("0,foo", "PCI_BUS_ID", None),
])
def test_fallback_without_cuda_uuid_maps_only_what_is_certain(visible, order, expected) -> None:
    handle, why = nvml_handle(FakeNVML(), uuid=None, index=0, visible=visible, device_order=order)
    assert handle == expected
    assert (why is None) == (expected is not None)


def test_fallback_index_past_the_visible_list_is_refused() -> None:
    handle, why = nvml_handle(FakeNVML(), uuid=None, index=2, visible="0,1", device_order="PCI_BUS_ID")
    assert handle is None and "no entry for device 2" in why


def test_unsupported_utilization_is_dropped_once_and_the_thread_keeps_sampling() -> None:
    notes: list[str] = []
    nvml = FakeNVML(fail=(UTIL,), enough=4)
    m = monitor(nvml, notes, sample_s=0.001)
    with m:
        assert nvml.sampled.wait(30), "the sampling thread stopped"
    assert nvml.calls[UTIL] == 1  # asked once, then dropped
    assert nvml.calls[MEM] >= 4 and len(m._samples) >= 4
    assert all(s[0] > 0 for s in m._samples)  # host RSS in every sample, before and after the failure
    fig = m.figures()
    assert UTIL not in fig and fig[MEM] == 1000 and fig[PROC] == 300 and fig["host_rss_peak_mib"] > 0
    assert len(notes) == 1 and UTIL in notes[0] and "Not Supported" in notes[0]
    nvml.sampled.clear()
    nvml.enough = nvml.calls[MEM] + 2
    with m:  # the next epoch: still dropped, not announced again
        assert nvml.sampled.wait(30)
    assert nvml.calls[UTIL] == 1 and len(notes) == 1


def test_every_nvml_query_failing_leaves_the_host_figures() -> None:
    notes: list[str] = []
    nvml = FakeNVML(fail=(UTIL, MEM, PROC))
    m = monitor(nvml, notes)
    for _ in range(3):
        m.sample()
    fig = m.figures()
    assert set(fig) == {"host_rss_peak_mib"} and fig["host_rss_peak_mib"] > 0
    assert sorted(n.split("for ")[1].split(" ")[0] for n in notes) == sorted([UTIL, MEM, PROC])
    assert nvml.calls == {UTIL: 1, MEM: 1, PROC: 1}


def test_process_memory_is_this_process_only() -> None:
    notes: list[str] = []
    nvml = FakeNVML(procs=[SimpleNamespace(pid=os.getpid(), usedGpuMemory=300 * MIB)])
    m = monitor(nvml, notes)
    m.sample()
    nvml.procs[0].usedGpuMemory = 500 * MIB
    m.sample()
    assert m.figures()[PROC] == 500 and not notes  # the peak, without the other process's 7 MiB


def test_process_memory_unavailable_is_dropped_and_said() -> None:
    notes: list[str] = []
    nvml = FakeNVML(procs=[SimpleNamespace(pid=os.getpid(), usedGpuMemory=None)])
    m = monitor(nvml, notes)
    m.sample()
    m.sample()
    fig = m.figures()
    assert PROC not in fig and fig[MEM] == 1000
    assert nvml.calls[PROC] == 1 and len(notes) == 1 and "usedGpuMemory unavailable" in notes[0]


def test_process_not_listed_reports_nothing_and_says_why_once() -> None:
    notes: list[str] = []
    nvml = FakeNVML(procs=[])  # e.g. a PID namespace: NVML lists host PIDs
    m = monitor(nvml, notes)
    m.sample()
    assert PROC not in m.figures()
    m.sample()
    assert PROC not in m.figures()
    assert nvml.calls[PROC] == 2  # still asked: the process may appear later
    assert len(notes) == 1 and f"pid {os.getpid()}" in notes[0]


def test_no_handle_is_said_once_and_host_figures_remain() -> None:
    notes: list[str] = []
    m = monitor(FakeNVML(), notes, uuid="eeeeeeee-0000-0000-0000-000000000000")
    m.sample()
    assert set(m.figures()) == {"host_rss_peak_mib"}
    assert len(notes) == 1 and "no NVML figures" in notes[0]


def test_cpu_device_uses_no_nvml() -> None:
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"NVML used on the CPU: {name}")

    m = ResourceMonitor(torch.device("cpu"), nvml=Untouchable(), sample_s=0.001)
    with m:
        pass
    assert set(m.figures()) == {"host_rss_peak_mib"}
