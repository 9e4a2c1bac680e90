"""The memory a run is checked against: the machine's, an address-space limit's and a
container's cgroup limit's, the smallest of them."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from slidemap.data import machine
from slidemap.data.machine import physical_memory_mb

UNLIMITED_V1 = "9223372036854771712"  # what cgroup v1 writes where there is no limit


@pytest.fixture
def cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write the cgroup v2 and v1 limit files (None: absent) that the checks read, with no
    address-space limit, whatever this machine's cgroup and ``ulimit -v`` are."""
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (
        resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    files = (tmp_path / "memory.max", tmp_path / "memory" / "memory.limit_in_bytes")
    monkeypatch.setattr(machine, "CGROUP_LIMIT_FILES", files)

    def write(v2: str | None, v1: str | None) -> None:
        for path, text in zip(files, (v2, v1), strict=True):
            if text is not None:
                path.parent.mkdir(exist_ok=True)
                path.write_text(f"{text}\n")
    return write


@pytest.mark.parametrize(("v2", "v1", "megabytes"), [
    ("2147483648", None, 2048),  # docker run --memory 2g, cgroup v2
    (None, "2147483648", 2048),  # the same under cgroup v1
    ("1073741824", "2147483648", 1024),  # the smallest
    ("max", "104857600", 100),
])
def test_a_container_limit_bounds_the_memory_a_run_is_checked_against(
        cgroup, v2: str | None, v1: str | None, megabytes: int) -> None:
    """In a 2 GB container the checks took the host's memory, and a run the container could
    not hold was killed by its kernel instead of refused."""
    cgroup(v2, v1)
    assert physical_memory_mb() == megabytes


@pytest.mark.parametrize(("v2", "v1"), [
    (None, None), ("max", None), (None, UNLIMITED_V1), ("max", UNLIMITED_V1), ("", "garbage")])
def test_no_container_limit_leaves_the_machine(cgroup, v2: str | None, v1: str | None) -> None:
    machine_mb = physical_memory_mb()
    cgroup(v2, v1)
    assert physical_memory_mb() == machine_mb


def test_a_memory_budget_beyond_the_container_is_refused(
        cgroup, tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    """predict --memory-mb 8000 in a 2 GB container passed the check against the host's 24 GB
    and went on to map with buffers the container could not hold."""
    cgroup(None, "2147483648")
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--model", tiny_model, "--out", tmp_path / "out", "--memory-mb", 8000)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "8,000 MB is more than this machine's 2,048 MB" in err
    assert not (tmp_path / "out").exists()
