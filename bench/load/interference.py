"""Foreign load on a run's CPUs: what ran there over the measured window that was neither the server nor
the load processes.

Load process 0 reads every pinned CPU's /proc/stat line at the window's edges
from its C loop (``ext/procfs.h``; ``sockbench.procfs`` is the Python twin).
For one side (CPUs ``X``, window ``elapsed``):

* ``busy`` = ``elapsed - Δ(idle + iowait) - Δsteal`` per CPU: the idle
  clock is exact (tickless), while user/system columns are tick samples, so
  only idle is trusted.  Steal is reported apart (``*_steal``).
* ``own`` = the server's scheduler runtime (schedstat) plus each load
  process's ``getrusage`` on ``X``.
* ``irq``: counted as the run's own only on a kernel with
  ``CONFIG_IRQ_TIME_ACCOUNTING`` (``procfs.irq_time_accounting``); without
  it, softirqs are already inside the runtime of the task they interrupted.
* ``foreign`` = ``busy - own - irq``, capped by the CPU time of processes
  outside the run seen on ``X`` (``procfs.process_snapshot`` around the
  window, ``foreign_process_s``): every wake-up of an idle CPU costs time that
  is no task's, so the residual alone would call a quiet open-loop round
  disturbed.  ``*_foreign`` is its share of ``X``.

Overlapping server and client CPUs read their union; with ``--target`` the
server side is ``None`` and a server on the client's CPUs is foreign there.

``disturbed``: on either side, foreign or steal time reached
``DISTURBED_SHARE`` of ONE CPU beyond the counters' resolution (up to one
``TICK_S`` per CPU).

``held``: how long other threads held a side's CPUs in slices long enough
to keep a waking process waiting (``procfs.foreign_stalls``: exact
runtimes from every thread's schedstat, around the window and its
warmup), both sides' together (a thread seen on each side's CPUs counts
once there), and which.  A share of the CPU is the wrong scale for a tail: on
the 2-core VM the kernel's DAMON sampler and the sandbox's agent took
0.5-5% of a CPU, never DISTURBED, yet each of their 1-60 ms slices left
every message due meanwhile late, and those messages were the p99.  It is
shown beside the open loop's p99, not a flag: a monitor that samples
every half second holds every round, so measuring again cannot escape it
(``sockbench.damon`` pauses DAMON instead).
"""

from dataclasses import dataclass

from sockbench.bench.schema import Interference
from sockbench.procfs import CPU_FIELDS, TICK_S
from sockbench.thresholds import DISTURBED_SHARE

__all__ = ["SideTime", "side_time", "interference"]

#: how many of the threads that held the pinned CPUs a result names (``held_by``), longest first
HELD_BY_NAMED = 3

_IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = (CPU_FIELDS.index(k) for k in ("idle", "iowait", "irq", "softirq", "steal"))


@dataclass(frozen=True)
class SideTime:
    """One side's CPUs over the window, in CPU-seconds summed over its ``cpus``."""

    cpus: tuple
    elapsed_s: float
    busy_s: float
    steal_s: float
    irq_s: float
    own_s: float
    irq_is_own: bool
    #: other processes' CPU time seen on ``cpus`` around the window (None: not read, no cap)
    process_s: float | None = None

    @property
    def foreign_s(self):
        residual = max(0.0, self.busy_s - self.own_s - (self.irq_s if self.irq_is_own else 0.0))
        return residual if self.process_s is None else min(residual, self.process_s)

    def _share(self, seconds):
        return seconds / (self.elapsed_s * len(self.cpus)) if self.elapsed_s > 0 and self.cpus else None

    @property
    def foreign_share(self):
        return self._share(self.foreign_s)

    @property
    def steal_share(self):
        return self._share(self.steal_s)

    @property
    def resolution_s(self):
        """What the counters' rounding alone can make of a quiet side: one tick per CPU."""
        return TICK_S * len(self.cpus)

    @property
    def disturbed(self):
        floor = DISTURBED_SHARE * self.elapsed_s + self.resolution_s
        return self.foreign_s >= floor or self.steal_s >= floor


