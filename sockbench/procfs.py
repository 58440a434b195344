"""Readers of /proc: a process's CPU time (clock ticks and the scheduler's exact runtime) and memory, the
per-CPU counters of /proc/stat, and the processes busy on some CPUs.

The one place in Python that parses these files.  The load generator has a
nogil C twin of ``read_proc_stat``, ``read_task_cpu_s`` and
``read_cpu_times`` (``ext/procfs.h``, called from ``ext/loadgen.pyx``), which
reads the same counters at the edges of the measured window without waking
this interpreter; these readers serve the checks before a run and the tests.

/proc/stat's per-CPU lines count clock ticks (``TICK_S``, 10 ms): the
columns user, nice, system, irq, softirq and steal are charged a whole
scheduler tick at a time to whatever was running when it fired, while idle
and iowait are measured (the tickless idle clock) and only rounded to the
tick.  How interrupt work is charged depends on the kernel:
``irq_time_accounting()`` says which (see ``sockbench.bench.load.interference``
for what the harness makes of it).

``cgroup_cpu_dirs`` finds the folders of the cgroups whose CPU quota can
throttle a process (its own and every ancestor's, under cgroup v1's ``cpu``
controller or the unified v2 hierarchy), from /proc/PID/cgroup and the
mounts in /proc/self/mountinfo; ``read_throttled_s`` reads how long one of
them has been throttled (``cpu.stat``: v1's ``throttled_time`` in ns, v2's
``throttled_usec``).

``tcp_socket_inodes`` lists the inodes of this network namespace's TCP
sockets (/proc/net/tcp and tcp6), by which a socket another process held
can be seen to be gone.

``busy_processes`` samples every /proc/PID/stat twice: the process's CPU
time in ticks (utime + stime, all its threads), the CPU it last ran on, and
its affinity, to name what already runs on the CPUs a benchmark is about to
use.  ``marked_processes`` finds a process tree by a mark in its environment,
which every descendant inherits and keeps when its parent dies and it is
reparented (a pid list or a process group would lose it then).
"""

import gzip
import os
import platform
import time
from typing import NamedTuple

from sockbench.errors import SockbenchError
from sockbench.thresholds import STALL_SLICE_S

__all__ = [
    "process_snapshot",
    "foreign_process_s",
    "TICK_S",
    "CPU_FIELDS",
    "read_proc_stat",
    "read_proc_state",
    "read_task_cpu_s",
    "read_task_runtimes",
    "read_rss_bytes",
    "parse_cpu_times",
    "read_cpu_times",
    "irq_time_accounting",
    "BusyProcess",
    "busy_processes",
    "process_family",
    "cgroup_cpu_dirs",
    "read_throttled_s",
    "process_tree",
    "group_members",
    "marked_processes",
    "read_wchan",
    "tcp_socket_inodes",
    "thread_snapshot",
    "foreign_stalls",
    "mark_run_root",
    "RUN_ROOT_ENV",
]

#: the environment variable naming the process at the top of a run (``mark_run_root``): the ancestors of a
#: round's process up to it are the run's own, those above it (a shell, init) are not
RUN_ROOT_ENV = "SOCKBENCH_RUN_ROOT"

_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the unit of /proc/PID/stat's utime and stime, in seconds (10 ms here)
TICK_S = 1.0 / _CLK_TCK


#: the fields of /proc/PID/stat after "pid (comm)", counted from 0 (proc(5) counts them from 1: state is its 3)
_STATE, _PPID, _PGRP, _UTIME, _STIME, _CUTIME, _CSTIME, _PROCESSOR = 0, 1, 2, 11, 12, 13, 14, 36


