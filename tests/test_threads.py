"""rankgym.threads: the thread count follows the machine's load, an explicit count wins, and
the load is read from /proc/stat as other processes' busy cores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rankgym import threads
from rankgym.experiments.bench import background_load


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def governed(readings: list[float | None], cap: int = 2, cpus: int = 2) -> tuple:
    """A governor fed ``readings`` (other processes' busy cores), one per tick, a tick every
    second; the counts it set after each tick."""
    clock, feed, counts = Clock(), iter(readings), []
    gov = threads.ThreadGovernor(cap, cpus, lambda: next(feed), counts.append, clock)
    after = []
    for _ in readings:
        clock.now += 1.0
        gov.tick()
        after.append(gov.threads)
    return gov, counts, after


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    """These tests change the process's count and policy; the rest of the session keeps its."""
    count, state = torch.get_num_threads(), (threads._governor, threads._start)
    yield
    torch.set_num_threads(count)
    threads._governor, threads._start = state


def test_a_core_busy_elsewhere_takes_a_thread_away_within_two_readings() -> None:
    gov, counts, after = governed([0.02, 0.97, 1.01, 0.95])
    assert counts == [2, 1]  # the governor starts at its cap
    assert after == [2, 2, 1, 1]
    assert gov.switches == 1


def test_the_first_reading_acts_later_ones_need_two_in_a_row() -> None:
    _, _, after = governed([1.0, 0.0, 1.0, 0.0, 0.0, 0.1])
    # 1.0 first: one thread at once; an idle reading alone does not bring the second back,
    # two in a row do
    assert after == [1, 1, 1, 1, 2, 2]


def test_a_core_counts_as_busy_from_half_and_the_cap_bounds_the_count() -> None:
    assert [governed([x])[2][0] for x in (0.4, 0.5, 0.6, 1.6, 5.0)] == [2, 2, 1, 1, 1]
    assert governed([2.7], cap=8, cpus=8)[2] == [5]  # 8 cores, less 3 busy elsewhere
    assert governed([0.0, 0.0], cap=3, cpus=8)[2] == [3, 3]  # a launcher's share
    # a container's quota of 2 cores on 64 CPUs: 30 busy elsewhere leave 34 idle, enough
    assert governed([30.0, 63.2, 63.2], cap=2, cpus=64)[2] == [2, 2, 1]
    assert governed([None, None])[2] == [2, 2]  # cannot tell: no change


def test_readings_come_at_most_every_interval() -> None:
    clock, calls = Clock(), []

    def sampler() -> float:
        calls.append(clock.now)
        return 1.0

    gov = threads.ThreadGovernor(2, 2, sampler, lambda n: None, clock, interval=0.5)
    for _ in range(9):
        clock.now += 0.125
        gov.tick()
    assert calls == [0.5, 1.0] and gov.threads == 1


def test_only_the_thread_that_configured_it_changes_the_count() -> None:
    clock, counts = Clock(), []
    gov = threads.ThreadGovernor(2, 2, lambda: 1.0, counts.append, clock)
    clock.now = 5.0
    other = threading.Thread(target=gov.tick)  # torch's count is per thread
    other.start()
    other.join()
    assert gov.threads == 2 and counts == [2]
    gov.tick()
    assert gov.threads == 1 and counts == [2, 1]


def test_the_report_splits_the_time_between_counts() -> None:
    clock = Clock()
    readings = iter([0.0, 1.0, 1.0])
    gov = threads.ThreadGovernor(2, 2, lambda: next(readings), lambda n: None, clock)
    for t in (1.0, 2.0, 3.0):  # 2 threads until the second busy reading at 3 s, then 1
        clock.now = t
        gov.tick()
    clock.now = 4.0
    assert gov.report() == {"torch_threads_share": {"1": 0.25, "2": 0.75},
                            "torch_thread_switches": 1}  # fmt: skip


def write_stat(path: Path, cpus: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat with ``cpu<N> busy idle`` in its fields (user holds the busy ticks)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in cpus.items()]
    path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 5"]) + "\n")


def test_sampler_counts_the_busy_time_of_its_cpus_less_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, {0: (0, 0), 1: (0, 0), 2: (0, 0)})
    own, wall = [0.0], [0.0]
    monkeypatch.setattr(threads.time, "process_time", lambda: own[0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: wall[0])
    sampler = threads.LoadSampler([0, 1], stat)  # cpu2 is not this process's
    tick = sampler.tick_s
    # over 2 s: cpu0 busy throughout, cpu1 half busy, cpu2 busy (ignored); this process used
    # 1.5 CPU seconds of those 3, so others kept 1.5 seconds / 2 s = 0.75 cores busy
    write_stat(stat, {0: (2 * tick, 0), 1: (tick, tick), 2: (2 * tick, 0)})
    own[0], wall[0] = 1.5, 2.0
    assert sampler() == pytest.approx(0.75)
    assert sampler() is None  # no wall time since the last reading
    assert threads.LoadSampler([0], tmp_path / "missing")() is None  # not Linux: cannot tell


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_sampler_sees_a_real_busy_process() -> None:
    sampler = threads.LoadSampler(threads.usable_cpus())
    with background_load(1) as procs:
        sampler()  # the reading starts with the busy process running
        time.sleep(1.0)
        other = sampler()
        assert all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)  # stopped and reaped
    assert other is not None and other >= 0.5, other


def test_background_load_stops_its_processes_on_an_error() -> None:
    with pytest.raises(RuntimeError), background_load(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        raise RuntimeError("the benchmark failed")
    assert all(p.poll() is not None for p in procs)


def test_an_explicit_count_wins_and_is_not_governed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.configure(1) == 1 and torch.get_num_threads() == 1
    assert threads._governor is None
    assert threads.report() == {"torch_threads": 1, "torch_threads_auto": False}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a user's environment counts as explicit
    assert threads.configure() == 1 and threads._governor is None
    # except in a joblib job, where joblib set it to the job's share: that is the cap
    assert threads.configure(cap=1, env=False) == 1 and threads._governor is not None


def test_by_default_the_count_is_governed_within_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = threads.usable_cores()
    assert threads.configure() == cores == torch.get_num_threads()
    assert threads._governor is not None and threads.report()["torch_threads_auto"] is True
    assert threads.configure(cap=1) == 1 == torch.get_num_threads()  # a launcher's share
    assert threads.configure(cap=10 * cores) == cores  # never more than the cores
    # a GPU run: torch keeps the cap, nothing follows the load
    assert threads.configure(device="cuda") == cores and threads._governor is None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_count_is_refused_naming_the_allowed_values(bad: object) -> None:
    with pytest.raises(ValueError, match=r"torch_threads=.*allowed: an int >= 1 or null"):
        threads.configure(bad)  # type: ignore[arg-type]


def test_a_bad_omp_num_threads_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two' in the environment"):
        threads.configure()


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cpu_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cpu_quota(tmp_path) is None


def test_the_test_processes_use_their_share_of_the_cores() -> None:
    """The suite runs under the same policy (tests/conftest.py): with xdist, each worker its
    share of the cores, fixed, for itself and the commands it launches."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = max(1, threads.usable_cores() // workers)
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"]) == share
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert int(done.stdout) == share


def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    for cpu, siblings in enumerate(["0,2", "1,3", "0,2", "1,3", "4"]):
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    assert threads.physical_cores([0, 1, 2, 3, 4], tmp_path) == 3
    assert threads.physical_cores([0, 2], tmp_path) == 1
    assert threads.physical_cores([0, 7], tmp_path) == 2  # cpu7: no topology, counts alone