def side_time(cpus, edge0, edge1, own_s, irq_is_own=False, process_s=None):
    """``SideTime`` of ``cpus`` between two ``cpu_stat`` edges (``{"t_ns", "cpus": {cpu: counters}}``,
    counters in clock ticks in ``CPU_FIELDS`` order); None when a CPU's line is missing at either edge."""
    cpus = tuple(sorted(cpus))
    c0, c1 = edge0["cpus"], edge1["cpus"]
    if not cpus or any(c not in c0 or c not in c1 for c in cpus):
        return None
    elapsed = (edge1["t_ns"] - edge0["t_ns"]) / 1e9
    busy = steal = irq = 0.0
    for c in cpus:
        d = [(b - a) * TICK_S for a, b in zip(c0[c], c1[c])]
        steal += d[_STEAL]
        irq += d[_IRQ] + d[_SOFTIRQ]
        busy += max(0.0, elapsed - d[_IDLE] - d[_IOWAIT] - d[_STEAL])
    return SideTime(cpus=cpus, elapsed_s=elapsed, busy_s=busy, steal_s=steal, irq_s=irq, own_s=own_s,
                    irq_is_own=bool(irq_is_own), process_s=process_s)


def interference(cpu_stat, server_cpus, client_cpus, server_s, load_procs, loadavg_1m=None, irq_is_own=False,
                 process_s=None, held=None):
    """The ``Interference`` of a run from load process 0's ``cpu_stat`` (``[edge0, edge1]``).

    ``server_cpus``: the CPUs the server was pinned to (None when unknown: ``--target``); ``server_s``: its
    CPU time over the window (None when unread); ``load_procs``: ``[(cpus, seconds)]`` of each load process;
    ``process_s(cpus)``: other processes' CPU seconds seen on ``cpus`` around the window, the cap (None: no cap);
    ``held(cpus)``: ``procfs.foreign_stalls`` on ``cpus`` (None: not read).  None when the counters were not
    read.
    """
    if not cpu_stat or len(cpu_stat) != 2 or cpu_stat[0] is None or cpu_stat[1] is None:
        return None
    edge0, edge1 = cpu_stat
    client = set(client_cpus)
    server = set(server_cpus) if server_cpus is not None else None

    def own(cpus):
        total = sum(seconds for pcpus, seconds in load_procs if set(pcpus) <= cpus)
        if server is not None and server <= cpus:
            if server_s is None:
                return None  # the server's time is unknown: its side's foreign time cannot be told
            total += server_s
        return total

    def side(cpus):
        o = own(cpus)
        cap = process_s(cpus) if process_s is not None else None
        return side_time(cpus, edge0, edge1, o, irq_is_own, cap) if o is not None else None

    if server is not None and server & client:
        both = side(server | client)
        server_side = client_side = both
    else:
        server_side = side(server) if server is not None else None
        client_side = side(client)
    if server_side is None and client_side is None:
        return None
    sides = [s for s in (server_side, client_side) if s is not None]
    server_held = held(server) if held is not None and server is not None else None
    client_held = held(client) if held is not None else None
    # both sides at once: a thread seen on a CPU of each (it moved between the snapshots) counts once
    both_held = held(server | client) if server_held is not None else client_held
    return Interference(
        server_foreign=server_side.foreign_share if server_side else None,
        client_foreign=client_side.foreign_share if client_side else None,
        server_steal=server_side.steal_share if server_side else None,
        client_steal=client_side.steal_share if client_side else None,
        loadavg_1m=loadavg_1m,
        disturbed=any(s.disturbed for s in sides),
        server_held_s=server_held[0] if server_held is not None else None,
        client_held_s=client_held[0] if client_held is not None else None,
        held_s=both_held[0] if both_held is not None else None,
        held_by=[{"thread": comm, "pid": pid, "s": seconds} for comm, pid, seconds
                 in both_held[1][:HELD_BY_NAMED]] if both_held is not None and both_held[1] else None,
    )
