"""The default generation thread count: physical cores, from sysfs topology or
/proc/cpuinfo, within this process's CPU affinity; doctor shows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cores import CoreCount, generation_threads, physical_cores


def _sysfs(root: Path, cores: list[tuple[int, int]]) -> None:
    """cpuN/topology/{physical_package_id,core_id}, one (package, core) per logical CPU."""
    for cpu, (package, core) in enumerate(cores):
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")


def test_smt_siblings_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sysfs(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1)])  # 2 cores x 2 threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    got = physical_cores(root=tmp_path)
    assert got.threads == 2 and "sysfs" in got.how


def test_affinity_limits_the_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sysfs(tmp_path, [(0, 0), (0, 1), (1, 0), (1, 1)])  # two packages
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {2, 3})
    assert physical_cores(root=tmp_path).threads == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 2})
    assert physical_cores(root=tmp_path).threads == 2  # same core id, other package


def test_cpuinfo_when_sysfs_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 2}\n\n"
                            for i in range(4)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    got = physical_cores(root=tmp_path / "none", cpuinfo=info)
    assert got.threads == 2 and "cpuinfo" in got.how


def test_logical_cpus_as_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2})
    got = physical_cores(root=tmp_path / "none", cpuinfo=tmp_path / "none")
    assert got.threads == 3 and "logical" in got.how


def test_explicit_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting is taken as given, even above the core count (doctor warns about that);
    unset, the count follows this process's CPUs: one allowed CPU is one thread."""
    more = (os.cpu_count() or 1) + 7  # never the machine's own count
    assert generation_threads(more) == CoreCount(more, "set by n_threads")
    assert generation_threads(1) == CoreCount(1, "set by n_threads")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    default = generation_threads(None)
    assert default.threads == 1 and "n_threads" not in default.how


def test_this_machine_has_at_least_one_core() -> None:
    assert 1 <= physical_cores().threads <= (os.cpu_count() or 1)
