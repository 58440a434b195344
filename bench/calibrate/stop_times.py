"""How long after SIGTERM, SIGINT or SIGKILL no process a sockbench command started is left, for each kind of parent.

Why it is built this way: whatever stops a sockbench command (Ctrl-C, ``timeout``,
systemd, a CI runner, the OOM killer's SIGKILL), nothing it started may go on
running: a leftover server or load process takes the CPU from the next
measurement.  That is a time, so it is measured here, over repeated trials,
against ``TARGET_S``; the e2e tests keep only a bound that makes a leak fail.

Each trial starts the parent with a mark of its own in its environment
(``SOCKBENCH_STOP_TRIAL``), which every descendant inherits and keeps when
its parent dies and it is reparented, waits until the parent is doing what a
user would stop, sends the signal to the parent only (``kill -TERM PID``, as
``timeout`` and systemd's main-process stop do; a terminal's Ctrl-C reaches
the whole process group, which only makes the stop easier), then polls /proc
every ``POLL_S`` until no process with the mark but the parent is left: the
time from the signal to then is the figure (a zombie counts as ended).  The
parent's own exit is timed too, in a table of its own: ``run`` builds its
report from the rounds kept before it exits, which is work, not a leftover.
The parents, and what each is doing when signalled:

* ``serve --workers 2`` over tcp and over unix: serving (its ready line is out).
  Over unix the socket's private folder must be gone as well.
* ``load``: inside its measured window (a load process in its loop).
* ``run --quick``: a round in flight (a load process of the suite in its loop).
* ``cluster-worker``: inside a load window of a ``load --cluster`` that a
  coordinator (not the worker's descendant) runs through it.

Run: ``python -m sockbench.bench.calibrate.stop_times [--reps 5] [--server asyncio-protocol]
[--parents serve-tcp serve-unix load run cluster-worker] [--json PATH]``.
"""

import argparse
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import fmt_spread, free_port, machine_line, spread
from sockbench.children import child_setup, held_signals
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.procfs import marked_processes, read_task_cpu_s, read_wchan
from sockbench.servers import registry
from sockbench.units import arg, parse_number

__all__ = ["Trial", "trial", "in_loop", "main", "PARENTS", "SIGNALS", "TARGET_S"]

#: the bound every cell of the table is held to: the serve contract's stop time
TARGET_S = 2.0
#: how often /proc is polled after the signal
POLL_S = 0.005
#: how long a parent may take to get busy, and to be gone, before the trial gives up (and kills by pid)
BUSY_TIMEOUT_S = 90.0
GONE_TIMEOUT_S = 30.0
MARK_ENV = "SOCKBENCH_STOP_TRIAL"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)
PARENTS = ("serve-tcp", "serve-unix", "load", "run", "cluster-worker")
#: the parents' names in the table
TITLES = {"serve-tcp": "serve --workers 2 (tcp)", "serve-unix": "serve --workers 2 (unix)", "load": "load",
          "run": "run --quick", "cluster-worker": "cluster-worker"}


@dataclass(frozen=True)
class Trial:
    parent: str
    signal: str
    #: signal to no descendant left, and to the parent's exit (None: not within ``GONE_TIMEOUT_S``)
    descendants_s: float | None
    exit_s: float | None
    status: int | None
    #: what was left when the trial gave up, and, over unix, whether the socket's folder outlived it
    left: tuple = ()
    folder_left: bool = False


def _sockbench(*args):
    return [sys.executable, "-m", "sockbench", *args]


def _start(cmd, mark, stdout=subprocess.DEVNULL):
    """Start ``cmd`` with ``mark`` in its environment; it dies with this tool (``children.child_setup``)."""
    env = dict(os.environ, **{MARK_ENV: mark})
    with held_signals():
        return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, env=env, text=True,
                                preexec_fn=child_setup())


def _marked(mark):
    """The pids of the live (not zombie) processes carrying ``mark``."""
    return {pid for pid, (_, state) in marked_processes(f"{MARK_ENV}={mark}").items() if state != b"Z"}


