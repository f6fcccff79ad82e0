"""What a report says about the machine it ran on: the CPU's name and package versions (labels, not figures)."""

from __future__ import annotations

import platform


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
