"""How much CPU an idle ``sockbench cluster-worker`` takes from the load host it sits on.

Why it is built this way: a load host runs a Dask worker beside the load
processes it measures, so whatever the worker does between tasks is taken
from the client's CPUs and shows up as foreign load.  Its budget is
``WORKER_IDLE_SHARE`` of one core.  That is a speed figure, so it is measured
here, on a quiet machine and over long windows, not asserted by a timed test
(the e2e test keeps only a sanity bound).

The tool starts what a load host sees: a Dask scheduler on loopback (pinned
to the other CPUs, as if it were on another host) and, pinned to ``--cpu``,
the tuned ``sockbench cluster-worker`` and, for reference, a plain
``dask worker --no-nanny --nthreads 1``.  Each worker is measured in two
states: **fresh** (connected, never ran a task) and **after a task** (it ran
one task through a client that then left, as between two ``--cluster`` runs).
In each state the workers' CPU is read in the same windows, from
``/proc/PID/task/*/schedstat`` (exact, not rounded to ticks); the busy time
of the pinned CPU that neither worker used is reported with each window, so
a window that something else disturbed can be told apart.  A window shorter
than the worker's slowest periodic job (its heartbeat, ``HEARTBEAT_S``)
would sometimes miss it: the default window covers several.

Run: ``python -m sockbench.bench.calibrate.worker_idle [--cpu 0] [--window 30] [--windows 3]
[--settle 5] [--no-reference] [--json PATH]``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import fmt_spread, free_port, machine_line, spread
from sockbench.bench.load.cluster import HEARTBEAT_S, connect, connected_workers
from sockbench.bench.load.interference import side_time
from sockbench.children import child_setup, held_signals
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.procfs import read_cpu_times, read_task_cpu_s
from sockbench.thresholds import WORKER_IDLE_SHARE
from sockbench.units import arg, parse_number

__all__ = ["Window", "measure", "main"]

#: how long a worker may take to join the scheduler
START_TIMEOUT_S = 60.0
TUNED, REFERENCE = "cluster-worker", "dask worker"


@dataclass(frozen=True)
class Window:
    """One measured window: each worker's CPU and the pinned CPU's other busy time, as shares of one core."""

    state: str
    seconds: float
    workers: dict
    other: float
    #: the other work on the CPU reached ``DISTURBED_SHARE`` (``interference.SideTime.disturbed``)
    disturbed: bool


def _start(procs, cmd, cpus):
    """Start ``cmd`` pinned to ``cpus``, its handle in ``procs`` before a Ctrl-C can land (``held_signals``)."""
    with held_signals():
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             preexec_fn=child_setup(cpus))
        procs.append(p)
    return p


def _wait_ready_line(p, what):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SockbenchError(f"{what} exited (status {p.wait()}) before it was ready")
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            return
    raise SockbenchError(f"{what} was not ready within {START_TIMEOUT_S:g} s")


def _wait_workers(client, names):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        missing = set(names) - set(connected_workers(client))
        if not missing:
            return
        time.sleep(0.2)
    raise SockbenchError(f"workers {sorted(missing)} did not join the scheduler within {START_TIMEOUT_S:g} s")


def _edge(cpu):
    return {"t_ns": time.monotonic_ns(), "cpus": read_cpu_times([cpu])}


def _windows(state, pids, cpu, window_s, count, log):
    out = []
    for _ in range(count):
        w0, e0 = {n: read_task_cpu_s(p) for n, p in pids.items()}, _edge(cpu)
        time.sleep(window_s)
        w1, e1 = {n: read_task_cpu_s(p) for n, p in pids.items()}, _edge(cpu)
        used = {n: w1[n] - w0[n] for n in pids}
        side = side_time([cpu], e0, e1, own_s=sum(used.values()))
        win = Window(state=state, seconds=round(side.elapsed_s, 3),
                     workers={n: s / side.elapsed_s for n, s in used.items()}, other=side.foreign_share,
                     disturbed=side.disturbed)
        log(f"  {state:12s} {win.seconds:5.1f} s  " + "  ".join(f"{n} {s:.3%}" for n, s in win.workers.items())
            + f"  other work on CPU {cpu}: {win.other:.2%}" + ("  DISTURBED" if win.disturbed else ""))
        out.append(win)
    return out


def measure(cpu=0, window_s=30.0, windows=3, settle_s=5.0, reference=True, log=print):
    """The ``Window``s of both states, each worker pinned to ``cpu``."""
    if cpu not in os.sched_getaffinity(0):
        raise UsageError(f"--cpu {cpu} is not a CPU this process may use; allowed: {sorted(os.sched_getaffinity(0))}")
    address = f"tcp://127.0.0.1:{free_port()}"
    procs, pids = [], {}
    others = sorted(os.sched_getaffinity(0) - {cpu}) or [cpu]
    try:
        # the scheduler away from the workers' CPU, as if it ran on another host
        _start(procs, [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                       "--port", address.rsplit(":", 1)[1], "--no-dashboard"], others)
        tuned = _start(procs, [sys.executable, "-m", "sockbench", "cluster-worker", "--scheduler", address,
                               "--name", TUNED, "--cpus", str(cpu)], None)
        _wait_ready_line(tuned, TUNED)
        pids[TUNED] = tuned.pid
        if reference:
            ref = _start(procs, [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny",
                                 "--nthreads", "1", "--name", REFERENCE, "--no-dashboard"], [cpu])
            pids[REFERENCE] = ref.pid
        with connect(address, timeout=START_TIMEOUT_S) as client:
            _wait_workers(client, pids)
        time.sleep(settle_s)
        out = _windows("fresh", pids, cpu, window_s, windows, log)
        with connect(address, timeout=START_TIMEOUT_S) as client:
            for name in pids:
                client.submit(os.getpid, workers=[name], pure=False).result(timeout=START_TIMEOUT_S)
        time.sleep(settle_s)
        return out + _windows("after a task", pids, cpu, window_s, windows, log)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.worker_idle", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", type=arg(parse_number, "--cpu", kind=int), default=0, help="the CPU both workers are pinned to")
    ap.add_argument("--window", type=arg(parse_number, "--window", positive=True), default=30.0, help="seconds per window")
    ap.add_argument("--windows", type=arg(parse_number, "--windows", kind=int, positive=True), default=3, help="windows per state")
    ap.add_argument("--settle", type=arg(parse_number, "--settle"), default=5.0,
                    help="seconds between a state's start and its first window")
    ap.add_argument("--no-reference", action="store_true", help="leave out the plain `dask worker`")
    ap.add_argument("--json", metavar="PATH", help="also write the windows here")
    try:
        args = ap.parse_args(argv)
        if args.window < 2 * HEARTBEAT_S:
            raise UsageError(f"--window {args.window:g} is shorter than two heartbeats ({2 * HEARTBEAT_S:g} s); "
                             "such a window may miss the worker's slowest job")
        print(machine_line())
        print(f"each worker pinned to CPU {args.cpu}; {args.windows} windows of {args.window:g} s per state; "
              f"budget {WORKER_IDLE_SHARE:.1%} of a core")
        wins = measure(args.cpu, args.window, args.windows, args.settle, not args.no_reference)
        kept = [w for w in wins if not w.disturbed]
        if kept:
            print(f"\nmedian [min..max] over the undisturbed windows ({len(kept)} of {len(wins)}), % of one core:")
        else:
            kept = wins
            print("\nmedian [min..max] over every window, ALL DISTURBED (other work shared the CPU), % of one core:")
        for state in ("fresh", "after a task"):
            for name in wins[0].workers:
                st = spread([100 * w.workers[name] for w in kept if w.state == state])
                verdict = "" if st is None else ("  within budget" if st.max <= 100 * WORKER_IDLE_SHARE else "  OVER budget")
                print(f"  {state:12s} {name:15s} {fmt_spread(st, '.3f')}{verdict if name == TUNED else ''}")
        if args.json:
            write_json_atomic(args.json, {"cpu": args.cpu, "budget": WORKER_IDLE_SHARE, "windows": [asdict(w) for w in wins]})
    except SockbenchError as e:
        print(f"worker_idle: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
