"""The thread policy: pure functions of the machine's readings, the cgroup parsers, the
wait policy and the context manager the Python API uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wciaudit.errors import ConfigError
from wciaudit.threads import (
    CpuReadings,
    cgroup_quota,
    choose_threads,
    other_load,
    own_load,
    parse_cfs_quota,
    parse_cpu_max,
    prepare_threads,
    read_cpus,
    torch_threads,
    usable_cpus,
)


def test_cgroup_quota_texts() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("50000 100000") == 0.5
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("150000", "100000") == 1.5


def test_cgroup_quota_reads_v2_then_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 2.5
    assert cgroup_quota(tmp_path / "missing") is None


def test_usable_cpus_is_the_smallest_limit() -> None:
    assert usable_cpus(CpuReadings(cores=64)) == (64, "64 cores")
    assert usable_cpus(CpuReadings(cores=64, affinity=8)) == (8, "affinity 8 CPUs")
    # a container on a big host: the quota decides, rounded down, at least 1
    assert usable_cpus(CpuReadings(cores=64, affinity=64, quota=2.5)) == (
        2,
        "cgroup quota 2.5 CPUs",
    )
    assert usable_cpus(CpuReadings(cores=64, quota=0.5))[0] == 1


def test_other_load_takes_the_larger_reading_less_our_own() -> None:
    # the load average lags a job that just started; the runnable count does not
    assert other_load(CpuReadings(cores=2, load=0.1, running=(3, 3, 2))) == 2
    # a job that just ended still weighs on the average for a minute
    assert other_load(CpuReadings(cores=2, load=1.8, running=(1, 1, 1))) == pytest.approx(1.8)
    assert other_load(CpuReadings(cores=2, load=1.0, own=1.0, running=(1,))) == 0
    assert other_load(CpuReadings(cores=2)) == 0


def test_own_load_weights_the_last_minute() -> None:
    assert own_load(0.0, 0.0) == 0.0
    # one busy thread for 60 s: the 1-minute average has reached 1 - 1/e of it
    assert own_load(60.0, 60.0) == pytest.approx(1 - math.exp(-1))
    assert own_load(1.0, 600.0) == pytest.approx(1 / 600, rel=1e-3)


@pytest.mark.parametrize(
    ("readings", "threads"),
    [
        (CpuReadings(cores=2, affinity=2, load=0.0, running=(1, 1, 1)), 2),  # idle
        (CpuReadings(cores=2, affinity=2, load=2.1, running=(3, 3, 3)), 1),  # one 2-thread job
        (CpuReadings(cores=2, affinity=2, load=6.0, running=(7, 7, 7)), 1),  # three scans
        (CpuReadings(cores=16, affinity=16, load=4.0, running=(5, 5, 5)), 12),
        (CpuReadings(cores=16, affinity=4, load=8.0, running=(9,)), 2),  # pinned: its share
        (CpuReadings(cores=64, affinity=64, quota=4.0, load=8.0, running=(9,)), 4),
        (CpuReadings(cores=64, affinity=64, quota=4.0, load=62.0, running=(63,)), 2),
        (CpuReadings(cores=8, affinity=8, running=(1,), processes=4), 2),  # torchrun, 4 ranks
    ],
)
def test_threads_are_the_free_usable_cpus(readings: CpuReadings, threads: int) -> None:
    choice = choose_threads(readings)
    assert choice.threads == threads
    assert "usable CPUs" in choice.reason and "other load" in choice.reason


def test_the_users_choice_wins() -> None:
    busy = CpuReadings(cores=2, load=5.0, running=(6,), omp_num_threads="2")
    assert choose_threads(busy).threads == 2
    assert choose_threads(busy).reason == "OMP_NUM_THREADS=2 in the environment"
    assert choose_threads(busy, requested=3).reason == "--threads 3"
    assert choose_threads(CpuReadings(cores=2, omp_num_threads="x")).reason.startswith("2 usable")
    for bad in (0, -1, True):
        with pytest.raises(ConfigError, match="--threads must be an integer >= 1"):
            choose_threads(busy, requested=bad)


def test_wait_policy_is_left_as_the_user_set_it() -> None:
    for threads in (1, 4):
        env: dict[str, str] = {}
        assert prepare_threads(threads, env).wait_policy is None and env == {}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert prepare_threads(4, env).wait_policy == "ACTIVE (as set)"
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_prepare_threads_reports_the_policy_the_user_set() -> None:
    env: dict[str, str] = {}
    choice = prepare_threads(3, env)
    assert (choice.threads, choice.wait_policy) == (3, None) and env == {}
    choice = prepare_threads(3, {"OMP_WAIT_POLICY": "PASSIVE"})
    assert choice.wait_policy == "PASSIVE (as set)"
    assert choice.to_dict() == {
        "threads": 3,
        "reason": "--threads 3",
        "omp_wait_policy": "PASSIVE (as set)",
    }


def test_read_cpus_reads_this_machine() -> None:
    r = read_cpus({"LOCAL_WORLD_SIZE": "2"})
    assert r.cores >= 1 and r.processes == 2 and r.omp_num_threads is None
    assert r.affinity is None or 1 <= r.affinity <= r.cores
    assert all(n >= 1 for n in r.running)  # this process's thread is one of them
    assert 1 <= choose_threads(r).threads <= usable_cpus(r)[0]


def test_torch_threads_puts_the_setting_back() -> None:
    before = torch.get_num_threads()
    with torch_threads(None) as n:
        assert n == before == torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1) as n:
        assert n == torch.get_num_threads() == before + 1
        raise RuntimeError
    assert torch.get_num_threads() == before
