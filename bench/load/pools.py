"""What a run of many rounds keeps alive between them: its load processes and its servers.

Why it is built this way: starting and stopping a server and a load process
costs a sizeable share of a short round besides its warmup and window, and
interleaved rounds (``sockbench run``'s passes, ``sockbench ab``) visit every
server once a pass, so both are kept:

* ``LoadPool`` keeps load processes (a worker waits for its next parameters
  after a result): ``run_load(pool=...)`` takes one per share of the
  connections and gives back those that finished cleanly; a failed one is
  stopped and replaced.
* ``ServerPool`` keeps one server per (server, protocol, transport, workers,
  environment), started pinned at its first round, stopped at the end or at
  ``release``.  Idle between rounds (no connection, no timer; CPU it uses
  there is foreign load in other rounds).  ``use()`` resets its peak RSS
  before a round (``/proc/PID/clear_refs``, so ``rss_peak_bytes`` is the
  round's) and after it waits until the server is ``settle``d (descriptors
  back to their ready count, no CPU for ``SETTLE_QUIET_S``), so that no
  clean-up lands in the next window.  A server that died restarts at its
  next round; the round it died in says so.

One process serves all of a server's rounds, so what differs between two
processes of the same code (addresses, hash seeds) is sampled by runs, not rounds.
"""

import os
import time
from contextlib import contextmanager

from sockbench.bench.load.harness import _Worker, server_process
from sockbench.children import held_signals
from sockbench.procfs import read_task_runtimes
from sockbench.servers.process import ServerProcess

__all__ = ["LoadPool", "ServerPool", "SETTLE_TIMEOUT_S", "SETTLE_QUIET_S"]

#: the longest a round waits for its server to close its connections and go idle
SETTLE_TIMEOUT_S = 2.0
#: how long a server must use no CPU to count as idle
SETTLE_QUIET_S = 0.005
#: ... no CPU: less than this many seconds of it over SETTLE_QUIET_S
SETTLE_CPU_S = 0.0002


class LoadPool:
    """Load processes kept between rounds: ``take()`` one ready to start, ``give_back()`` it after a clean run."""

    def __init__(self, size=1):
        self.idle = []
        self.size = size
        self.closed = False
        self.fill()

    def fill(self):
        """Start processes until ``size`` wait idle (they import the loop meanwhile, outside any window)."""
        while len(self.idle) < self.size and not self.closed:
            with held_signals():
                self.idle.append(_Worker())

    def take(self):
        while self.idle:
            w = self.idle.pop(0)
            if w.alive():
                return w
            w.stop()
        with held_signals():
            return _Worker()

    def give_back(self, worker):
        if self.closed or not worker.alive():
            worker.stop()
        else:
            self.idle.append(worker)

    @property
    def pids(self):
        return [w.proc.pid for w in self.idle]

    def close(self):
        self.closed = True
        while self.idle:
            self.idle.pop().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _cpu_s(pids):
    total = 0.0
    for pid in pids:
        try:
            total += sum(read_task_runtimes(pid).values())
        except OSError:
            pass
    return total


class ServerPool:
    """One started server per (name or command, interpreter, protocol, transport, workers, TLS, environment), kept
    between its rounds."""

    def __init__(self, cpus, environment=None, clock=time.monotonic):
        self.cpus = tuple(cpus)
        self.environment = environment
        self.servers = {}
        #: pid -> descriptors the process held once ready (what ``settle`` waits to get back to)
        self.baseline = {}
        #: how many times a server had to be started again because it had died
        self.restarts = 0
        self.clock = clock

    @staticmethod
    def key_of(spec, environment=None, extra=()):
        return (spec.server, spec.command, spec.server_python, spec.protocol, spec.transport, spec.workers, spec.tls,
                environment, tuple(extra))

    def get(self, spec, environment=None, extra=()):
        """The running server for ``spec`` (started, or started again when it died)."""
        env = environment if environment is not None else self.environment
        key = self.key_of(spec, env, extra)
        server = self.servers.get(key)
        if server is not None and not server.alive():
            server.stop()
            del self.servers[key]
            self.restarts += 1
            server = None
        if server is None:
            server = server_process(spec, self.cpus, extra, environment=env)
            self.servers[key] = server  # stored before it starts: a Ctrl-C while it starts still stops it
            try:
                server.start()
            except BaseException:
                del self.servers[key]  # start() stopped it
                raise
            for pid in server.pids:
                self.baseline[pid] = _fd_count(pid)
        return server

    @contextmanager
    def use(self, spec, environment=None, extra=()):
        """The server of ``spec`` for one round: its peak RSS reset before, settled after."""
        server = self.get(spec, environment, extra)
        for pid in server.pids:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
            except OSError:
                pass  # the figure is then the process's peak so far
        try:
            yield server
        finally:
            self.settle(server)

    def settle(self, server, timeout=SETTLE_TIMEOUT_S):
        """Wait until ``server`` has closed the round's connections and uses no CPU; True if it did within
        ``timeout``.

        Closed: it holds no more descriptors than when it was ready, or, for one that keeps a descriptor it
        opened at its first connection (uvloop's loop does), the same number as ``SETTLE_QUIET_S`` ago while
        it used no CPU meanwhile (that number is then its new resting count).
        """
        deadline = self.clock() + timeout
        pids = server.pids
        last = None
        while self.clock() < deadline and server.alive():
            counts = {pid: _fd_count(pid) for pid in pids}
            cpu = _cpu_s(pids)
            if all(n is None or self.baseline.get(pid) is None or n <= self.baseline[pid] for pid, n in counts.items()):
                break
            if last is not None and counts == last[0] and cpu - last[1] < SETTLE_CPU_S:
                self.baseline.update({pid: n for pid, n in counts.items() if n is not None})
                return True
            last = (counts, cpu)
            time.sleep(SETTLE_QUIET_S)
        while self.clock() < deadline and server.alive():
            before = _cpu_s(pids)
            time.sleep(SETTLE_QUIET_S)
            if _cpu_s(pids) - before < SETTLE_CPU_S:
                return True
        return False

    @property
    def pids(self):
        return [pid for s in self.servers.values() if s.proc is not None for pid in (*s.pids, s.proc.pid)]

    def release(self, spec, environment=None, extra=()):
        """Stop the server of ``spec`` (no round needs it any more)."""
        env = environment if environment is not None else self.environment
        server = self.servers.pop(self.key_of(spec, env, extra), None)
        if server is not None:
            server.stop()

    def close(self):
        while self.servers:
            _, server = self.servers.popitem()
            server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