def _read_stat(path):
    """``(comm, fields)`` of a /proc/.../stat file: the name between the parentheses (which may hold spaces and
    parentheses of its own) and the fields after it, as bytes; raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        raw = f.read()
    close = raw.rindex(b")")
    return raw[raw.index(b"(") + 1 : close].decode(errors="replace"), raw[close + 2 :].split()


def read_proc_state(pid):
    """The one-letter state of a live process (``R``, ``S``, ``D``, ``Z``...) from /proc/PID/stat; OSError if gone."""
    return _read_stat(f"/proc/{pid}/stat")[1][_STATE].decode()


def read_proc_stat(pid):
    """Return ``(user_s, sys_s)`` of a live process from /proc/PID/stat."""
    _, fields = _read_stat(f"/proc/{pid}/stat")
    return int(fields[_UTIME]) / _CLK_TCK, int(fields[_STIME]) / _CLK_TCK


def read_task_runtimes(pid):
    """``{tid: seconds}``: the scheduler's runtime of each *current* thread of a live process (see ``read_task_cpu_s``)."""
    runtimes = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                runtimes[int(tid)] = int(f.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return runtimes


def read_task_cpu_s(pid):
    """Exact on-CPU time (user + system, ns resolution) of a live process's *current* threads, in seconds.

    The sum of ``/proc/PID/task/TID/schedstat``'s first field (the scheduler's
    runtime).  Unlike ``read_proc_stat`` it is not rounded to clock ticks, but
    a thread that has ended takes its time with it (only ``blocking`` has
    threads that come and go).  The harness reads the same counters from its
    C load loop (``sample_server`` in ``ext/loadgen.pyx``).
    """
    return sum(read_task_runtimes(pid).values())


def read_rss_bytes(pid, key="VmRSS"):
    """Resident set size (``VmRSS``) or its peak (``VmHWM``) of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise SockbenchError(f"/proc/{pid}/status has no {key}")


#: the columns of a /proc/stat CPU line that are kept, in order (guest time is inside user and nice already)
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_cpu_times(text, cpus=None):
    """The per-CPU lines of /proc/stat's ``text``: ``{cpu: [user, nice, system, idle, iowait, irq, softirq,
    steal]}`` in clock ticks, for ``cpus`` (every CPU when None); a column the kernel lacks reads 0.

    The same shape as the load loop's ``cpu_stat`` (``ext/procfs.h``'s ``procfs_cpustat_read``).
    """
    wanted = None if cpus is None else set(cpus)
    out = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            break  # the CPU lines come first
        name, *values = line.split()
        if name == "cpu":
            continue  # the machine's total
        cpu = int(name[3:])
        if wanted is None or cpu in wanted:
            counts = [int(v) for v in values[: len(CPU_FIELDS)]]
            out[cpu] = counts + [0] * (len(CPU_FIELDS) - len(counts))
    return out


def read_cpu_times(cpus=None):
    """``parse_cpu_times`` of /proc/stat now."""
    with open("/proc/stat") as f:
        return parse_cpu_times(f.read(), cpus)


def _kernel_config():
    """The running kernel's build configuration as text, or None where neither copy of it can be read."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        with open(f"/boot/config-{platform.release()}") as f:
            return f.read()
    except OSError:
        return None


def irq_time_accounting():
    """Whether the kernel measures interrupt time apart from the tasks (``CONFIG_IRQ_TIME_ACCOUNTING`` or
    the full virtual accounting): then irq and softirq time is in no task's runtime.  ``None`` when unknown.

    Read from the kernel's configuration; without one, /proc/pressure/irq (which exists only with
    interrupt time accounting) says yes.
    """
    config = _kernel_config()
    if config is not None:
        return ("CONFIG_IRQ_TIME_ACCOUNTING=y" in config) or ("CONFIG_VIRT_CPU_ACCOUNTING_NATIVE=y" in config)
    if os.path.exists("/proc/pressure/irq"):
        return True
    return None


