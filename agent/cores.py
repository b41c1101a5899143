"""How many CPU threads local generation gets by default: the physical cores this
process may run on.

llama.cpp's own default is half the logical CPUs, which on a 2-core device without SMT
is one thread: half the speed it could have (docs/benchmarks.md). One thread per physical core
is what llama.cpp's authors recommend; SMT siblings share one core's vector units and add
little. Cores are counted from Linux's CPU topology (distinct ``(package, core)`` pairs
among the CPUs in this process's affinity mask, so a cgroup/taskset limit is respected),
else from ``/proc/cpuinfo`` ``core id`` lines, else ``os.cpu_count()``.

The router's onnxruntime threads (``router.threads``) run only for the milliseconds of
one routing decision, before generation, so generation keeps every core for itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class CoreCount:
    """The default thread count and how it was found (``edgeroute doctor`` shows both)."""

    threads: int
    how: str


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _from_topology(cpus: list[int], root: Path) -> int | None:
    cores = set()
    for cpu in cpus:
        topo = root / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def _from_cpuinfo(cpus: list[int], cpuinfo: Path) -> int | None:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    cores, cpu, package = set(), None, "0"
    for line in text.splitlines() + [""]:
        key, _, value = (p.strip() for p in line.partition(":"))
        if key == "processor":
            cpu, package = int(value), "0"
        elif key == "physical id":
            package = value
        elif key == "core id" and cpu in cpus:
            cores.add((package, value))
    return len(cores) or None


def physical_cores(root: Path = SYS_CPU, cpuinfo: Path = Path("/proc/cpuinfo")) -> CoreCount:
    """Physical cores this process may use (at least 1), and how they were counted."""
    cpus = _allowed_cpus()
    n = _from_topology(cpus, root)
    if n is not None:
        return CoreCount(n, f"{n} physical cores among the {len(cpus)} CPUs this process "
                         "may use (sysfs topology)")
    n = _from_cpuinfo(cpus, cpuinfo)
    if n is not None:
        return CoreCount(n, f"{n} physical cores among {len(cpus)} CPUs (/proc/cpuinfo)")
    n = max(len(cpus), 1)
    return CoreCount(n, f"{n} CPUs (topology unknown: logical CPUs counted)")


def generation_threads(n_threads: int | None) -> CoreCount:
    """The thread count a local expert runs with: its setting, else physical cores."""
    if n_threads is not None:
        return CoreCount(n_threads, "set by n_threads")
    return physical_cores()
