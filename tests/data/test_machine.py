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
def hierarchy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup tree under ``tmp_path / "cgroup"`` whose root the process sits in (its
    ``/proc/self/cgroup`` written beside it), with no address-space limit, whatever this
    machine's cgroup and ``ulimit -v`` are."""
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (
        resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    monkeypatch.setattr(machine, "CGROUP_ROOT", root)
    monkeypatch.setattr(machine, "PROCESS_CGROUPS", tmp_path / "proc-self-cgroup")
    place(tmp_path, "4:memory:/\n0::/\n")
    return root


def place(tmp_path: Path, lines: str) -> None:
    """Where the process sits in each hierarchy, as /proc/self/cgroup says."""
    (tmp_path / "proc-self-cgroup").write_text(lines)


def write_limit(path: Path, text: str | None) -> None:
    if text is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{text}\n")


@pytest.fixture
def cgroup(hierarchy: Path):
    """Write the root's cgroup v2 and v1 limit files (None: absent)."""

    def write(v2: str | None, v1: str | None) -> None:
        write_limit(hierarchy / "memory.max", v2)
        write_limit(hierarchy / "memory" / "memory.limit_in_bytes", v1)
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


@pytest.mark.parametrize(("lines", "limit"), [
    ("0::/system.slice/job.scope\n", "system.slice/job.scope/memory.max"),  # systemd-run, v2
    ("0::/slurm/uid_0/job_7/step_0\n", "slurm/uid_0/job_7/memory.max"),  # on a parent
    ("4:memory:/slurm/job_7\n1:cpu:/\n", "memory/slurm/job_7/memory.limit_in_bytes"),  # v1
])
def test_a_jobs_limit_on_its_own_cgroup_bounds_the_memory(
        hierarchy: Path, tmp_path: Path, lines: str, limit: str) -> None:
    """Only the root's files were read: a Slurm job's or systemd-run's limit sits on the job's
    own cgroup, under a root with none, and --memory-mb 8000 passed under a 2 GB limit."""
    write_limit(hierarchy / "memory.max", "max")
    place(tmp_path, lines)
    write_limit(hierarchy / limit, "2147483648")
    assert physical_memory_mb() == 2048


def test_a_memory_budget_beyond_the_container_is_refused(
        cgroup, tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    """predict --memory-mb 8000 in a 2 GB container passed the check against the host's 24 GB
    and went on to map with buffers the container could not hold."""
    cgroup(None, "2147483648")
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--model", tiny_model, "--out", tmp_path / "out", "--memory-mb", 8000)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "8,000 MB is more than the 2,048 MB this process may use" in err
    assert not (tmp_path / "out").exists()
