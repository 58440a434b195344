"""CPU taken from a round where the guest's counters do not show it: a CPU quota the harness did not set, the host.

Why it exists: foreign load and steal (``interference.py``) miss two losses.
A cgroup CPU quota stops the throttled task while its CPU reads idle; a host
that takes the CPU from a guest without steal accounting charges the loss to
whatever task was running.  Three cheap signals, each recorded in the round's
``interference`` and each enough to call it ``unseen`` (counted as
``disturbed``); the README's "How a figure stays trustworthy" has the figures
that set their thresholds.

* ``*_throttled`` (``Throttle``): the throttled time of the server's and the
  load's cgroups and their ancestors (``procfs.cgroup_cpu_dirs``) around the
  window; ``THROTTLED_SHARE`` or more.  Blind to a quota on the VM itself.
* ``loaded_idle``: a closed-loop round with ``LOADED_MIN_IN_FLIGHT`` or more
  in flight keeps one side always busy; the busier side off its CPU for
  ``LOADED_IDLE_SHARE`` with nothing foreign there lost the time to a quota
  the files do not show.  Only for a harness-started server over a stream
  transport.
* ``client_slowdown``: the client's CPU per operation (read, write,
  ``epoll_wait``) does not depend on the server's pace, so a closed-loop
  round needing ``CLIENT_SLOWDOWN`` times the least of its cell's clean
  rounds (at least ``SLOWDOWN_REFERENCE_ROUNDS`` earlier ones) ran on a
  slowed CPU: as with the canary, the fastest the client has been is its
  CPU's speed, and a median is no reference when slow stretches cover half
  a cell's rounds.  Set by the suite and ``ab`` (``with_client_slowdown``),
  which know the history.  A slow stretch of the host lasts from seconds to
  a minute and may cover a cell's first rounds, so the suite judges a cell's
  kept rounds again as each new one comes (``rejudge``), against all of its
  clean rounds.
* ``canary`` (``Canary``): fixed work timed in thread CPU time on each pinned
  CPU after the round, against its least this run; ``CANARY_SLOWDOWN`` or
  more.  A busy neighbour slows it too, so it speaks only below DISTURBED.

None sees a slowdown that lasts the whole run, a loss shorter than a window
on a guest without steal accounting, or a quota whose files cannot be read.
"""

import os
import statistics
import time

from sockbench.procfs import cgroup_cpu_dirs, read_throttled_s
from dataclasses import replace

from sockbench.thresholds import (
    CANARY_SLOWDOWN, CLIENT_SLOWDOWN, LOADED_IDLE_SHARE, LOADED_MIN_IN_FLIGHT, THROTTLED_SHARE,
)

__all__ = ["Throttle", "loaded_idle", "Canary", "is_unseen", "client_slowdown", "with_client_slowdown", "rejudge",
           "CANARY_LOOPS", "CANARY_TRIES", "SLOWDOWN_REFERENCE_ROUNDS", "REJUDGE_MIN_ROUNDS"]

#: the canary's work: this many turns of a pure-Python loop (about 0.5 ms on the 2-core machine)
CANARY_LOOPS = 20_000
#: tries per CPU after a round (the least counts); the calibration takes three times as many
CANARY_TRIES = 3


class Throttle:
    """The throttled seconds of the cgroups of a run's two sides, read at two instants (``read``)."""

    def __init__(self, server_pids, client_pids):
        self.sides = {"server": self._dirs(server_pids), "client": self._dirs(client_pids)}
        self.edges = []

    @staticmethod
    def _dirs(pids):
        out = []
        for pid in pids:
            for d in cgroup_cpu_dirs(pid):
                if d not in out:
                    out.append(d)
        return out

    def read(self):
        """One edge: the time now and every side's cgroups' throttled seconds."""
        self.edges.append((time.monotonic(), {side: {d: read_throttled_s(d) for d in dirs}
                                              for side, dirs in self.sides.items()}))

    def shares(self):
        """``{"server": share, "client": share}`` between the two edges (the most throttled cgroup of each side;
        None for a side with no readable cgroup or no pid)."""
        if len(self.edges) < 2:
            return {"server": None, "client": None}
        (t0, e0), (t1, e1) = self.edges[0], self.edges[-1]
        span = t1 - t0
        out = {}
        for side, dirs in self.sides.items():
            deltas = [e1[side][d] - e0[side][d] for d in dirs if e0[side][d] is not None and e1[side][d] is not None]
            out[side] = round(max(0.0, max(deltas)) / span, 6) if deltas and span > 0 else None
        return out


def loaded_idle(mode, transport, conns, depth, server_util, client_load):
    """1 - the busier side's CPU share in a closed-loop stream round with messages always queued; else None."""
    if mode != "closed" or transport == "udp" or conns * depth < LOADED_MIN_IN_FLIGHT:
        return None
    if server_util is None or client_load is None:
        return None
    return round(max(0.0, 1.0 - max(server_util, client_load)), 6)


