"""Foreign load on a run's CPUs: what ran there over the measured window that was neither the server nor
the load processes.

How it is measured
------------------
The first load process reads the /proc/stat lines of every pinned CPU (the
server's and the client's) at the two edges of the window, from its C loop,
at the same instants as it samples the server's CPU (``ext/procfs.h``;
``sockbench.procfs.parse_cpu_times`` is the Python twin).  For one side (its
CPUs ``X``) over the window's ``elapsed`` seconds:

``busy``
    ``elapsed - Δ(idle + iowait) - Δsteal`` per CPU of ``X``, added up.  The
    idle columns are the kernel's tickless idle clock (exact, only rounded
    to the 10 ms tick when printed), so the time the CPU was not idle is
    known to within one tick per CPU; the columns user, system, softirq ...
    are charged a whole scheduler tick at a time to whatever ran when it
    fired, a sample rather than a measurement, so they are not added up.
    Steal (the hypervisor ran someone else) is neither idle nor ours: it is
    reported apart (``*_steal``).
``own``
    What the run's own processes used on ``X``: the server's exact runtime
    (the scheduler's, from /proc/PID/task/*/schedstat, as ``server_proc``
    reports it) when its CPUs are ``X``, and each load process's
    ``getrusage`` over the window when its CPU is in ``X``.
``irq``
    Interrupt work.  A kernel without ``CONFIG_IRQ_TIME_ACCOUNTING`` (the
    default, and this project's reference machine) runs softirqs, the
    loopback path of every message included, inside the runtime of the task
    they interrupted, which ``own`` then holds already; with it, irq and
    softirq time is in no task's runtime, so ``Δ(irq + softirq)`` of ``X``
    is counted as the run's own (on a pinned loopback benchmark it is the
    network stack serving the run; a foreign process's interrupt work is
    then missed, not invented).  ``sockbench.procfs.irq_time_accounting``
    tells which kernel this is.
``foreign``
    ``busy - own - irq`` (never below 0), capped by what other processes
    were charged: ``*_foreign`` is it as a share of ``X``'s CPUs
    (``foreign / (elapsed * len(X))``, the mean over the CPUs).
``the cap``
    On a quiet CPU the residual ``busy - own`` is not zero: every wake-up
    of an idle CPU costs time that is neither idle nor any task's runtime
    (leaving idle, the wake-up itself; on a VM, the exit from a halted
    vCPU).  An open-loop round wakes the server's CPU once per message, so
    a quiet 37,000 msgs/s round read 15-20% "foreign" with nothing else
    running.  So the residual is only believed as far as some other process
    accounts for it: the harness snapshots every process's ticks and last
    CPU (``sockbench.procfs.process_snapshot``) just before the window opens
    and after it closes, and the CPU time of processes outside the run that
    were seen on ``X`` (``foreign_process_s``; reaped children included, so
    a build's short-lived compilers count in their parent) caps the
    residual.  A neighbour busy through the window shows in both, and the
    smaller is kept; the run's own wake-ups show in the residual only.  The
    snapshots span a little more than the window (the warmup, the
    collection), which the residual, measured over the window alone, bounds.

When the server's and the client's CPUs overlap, the two sides cannot be
told apart: both read the figure of their union.  With ``--target`` the
server's CPUs are unknown and its side is ``None``; such a server, when it
runs on the client's CPUs, is foreign there (it is not this run's process).

The verdict
-----------
``disturbed`` when, on either side, the foreign or the steal time reached
``DISTURBED_SHARE`` of ONE pinned CPU (5% of the window), beyond what the
counters' resolution can produce by themselves: the idle clock is printed in
whole ticks, so each CPU's ``busy`` is off by less than one tick
(``TICK_S``) and a quiet side may read up to ``len(X)`` ticks of foreign
time.  A 1 s window is disturbed from 60 ms of foreign time on a one-CPU
side, a 0.2 s window from 20 ms: short windows need a larger share to be
sure, which a neighbour that shares a busy CPU (it gets about half of it)
always reaches.
"""

from dataclasses import dataclass

from sockbench.bench.schema import Interference
from sockbench.procfs import CPU_FIELDS, TICK_S
from sockbench.thresholds import DISTURBED_SHARE

__all__ = ["SideTime", "side_time", "interference"]

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
                 process_s=None):
    """The ``Interference`` of a run from load process 0's ``cpu_stat`` (``[edge0, edge1]``).

    ``server_cpus``: the CPUs the server was pinned to (None when unknown: ``--target``); ``server_s``: its
    CPU time over the window (None when unread); ``load_procs``: ``[(cpus, seconds)]`` of each load process;
    ``process_s(cpus)``: other processes' CPU seconds seen on ``cpus`` around the window, the cap (None: no cap).
    None when the counters were not read.
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
    return Interference(
        server_foreign=server_side.foreign_share if server_side else None,
        client_foreign=client_side.foreign_share if client_side else None,
        server_steal=server_side.steal_share if server_side else None,
        client_steal=client_side.steal_share if client_side else None,
        loadavg_1m=loadavg_1m,
        disturbed=any(s.disturbed for s in sides),
    )
