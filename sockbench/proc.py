"""Start a registered server as its own process, through ``sockbench serve``, and stop it by pid.

The conformance suite and the load harness both use this, so a server is
always exercised through the same process contract that users see.
"""

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from sockbench.errors import SockbenchError

__all__ = ["ServerProcess", "read_proc_stat", "read_task_cpu_s", "read_rss_bytes", "held_signals", "child_setup",
           "TICK_S"]

READY_TIMEOUT_S = 15.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the unit of /proc/PID/stat's utime and stime, in seconds (10 ms here)
TICK_S = 1.0 / _CLK_TCK


#: the signals that stop a run (Ctrl-C, and the runner's SIGTERM after its grace)
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM while a child process is started and its handle stored.

    A KeyboardInterrupt raised between the fork and the moment the caller
    holds the ``Popen`` object leaves a child whose pid nobody knows: an
    orphan server that runs forever (``sockbench run``'s Ctrl-C lands right
    after a round, which is when the next server starts).  Held, the signal
    waits; it is raised when the block ends, once the caller can stop the
    child.  Start the child with ``preexec_fn=child_setup(...)``: it must not
    inherit the held mask.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def child_setup(cpus=None):
    """A ``preexec_fn``: the child takes SIGINT and SIGTERM again (see ``held_signals``), pinned to ``cpus``."""

    def setup():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def read_proc_stat(pid):
    """Return ``(user_s, sys_s)`` of a live process from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    # after "pid (comm)": state is field 3; utime and stime are fields 14 and 15
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def read_task_cpu_s(pid):
    """Exact on-CPU time (user + system, ns resolution) of a live process's *current* threads, in seconds.

    The sum of ``/proc/PID/task/TID/schedstat``'s first field (the scheduler's
    runtime).  Unlike ``read_proc_stat`` it is not rounded to clock ticks, but
    a thread that has ended takes its time with it (only ``blocking`` has
    threads that come and go).  The harness reads the same counters from its
    C load loop (``sample_server`` in ``ext/loadgen.pyx``).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total / 1e9


def read_rss_bytes(pid, key="VmRSS"):
    """Resident set size (``VmRSS``) or its peak (``VmHWM``) of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise SockbenchError(f"/proc/{pid}/status has no {key}")


class ServerProcess:
    """``sockbench serve NAME --host H --port 0`` in a child process, optionally pinned.

    Use as a context manager; leaving it always stops the child by pid.
    """

    def __init__(self, name, host="127.0.0.1", port=0, cpus=None, extra_args=(), env=None):
        self.name = name
        self.cmd = [sys.executable, "-m", "sockbench", "serve", name, "--host", host, "--port", str(port), *extra_args]
        self.cpus = sorted(cpus) if cpus else None
        self.env = env
        self.proc = None
        self.ready = None
        self._stderr = None

    @property
    def pid(self):
        return self.ready["pid"] if self.ready else self.proc.pid

    @property
    def address(self):
        return self.ready["host"], self.ready["port"]

    def start(self, timeout=READY_TIMEOUT_S):
        # stderr goes to a file, never a pipe: a chatty server must not block on a full pipe
        self._stderr = tempfile.TemporaryFile()
        try:
            with held_signals():  # a Ctrl-C now is raised after self.proc is set, and stops it below
                self.proc = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=self._stderr,
                    preexec_fn=child_setup(self.cpus),
                    env=self.env,
                )
            self.ready = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SockbenchError(f"server {self.name!r} printed no ready line within {timeout:.0f} s")
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(5)
                    err = self.stderr_text().strip().splitlines()
                    why = err[-1] if err else f"exit status {self.proc.returncode}"
                    raise SockbenchError(f"server {self.name!r} exited before it was ready: {why}")
                line += chunk
        finally:
            sel.close()
        try:
            ready = json.loads(line)
        except ValueError:
            raise SockbenchError(f"server {self.name!r} printed a malformed ready line: {line[:200]!r}") from None
        if ready.get("event") != "ready":
            raise SockbenchError(f"server {self.name!r} printed {line[:200]!r} instead of a ready line")
        return ready

    def stderr_text(self):
        """Everything the server wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM by pid, wait; SIGKILL if it does not exit in time.  Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        if not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
