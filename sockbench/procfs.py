"""Readers of /proc: a process's CPU time (clock ticks and the scheduler's exact runtime) and memory.

The one place in Python that parses these files.  The load generator has a
nogil C twin of ``read_proc_stat`` and ``read_task_cpu_s`` (``sample_server``
in ``ext/loadgen.pyx``), which reads the same counters at the edges of the
measured window without waking this interpreter.
"""

import os

from sockbench.errors import SockbenchError

__all__ = ["TICK_S", "read_proc_stat", "read_task_cpu_s", "read_rss_bytes"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the unit of /proc/PID/stat's utime and stime, in seconds (10 ms here)
TICK_S = 1.0 / _CLK_TCK


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