def _stat_fields(pid, tid=None):
    """``(ppid, ticks, last_cpu, comm, children_ticks)`` of a process from /proc/PID/stat (of one of its threads
    from /proc/PID/task/TID/stat), or None when it is gone."""
    try:
        comm, fields = _read_stat(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    except OSError:
        return None
    # the last element is the time of the children it has waited for (cutime + cstime)
    return (int(fields[_PPID]), int(fields[_UTIME]) + int(fields[_STIME]), int(fields[_PROCESSOR]), comm,
            int(fields[_CUTIME]) + int(fields[_CSTIME]))


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parents():
    parents = {}
    for p in _pids():
        f = _stat_fields(p)
        if f is not None:
            parents[p] = f[0]
    return parents


def mark_run_root():
    """Make this process the top of the run for every process it starts (``RUN_ROOT_ENV``), unless a sockbench
    command above it already is: called by the command line's entry point."""
    os.environ.setdefault(RUN_ROOT_ENV, str(os.getpid()))


def _run_ancestors(pid, parents):
    """``pid``'s ancestors that belong to the run: up to the ``RUN_ROOT_ENV`` process, or all of them where it
    is not set (a suite or the harness driven from a test) or not among them (an environment left over)."""
    chain = []
    p = parents.get(pid)
    while p and p != pid and p not in chain:
        chain.append(p)
        p = parents.get(p)
    try:
        root = int(os.environ.get(RUN_ROOT_ENV, ""))
    except ValueError:
        return chain
    if root == pid:
        return []
    return chain[: chain.index(root) + 1] if root in chain else chain


def process_family(pid=None, own=(), parents=None):
    """A run's own processes: ``pid`` (this process by default) and its ancestors up to the sockbench command
    that started the run (the ``sockbench run`` and pytest processes above a suite's round; not the shell,
    terminal or init above it, whose work is any other process's), and each of ``own`` (the server) with its
    descendants.

    The caller's other children are not in it: a test that starts a hog must see it named.
    ``parents``: ``{pid: ppid}`` (read from /proc when None).
    """
    pid = os.getpid() if pid is None else pid
    parents = _parents() if parents is None else parents
    family = {pid, *_run_ancestors(pid, parents)}
    children = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    todo = [p for p in own if p]
    family.update(todo)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in family:
                family.add(child)
                todo.append(child)
    return family


def marked_processes(mark, exclude=None):
    """``{pid: (argv, state)}`` of the processes whose environment holds ``mark`` (``NAME=value``), ``exclude`` aside
    (this process by default).

    ``argv`` is the command line's words (bytes), ``state`` the one-letter
    state of /proc/PID/stat (``b"Z"``: a zombie, ended but not reaped yet).
    Only the processes this user may read are seen.
    """
    needle = mark.encode()
    exclude = os.getpid() if exclude is None else exclude
    found = {}
    for pid in _pids():
        if pid == exclude:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            state = _read_stat(f"/proc/{pid}/stat")[1][_STATE]
        except OSError:
            continue  # gone, or not ours to read
        found[pid] = (argv, state)
    return found


def read_wchan(pid):
    """Where in the kernel ``pid`` waits (``do_epoll_wait``, ``hrtimer_nanosleep``; ``0`` when it runs), or None."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip()
    except OSError:
        return None


def thread_states(pid):
    """``[(tid, name, state, wchan)]`` of a live process's threads, lowest tid first: what each is doing now.

    ``state`` is /proc/PID/task/TID/stat's letter (``R`` running, ``S`` asleep,
    ``D`` in uninterruptible wait, ``T`` stopped), ``wchan`` where in the
    kernel it sleeps (``0`` when it runs).  What a process that will not stop
    was doing, said before it is killed; empty when it is gone.
    """
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []
    states = []
    for tid in tids:
        task = f"/proc/{pid}/task/{tid}"
        try:
            name, fields = _read_stat(f"{task}/stat")
            with open(f"{task}/wchan") as f:
                wchan = f.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        states.append((tid, name, fields[_STATE].decode(), wchan))
    return states


def _command(pid, comm):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        args = []
    text = " ".join(a.decode(errors="replace") for a in args if a)
    return text or f"[{comm}]"  # a kernel thread has no command line


class BusyProcess(NamedTuple):
    """A process that used ``share`` of a CPU over the sample, last seen on ``cpu``."""

    pid: int
    command: str
    share: float
    cpu: int


def busy_processes(cpus, interval_s=0.1, own=(), min_ticks=2):
    """The processes busy on ``cpus`` over ``interval_s``, busiest first (``BusyProcess`` each).

    Every /proc/PID/stat is read twice, ``interval_s`` apart.  A process is
    busy when it used at least ``min_ticks`` clock ticks in between (20% of a
    CPU over 0.1 s: one tick more or less is /proc's rounding) and it can run
    on ``cpus``: it was last seen on one of them, or its affinity allows
    nothing else.  This run's own processes are left out
    (``process_family(own=own)``).
    """
    cpus = set(cpus)
    first = {}
    for pid in _pids():
        f = _stat_fields(pid)
        if f is not None:
            first[pid] = f
    exclude = process_family(own=own, parents={pid: f[0] for pid, f in first.items()})
    time.sleep(interval_s)
    found = []
    for pid, f0 in first.items():
        if pid in exclude:
            continue
        f1 = _stat_fields(pid)
        if f1 is None or f1[1] - f0[1] < min_ticks:
            continue
        try:
            affinity = os.sched_getaffinity(pid)
        except OSError:
            continue  # gone meanwhile
        if not affinity & cpus:
            continue
        if f1[2] in cpus or f0[2] in cpus or affinity <= cpus:
            share = (f1[1] - f0[1]) * TICK_S / interval_s
            found.append(BusyProcess(pid, _command(pid, f1[3]), share, f1[2]))
    found.sort(key=lambda b: -b.share)
    return found


def process_snapshot():
    """``{pid: (ppid, ticks, children_ticks, last_cpu)}`` of every process now: one side of ``foreign_process_s``.

    ``children_ticks`` is the time of the children it has reaped (cutime +
    cstime), so that processes born and gone between two snapshots (a
    build's compilers, a hog that was killed) are still counted, in the
    process that reaped them.
    """
    snap = {}
    for pid in _pids():
        f = _stat_fields(pid)
        if f is not None:
            snap[pid] = (f[0], f[1], f[4], f[2])
    return snap


def foreign_process_s(before, after, cpus, own=()):
    """CPU seconds that processes outside this run used on ``cpus`` between two ``process_snapshot``s.

    A process counts for ``cpus`` when it was last seen on one of them in
    either snapshot (a pinned neighbour always is).  The time of children
    reaped between the snapshots counts for any ``cpus``: where a child that
    is gone ran is not known, and the CPU its reaper was last seen on says
    nothing about it (a hog pinned to the client's CPU, killed and reaped by
    a parent last seen on the server's, is the client's foreign load).  The
    figure is a cap on what the CPU counters call foreign, so counting such
    time on both sides lets the counters decide, never hides it.  This run's own processes
    (this process, and ``own`` with their descendants) are left out, and so
    is this process's ancestors' own time (the ``sockbench run`` and pytest
    processes above a suite's round); the children those ancestors reaped
    meanwhile are not the run's, and count.  Kernel threads count: a kworker
    or ksoftirqd busy on a pinned CPU is load the run did not ask for.  In
    clock ticks, so each process's figure is known to within one tick.
    """
    cpus = set(cpus)
    parents = {pid: f[0] for pid, f in after.items()}
    run = process_family(own=own, parents=parents) - process_family(own=(), parents=parents) | {os.getpid()}
    ancestors = process_family(own=(), parents=parents) - {os.getpid()}
    ticks = 0
    for pid, (_, self1, kids1, cpu1) in after.items():
        if pid in run:
            continue
        f0 = before.get(pid)
        self0, kids0, cpu0 = (f0[1], f0[2], f0[3]) if f0 is not None else (0, 0, cpu1)
        ticks += max(0, kids1 - kids0)
        own_ticks = 0 if pid in ancestors else self1 - self0
        if own_ticks > 0 and (cpu1 in cpus or cpu0 in cpus):
            ticks += own_ticks
    return ticks * TICK_S


def thread_snapshot():
    """``{tid: (pid, ppid, runtime_ns, slices, last_cpu, comm)}`` of every thread now, from its schedstat (the
    scheduler's exact runtime and the number of times it ran) and its stat: one side of ``foreign_stalls``."""
    snap = {}
    for pid in _pids():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for name in tids:
            try:
                with open(f"/proc/{pid}/task/{name}/schedstat") as f:
                    runtime, _, slices = (int(x) for x in f.read().split()[:3])
            except (OSError, ValueError):
                continue
            f = _stat_fields(pid, name)
            if f is not None:
                snap[int(name)] = (pid, f[0], runtime, slices, f[2], f[3])
    return snap


def foreign_stalls(before, after, cpus, own=(), min_slice_s=STALL_SLICE_S):
    """What other threads held ``cpus`` for in pieces long enough to keep the run off them, between two
    ``thread_snapshot``s: ``(seconds, [(comm, pid, seconds)] longest first)``.

    A thread counts when it is outside the run (``process_family``), was last
    seen on one of ``cpus`` in either snapshot, and its time came in slices
    of ``min_slice_s`` or more on average (its runtime over the number of
    times it ran; ``sockbench.thresholds.STALL_SLICE_S``): RCU, softirq and
    kworker threads run for microseconds at a time and delay no one, while a
    daemon's or a memory monitor's milliseconds leave a waking server
    waiting that long.  A thread born
    between the snapshots counts all its time; one gone takes its time with it.
    """
    cpus = set(cpus)
    parents = {v[0]: v[1] for v in after.values()}
    run = process_family(own=own, parents=parents)
    total = 0.0
    threads = []
    for tid, (pid, _, runtime1, slices1, cpu1, comm) in after.items():
        if pid in run:
            continue
        pid0, _, runtime0, slices0, cpu0, _ = before.get(tid, (pid, 0, 0, 0, cpu1, comm))
        if pid0 != pid:  # a thread id used again
            runtime0, slices0, cpu0 = 0, 0, cpu1
        ran, times = (runtime1 - runtime0) / 1e9, slices1 - slices0
        if ran <= 0 or times <= 0 or ran / times < min_slice_s or not (cpu1 in cpus or cpu0 in cpus):
            continue
        total += ran
        threads.append((comm, pid, ran))
    threads.sort(key=lambda t: -t[2])
    return total, threads


def _cgroup_mounts():
    """``{"v1": [(root, mountpoint)], "v2": [(root, mountpoint)]}``: where the cpu controller's hierarchies are mounted."""
    out = {"v1": [], "v2": []}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup" and "cpu" in options:
            out["v1"].append((root, mountpoint))
        elif fstype == "cgroup2":
            out["v2"].append((root, mountpoint))
    return out


def _under(path, root, mountpoint):
    """The folder of cgroup ``path`` in a hierarchy whose ``root`` is mounted at ``mountpoint`` (None: not there)."""
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    rel = path[len(root):] if root != "/" else path
    return os.path.join(mountpoint, rel.lstrip("/"))


def cgroup_cpu_dirs(pid, mounts=None):
    """The cgroup folders whose CPU quota can throttle ``pid``: its own cpu cgroup and every ancestor's, innermost
    first (v1's ``cpu`` hierarchy when mounted, else the unified one); [] when unreadable."""
    mounts = _cgroup_mounts() if mounts is None else mounts
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    v1 = v2 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "cpu" in controllers.split(","):
            v1 = path
        elif controllers == "" and parts[0] == "0":
            v2 = path
    for path, kind in ((v1, "v1"), (v2, "v2")):
        if path is None:
            continue
        for root, mountpoint in mounts[kind]:
            folder = _under(path, root, mountpoint)
            if folder is None or not os.path.isdir(folder):
                continue
            out = []
            while True:
                out.append(folder)
                if os.path.normpath(folder) == os.path.normpath(mountpoint):
                    return out
                folder = os.path.dirname(folder)
    return []


def read_throttled_s(folder):
    """Seconds the cgroup at ``folder`` has been throttled by its CPU quota (``cpu.stat``), None when unreadable."""
    try:
        with open(os.path.join(folder, "cpu.stat")) as f:
            text = f.read()
    except OSError:
        return None
    values = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)
    try:
        if "throttled_time" in values:
            return int(values["throttled_time"]) / 1e9
        if "throttled_usec" in values:
            return int(values["throttled_usec"]) / 1e6
    except ValueError:
        return None
    return None
def _children(pid):
    """The live children of ``pid``: every thread's ``/proc/PID/task/TID/children`` (empty when gone)."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def process_tree(pid):
    """``pid`` and its live descendants, ``pid`` first: the processes of a server that forks (one per connection).

    Read from each thread's ``children`` file, so a tree of a few hundred
    processes costs a millisecond or two, not a scan of every /proc entry.
    """
    tree, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        tree.append(p)
        todo.extend(_children(p))
    return tree


def group_members(pgid, live=True):
    """The processes of process group ``pgid`` (``live``: zombies left out), from every /proc/PID/stat."""
    found = []
    for pid in _pids():
        try:
            _, fields = _read_stat(f"/proc/{pid}/stat")
        except OSError:
            continue
        if int(fields[_PGRP]) == pgid and not (live and fields[_STATE] in (b"Z", b"X")):
            found.append(pid)
    return found


def tcp_socket_inodes():
    """The inodes of every TCP socket of this network namespace (IPv4 and IPv6), as a set of ints."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 9:
                        inodes.add(int(fields[9]))
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    return inodes