def _work(loops):
    """The canary's fixed work, timed in this thread's CPU time (ns)."""
    t0 = time.thread_time_ns()
    x = 0
    for i in range(loops):
        x += i
    return time.thread_time_ns() - t0


class Canary:
    """A fixed piece of work timed on some CPUs: calibrated once, then compared after each round (``check``)."""

    def __init__(self, cpus, loops=CANARY_LOOPS, tries=CANARY_TRIES, work=_work):
        self.cpus = tuple(sorted(set(cpus)))
        self.loops = loops
        self.tries = tries
        self.work = work
        self.baseline = {cpu: self._time(cpu, 3 * tries) for cpu in self.cpus}

    def _time(self, cpu, tries):
        """The least CPU time of ``tries`` runs of the work, this thread pinned to ``cpu`` meanwhile."""
        old = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {cpu})
            return min(self.work(self.loops) for _ in range(tries))
        except OSError:
            return None
        finally:
            try:
                os.sched_setaffinity(0, old)
            except OSError:
                pass

    def check(self):
        """The worst slowdown over the CPUs now: the work's CPU time over the least it ever took on that CPU (the
        calibration, or any check since: the fastest the CPU has been is its speed), None if unread."""
        ratios = []
        for cpu in self.cpus:
            base, now = self.baseline.get(cpu), self._time(cpu, self.tries)
            if base and now:
                ratios.append(now / base)
                self.baseline[cpu] = min(base, now)
        return round(max(ratios), 4) if ratios else None

    def spread(self, tries=9):
        """The median ratio of fresh timings to the baseline: what a quiet CPU reads (for the tests and tools)."""
        return statistics.median(self._time(self.cpus[0], 1) / self.baseline[self.cpus[0]] for _ in range(tries))


#: the earlier clean rounds a cell's round is judged against, at the least: one, so that a cell's second round is
#: judged too (two default runs lost a pass to a slowed host that the canary read at 1.2, its second rounds 15-30%
#: low and kept, one outlier setting most cells' interval)
SLOWDOWN_REFERENCE_ROUNDS = 1


def _client_per_op(r):
    """The client's CPU seconds per operation (read, write, epoll_wait) in the window, None when uncounted."""
    c = r.client
    ops = (c.reads or 0) + (c.writes or 0) + (c.waits or 0)
    return (c.user_s + c.sys_s) / ops if ops and c.user_s is not None and c.sys_s is not None else None


def client_slowdown(result, earlier):
    """A closed-loop ``result``'s client CPU per operation over the least of ``earlier`` rounds' (valid, not
    disturbed; at least ``SLOWDOWN_REFERENCE_ROUNDS``), or None."""
    if result.workload.mode != "closed" or not result.valid:
        return None
    now = _client_per_op(result)
    ref = [v for v in (_client_per_op(r) for r in earlier if r.valid and not r.disturbed) if v]
    if not now or len(ref) < SLOWDOWN_REFERENCE_ROUNDS:
        return None
    return round(now / min(ref), 4)


def with_client_slowdown(result, earlier):
    """``result`` with its ``client_slowdown`` recorded, and unseen (so disturbed) when it crossed
    ``CLIENT_SLOWDOWN`` and nothing foreign explains it."""
    i = result.interference
    ratio = client_slowdown(result, earlier)
    if i is None or ratio is None:
        return result
    slow = ratio >= CLIENT_SLOWDOWN and not i.disturbed
    return replace(result, interference=replace(i, client_slowdown=ratio, unseen=i.unseen or slow,
                                                disturbed=i.disturbed or slow))


#: the clean rounds a cell needs before its kept rounds are judged again against all of them (two: the first round,
#: slowed, is judged once a second ran at full speed)
REJUDGE_MIN_ROUNDS = 2


def rejudge(results):
    """``[(index, judged)]``: the kept rounds, clean until now, whose client CPU per operation is
    ``CLIENT_SLOWDOWN`` times the least of ``results``' clean rounds, each with its ratio recorded and made unseen;
    none before ``REJUDGE_MIN_ROUNDS`` clean rounds."""
    clean = [r for r in results if r.valid and not r.disturbed]
    if len(clean) < REJUDGE_MIN_ROUNDS:
        return []
    out = []
    for i, r in enumerate(results):
        if r.valid and not r.disturbed:
            judged = with_client_slowdown(r, clean)
            if judged.disturbed:
                out.append((i, judged))
    return out


def is_unseen(server_throttled=None, client_throttled=None, idle=None, canary=None, seen=False):
    """True when one of the signals crossed its threshold (see the module doc).

    ``seen``: the round's foreign load was DISTURBED already.  Then an idle loop and a slow canary are
    explained by what the counters saw (a busy neighbour takes the CPU, and its cache, from both), and only
    the cgroups' throttled time, which is exact, still counts.
    """
    throttled = any(t is not None and t >= THROTTLED_SHARE for t in (server_throttled, client_throttled))
    if throttled or seen:
        return throttled
    return bool((idle is not None and idle >= LOADED_IDLE_SHARE) or (canary is not None and canary >= CANARY_SLOWDOWN))