def _until(what, proc, timeout=BUSY_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if proc.poll() is not None:
            raise SockbenchError(f"{' '.join(proc.args[2:5])} exited (status {proc.returncode}) before it was busy")
        if time.monotonic() > deadline:
            raise SockbenchError(f"{' '.join(proc.args[2:5])} was not busy within {timeout:g} s")
        time.sleep(0.02)


def _ready_line(proc, timeout=BUSY_TIMEOUT_S):
    """The parent's first stdout line (a ready line), within ``timeout``."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise SockbenchError(f"{' '.join(proc.args[2:5])} printed no ready line within {timeout:g} s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        raise SockbenchError(f"{' '.join(proc.args[2:5])} exited (status {proc.wait()}) before it was ready")
    return line


def in_loop(mark, parent=None, sample_s=0.05):
    """A load process carrying ``mark`` (``NAME=value``) that is inside its loop, a child of ``parent`` if given, or None.

    Inside its window a load process loops on its CPU or waits in
    ``epoll_wait``; before it, it imports (on its CPU, with no socket yet),
    connects, then sleeps (reading its pipe, or until the start): so it is in
    its loop when it holds a socket and waits in ``epoll_wait`` or takes at
    least half of ``sample_s`` of CPU over it.
    """
    procs = [pid for pid, (argv, state) in marked_processes(mark).items()
             if b"sockbench.bench.load.worker" in argv and state != b"Z" and (parent is None or _ppid(pid) == parent)
             and _holds_a_socket(pid)]
    before = {}
    for pid in procs:
        if read_wchan(pid) == "do_epoll_wait":
            return pid
        try:
            before[pid] = read_task_cpu_s(pid)
        except (OSError, ValueError):
            pass
    if not before:
        return None
    time.sleep(sample_s)
    for pid, cpu in before.items():
        try:
            if read_task_cpu_s(pid) - cpu >= sample_s / 2 and read_wchan(pid) in ("0", "do_epoll_wait"):
                return pid
        except (OSError, ValueError):
            pass
    return None


def _in_loop(mark, parent=None):
    return in_loop(f"{MARK_ENV}={mark}", parent)


def _holds_a_socket(pid):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                return True
        except OSError:
            pass
    return False


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _unix_folder(ready):
    return os.path.dirname(json.loads(ready)["path"])


class _Setup:
    """What the trials run besides their parents: one Dask scheduler, a coordinator per cluster trial."""

    def __init__(self, server, tmp):
        self.server = server
        self.tmp = tmp
        self.coordinator = None
        self.scheduler = None
        self.address = None

    def dask_scheduler(self):
        if self.scheduler is None:
            port = free_port()
            self.scheduler = _start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", str(port), "--no-dashboard"], uuid.uuid4().hex)
            _until(lambda: _reachable(port), self.scheduler)
            self.address = f"tcp://127.0.0.1:{port}"
        return self.address

    def end_trial(self):
        if self.coordinator is not None:
            _stop(self.coordinator)
            self.coordinator = None

    def close(self):
        self.end_trial()
        if self.scheduler is not None:
            _stop(self.scheduler)
            self.scheduler = None


def _reachable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _busy_parent(kind, setup, n, mark):
    """Start parent ``kind`` (trial ``n``) and return it once it is busy, and its unix folder (or None)."""
    s = setup.server
    if kind in ("serve-tcp", "serve-unix"):
        transport = kind.split("-")[1]
        p = _start(_sockbench("serve", s, "--transport", transport, "--workers", "2"), mark, stdout=subprocess.PIPE)
        ready = _ready_line(p)
        return p, _unix_folder(ready) if transport == "unix" else None
    if kind == "load":
        p = _start(_sockbench("load", s, "--duration", "120", "--warmup", "0", "--conns", "4",
                              "--json", os.path.join(setup.tmp, f"load-{n}.json")), mark)
        _until(lambda: _in_loop(mark), p)
        return p, None
    if kind == "run":
        p = _start(_sockbench("run", "--quick", "--servers", s, "--out", os.path.join(setup.tmp, f"run-{n}")), mark)
        _until(lambda: _in_loop(mark), p)
        return p, None
    if kind == "cluster-worker":
        scheduler = setup.dask_scheduler()
        name = f"stop-{n}"
        p = _start(_sockbench("cluster-worker", "--scheduler", scheduler, "--name", name), mark, stdout=subprocess.PIPE)
        _ready_line(p)
        setup.coordinator = _start(_sockbench("load", s, "--cluster", scheduler, "--hosts", name, "--duration", "120",
                                              "--warmup", "0", "--conns", "4",
                                              "--json", os.path.join(setup.tmp, f"cluster-{n}.json")), uuid.uuid4().hex)
        _until(lambda: _in_loop(mark, parent=p.pid), p)
        return p, None
    raise UsageError(f"unknown parent {kind!r}; choose from {', '.join(PARENTS)}")


def trial(kind, sig, setup, n):
    """One trial: start parent ``kind`` busy, send it ``sig``, time until no process it started is left."""
    mark = uuid.uuid4().hex
    p, folder = _busy_parent(kind, setup, n, mark)
    exit_s = gone_s = None
    left = ()
    try:
        t0 = time.monotonic()
        os.kill(p.pid, sig)
        deadline = t0 + GONE_TIMEOUT_S
        while exit_s is None or gone_s is None:
            now = time.monotonic()
            if exit_s is None and p.poll() is not None:
                exit_s = now - t0
            if gone_s is None:
                live = _marked(mark) - {p.pid}
                if not live:
                    gone_s = now - t0
            if now > deadline:
                left = tuple(sorted(live))
                break
            time.sleep(POLL_S)
    finally:
        for pid in _marked(mark):  # a trial leaves nothing, whatever it found
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()
        p.wait()
        setup.end_trial()
    folder_left = bool(folder) and os.path.exists(folder)
    return Trial(kind, signal.Signals(sig).name, None if gone_s is None else round(gone_s, 4),
                 None if exit_s is None else round(exit_s, 4), p.returncode, left, folder_left)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.stop_times", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=arg(parse_number, "--reps", kind=int, positive=True), default=5,
                    help="trials per parent and signal (default 5)")
    ap.add_argument("--server", default="asyncio-protocol", help="the server the parents start (default asyncio-protocol)")
    ap.add_argument("--parents", nargs="+", default=list(PARENTS), metavar="PARENT",
                    help=f"which parents (default all: {' '.join(PARENTS)})")
    ap.add_argument("--json", metavar="PATH", help="also write every trial here")
    try:
        args = ap.parse_args(argv)
        unknown = [k for k in args.parents if k not in PARENTS]
        if unknown:
            raise UsageError(f"--parents {' '.join(unknown)}: unknown; choose from {' '.join(PARENTS)}")
        ok, why = registry.get(args.server).availability()
        if not ok:
            raise UsageError(f"--server {args.server}: {why}")
        if "cluster-worker" in args.parents and importlib.util.find_spec("distributed") is None:
            raise UsageError("the cluster-worker trials need Dask distributed: pip install 'sockbench[cluster]' "
                             "(or leave out cluster-worker with --parents)")
        print(machine_line())
        print(f"{args.reps} trials per cell, server {args.server}; the time from the signal to no process left "
              f"(seconds, median [min..max]); target under {TARGET_S:g} s; load average before "
              f"{os.getloadavg()[0]:.2f}")
        trials = []
        with tempfile.TemporaryDirectory(prefix="stop-times-") as tmp:
            setup = _Setup(args.server, tmp)
            try:
                n = 0
                for kind in args.parents:
                    for rep in range(args.reps):
                        for sig in SIGNALS:  # interleaved: no signal owns one stretch of the machine's time
                            n += 1
                            trials.append(trial(kind, sig, setup, n))
            finally:
                setup.close()
        _print_table(trials, args.parents)
        print(f"load average after {os.getloadavg()[0]:.2f}")
        if args.json:
            write_json_atomic(args.json, {"server": args.server, "reps": args.reps, "target_s": TARGET_S,
                                          "machine": machine_line(), "trials": [asdict(t) for t in trials]})
        late = [t for t in trials if t.descendants_s is None or t.descendants_s >= TARGET_S or t.folder_left]
        return 1 if late else 0
    except SockbenchError as e:
        print(f"stop_times: {e}", file=sys.stderr)
        return e.exit_code


def _print_table(trials, parents):
    names = [signal.Signals(s).name for s in SIGNALS]
    for title, field, target in (("no descendant left", "descendants_s", TARGET_S), ("the parent exited", "exit_s", None)):
        rows = [[f"{title} (s)", *names]]
        for kind in parents:
            row = [TITLES[kind]]
            for name in names:
                mine = [t for t in trials if t.parent == kind and t.signal == name]
                values = [getattr(t, field) for t in mine]
                st = spread(values)
                cell = fmt_spread(st, ".2f")
                if None in values:
                    cell += f" ({values.count(None)} > {GONE_TIMEOUT_S:g} s)"
                if target and any(t.folder_left for t in mine):
                    cell += " FOLDER LEFT"
                if target and st is not None and st.max >= target:
                    cell += " OVER"
                row.append(cell)
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        print()
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    statuses = [f"{TITLES[kind]} {name}: {'/'.join(map(str, sorted({t.status for t in trials if t.parent == kind and t.signal == name})))}"
                for kind in parents for name in names]
    print("\nexit statuses (-N: killed by signal N): " + "; ".join(statuses))


if __name__ == "__main__":
    sys.exit(main())
