"""How many CPU threads torch computes with: the cores this process may use, less the cores
other processes keep busy.

Why: each of torch's parallel regions waits for its slowest thread, and a thread on a core that
another process keeps busy is always slow. With both cores of a 2-core machine in torch's pool
and one of them busy elsewhere, training ran 11x slower; with one thread fewer, it kept about
two thirds of its idle speed (BENCHMARKS.md, "Threads on a busy machine"). One thread for good
costs a third of the idle speed instead, so the count follows the load:

- :func:`configure` sets the count once per process (every ``rankgym`` command calls it):
  an explicit count (``torch_threads``, else ``OMP_NUM_THREADS``) is kept as given; on a GPU
  run torch keeps its cap; otherwise a :class:`ThreadGovernor` starts at the cap.
- :func:`tick`, called from the long loops (env steps, the neural fit's batches, the encoder's
  batches), reads the load every :data:`INTERVAL` seconds (``/proc/stat``'s busy time of this
  process's cores less this process's own CPU time). The first reading sets the count; later
  ones move it when two in a row agree, so that a short burst elsewhere does not flip it.

The count changes the order of torch's float sums, so a run is bit-for-bit reproducible from
its seed at a fixed count: set ``torch_threads`` for that on a shared machine.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERVAL = 0.5  # seconds between load readings
_governor: ThreadGovernor | None = None
_start: int | None = None  # the count configure() set (None: not configured)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores' worth of CPU time the cgroup allows (a container's ``--cpus``), or ``None``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # cgroup v1
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def physical_cores(cpus: list[int], root: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many physical cores ``cpus`` sit on: hyper-threads of one core count once (two
    threads on one core contend for its units). Each CPU counts as a core where the topology
    is unreadable."""
    cores = set()
    for cpu in cpus:
        try:
            siblings = root / f"cpu{cpu}" / "topology" / "thread_siblings_list"
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")
    return max(1, len(cores))


def usable_cores(cpus: list[int] | None = None) -> int:
    """How many threads this process may keep busy: the physical cores of its CPUs (``cpus``,
    default :func:`usable_cpus`), bounded by a cgroup quota (a container's ``--cpus``)."""
    cores = physical_cores(usable_cpus() if cpus is None else cpus)
    quota = cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


class LoadSampler:
    """Cores other processes kept busy since the previous reading, on ``cpus``: their busy time
    in ``/proc/stat`` less this process's own CPU time (all its threads), over the wall time."""

    def __init__(self, cpus: list[int], stat: Path = Path("/proc/stat")) -> None:
        self.cpus, self.stat = set(cpus), stat
        self.tick_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """(busy seconds of ``cpus``, this process's CPU seconds, wall seconds), or ``None``
        where there is no ``/proc/stat`` (not Linux)."""
        try:
            text = self.stat.read_text()
        except OSError:
            return None
        busy = 0
        for line in text.splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                # user nice system idle iowait irq softirq steal: busy is all but idle, iowait
                ticks = [int(f) for f in fields[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]
        return busy / self.tick_s, time.process_time(), time.monotonic()

    def __call__(self) -> float | None:
        """Other processes' busy cores since the last call (``None``: cannot tell)."""
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[2] - last[2] <= 0:
            return None
        return max(0.0, ((now[0] - last[0]) - (now[1] - last[1])) / (now[2] - last[2]))


class ThreadGovernor:
    """Keeps torch's thread count at the idle CPUs of the ``cpus`` this process runs on (the
    CPUs less those others keep busy), within ``[1, cap]``. On a host with more CPUs than a
    container's quota (``cap``), others' load costs threads only once too few CPUs are idle.
    Acts only from the thread that made it (torch's count is per thread)."""

    def __init__(
        self,
        cap: int,
        cpus: int,
        sampler: Callable[[], float | None],
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        self.cap, self.cpus, self.sampler = cap, cpus, sampler
        self.set_threads, self.clock, self.interval = set_threads, clock, interval
        self.owner = threading.get_ident()
        self.threads = cap
        self.pending: int | None = None  # the previous reading's count (None: no reading yet)
        self.switches = 0
        self.last = self.since = clock()
        self.seconds: dict[int, float] = {}  # wall seconds at each count
        set_threads(cap)

    def wanted(self, other: float) -> int:
        """The count for ``other`` busy cores elsewhere: a core counts from half busy."""
        return max(1, min(self.cap, math.floor(self.cpus - other + 0.5)))

    def tick(self) -> None:
        """Read the load if :attr:`interval` has passed; move the count on the first reading,
        then when a reading agrees with the previous one."""
        now = self.clock()
        if now - self.last < self.interval or threading.get_ident() != self.owner:
            return
        self.last = now
        other = self.sampler()
        if other is None:
            return
        want = self.wanted(other)
        if want != self.threads and self.pending in (None, want):  # the first reading acts
            self._account(now)
            self.threads = want
            self.switches += 1
            self.set_threads(want)
        self.pending = want

    def _account(self, now: float) -> None:
        self.seconds[self.threads] = self.seconds.get(self.threads, 0.0) + now - self.since
        self.since = now

    def report(self) -> dict[str, Any]:
        """The share of wall time at each count, and the number of switches."""
        self._account(self.clock())
        total = sum(self.seconds.values()) or 1.0
        share = {str(k): round(v / total, 3) for k, v in sorted(self.seconds.items()) if v > 0}
        return {"torch_threads_share": share, "torch_thread_switches": self.switches}


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _explicit_env() -> int | None:
    """``OMP_NUM_THREADS`` from the environment, as an explicit count (``None``: unset)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"OMP_NUM_THREADS={value!r} in the environment; allowed: an int >= 1")
    return int(value)


def configure(
    threads: int | None = None, cap: int | None = None, device: str = "cpu", env: bool = True
) -> int:
    """Set torch's CPU threads for this process and return the count it starts with.

    threads: an explicit count, kept for the whole run (``None``: ``OMP_NUM_THREADS`` if set,
        else the governed default).
    cap: the most threads this process should use (a parallel launcher's share of the cores;
        ``None``: every usable core).
    device: on ``cuda``, torch keeps ``cap`` threads and no governor runs (the CPU does little).
    env: read ``OMP_NUM_THREADS`` as an explicit count (off in a joblib job: joblib sets it to
        the job's share of the cores, which is ``cap``, not a user's choice).
    """
    global _governor, _start
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):  # fmt: skip
        raise ValueError(f"torch_threads={threads!r}; allowed: an int >= 1 or null (auto)")
    cpus = usable_cpus()
    cores = usable_cores(cpus)
    cap = max(1, min(cores, cap)) if cap else cores
    explicit = threads if threads is not None or not env else _explicit_env()
    if explicit is not None or str(device).startswith("cuda"):
        _governor, _start = None, explicit or cap
        _set_torch_threads(_start)
    else:  # the governor sets the cap
        _governor = ThreadGovernor(cap, len(cpus), LoadSampler(cpus), _set_torch_threads)
        _start = cap
    return _start


def tick() -> None:
    """Let the governor (if :func:`configure` started one) follow the machine's load. Cheap:
    a clock read between readings; call it from loops whose iterations take milliseconds."""
    if _governor is not None:
        _governor.tick()


def report() -> dict[str, Any]:
    """For ``metrics.json``: the count set (or the governor's cap), whether it followed the
    load, and then the share of time at each count and the number of switches (``{}`` before
    :func:`configure`)."""
    if _start is None:
        return {}
    if _governor is None:
        return {"torch_threads": _start, "torch_threads_auto": False}
    return {"torch_threads": _start, "torch_threads_auto": True, **_governor.report()}
