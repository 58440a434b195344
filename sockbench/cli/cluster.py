"""``sockbench cluster-worker``: a Dask worker tuned to sit beside a load generator on a load host.

Why it is built this way: ``sockbench load --cluster`` is placed by Dask, so
each load host runs a Dask worker that shares the machine with the load it
measures.  What sockbench adds is its tuning: one thread, no nanny, the
profiler off, slow ticks and monitors (``cluster.WORKER_CONFIG``) and a
heartbeat every ``HEARTBEAT_S`` rather than the scheduler's suggestion, since
heartbeats are most of an idle worker's CPU.  The README gives its idle CPU
against a plain ``dask worker`` and ``bench/calibrate/worker_idle.py``
measures it.  ``--cpus`` pins it away from the load; the worker runs in this
process, so its pid is the one to stop.

Lifetime: ``--scheduler`` is checked first (``units.parse_scheduler``); no
scheduler within ``--connect-timeout`` is one line and exit 1; SIGTERM/SIGINT
stop it at any time (exit 143/130) and the load processes of a task die with
it (``children.child_setup``); a scheduler that goes away is one line and
exit 1.  Dask's warnings are kept, one line each, without tracebacks.
"""

import asyncio
import json
import logging
import os
import signal
import socket

from sockbench.children import Stopped
from sockbench.errors import SockbenchError, UsageError
from sockbench.units import arg, parse_cpus, parse_number, parse_scheduler

#: how long a stopping worker may take to leave the scheduler before the process goes anyway
CLOSE_TIMEOUT_S = 1.5

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p):
    p.add_argument("--scheduler", required=True, metavar="tcp://HOST:PORT", type=arg(parse_scheduler, "--scheduler"),
                   help="the Dask scheduler (`dask scheduler` listens on port 8786)")
    p.add_argument("--connect-timeout", type=arg(parse_number, "--connect-timeout", positive=True), default=10.0,
                   metavar="S", help="give up when the scheduler is not reached within S seconds (default 10)")
    p.add_argument("--name", default=None, help="the worker's name, as --hosts names it (default: the host name)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="pin the worker here, away from the load CPUs (e.g. 3; default: not pinned)")
    return p


def run_cli(args):
    try:
        # deferred: distributed is the optional extra `cluster`, and heavy
        import dask
        import distributed
    except ImportError:
        raise UsageError("cluster-worker needs Dask distributed: pip install 'sockbench[cluster]'") from None
    # deferred: the load room is imported only by the commands that load
    from sockbench.bench.load.cluster import HEARTBEAT_S, HOST_CPUS_ENV, WORKER_CONFIG

    if args.cpus is not None:
        cpus = parse_cpus(args.cpus, name="--cpus")
        missing = sorted(set(cpus) - os.sched_getaffinity(0))
        if missing:
            raise UsageError(f"--cpus {','.join(map(str, missing))} not available here; usable CPUs: "
                             f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}")
        # the load processes the worker starts may still use every CPU it was given
        os.environ[HOST_CPUS_ENV] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        os.sched_setaffinity(0, cpus)
    dask.config.set(WORKER_CONFIG)
    _one_line_logs(logging.getLogger("distributed"))
    stopped_by = asyncio.run(_serve(_quiet_worker_class(distributed, HEARTBEAT_S), args.scheduler,
                                    args.name or socket.gethostname(), args.connect_timeout))
    if stopped_by is not None:
        raise Stopped(stopped_by)
    return 0


class _OneLine(logging.Filter):
    """A record as one line: its message without the traceback (a scheduler that goes away logs two)."""

    def filter(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(e).__name__}{': ' + str(e).splitlines()[0] if str(e) else ''})"
            record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def _one_line_logs(logger):
    """Dask's log for a worker that runs unattended: warnings and errors only, one line each."""
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        handler.addFilter(_OneLine())


def _quiet_worker_class(distributed, heartbeat_s):
    """A ``distributed.Worker`` whose heartbeat keeps ``heartbeat_s`` instead of the scheduler's suggestion.

    The scheduler asks a small cluster for a heartbeat every 0.5 s, the one
    periodic job left that costs the idle worker measurably (each gathers and
    sends the worker's metrics).  The scheduler drops a worker only after
    ``worker-ttl`` (5 minutes) without one, and sees a dead worker at once by
    its closed connection, so a slower heartbeat loses nothing sockbench uses.
    """

    class QuietWorker(distributed.Worker):
        async def heartbeat(self):
            await super().heartbeat()
            pc = self.periodic_callbacks.get("heartbeat")
            if pc is not None:
                pc.callback_time = heartbeat_s * 1000

    return QuietWorker


async def _serve(worker_class, scheduler, name, connect_timeout):
    """Run the worker until SIGTERM/SIGINT (returns that signal) or until its scheduler goes away (one line).

    A stop signal is heeded while the worker connects as well as once it
    serves; the worker then closes (it leaves the scheduler) within
    ``CLOSE_TIMEOUT_S``.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = []

    def on_signal(sig):
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    stopping = asyncio.ensure_future(stop.wait())
    worker = worker_class(scheduler, name=name, nthreads=1, dashboard=False, death_timeout=connect_timeout)
    starting = asyncio.ensure_future(worker.start())
    try:
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await _close(worker)
            return received[0]
        try:
            starting.result()
        except (asyncio.TimeoutError, TimeoutError):
            raise SockbenchError(f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s; is it "
                                 f"running (`dask scheduler`), and is that address reachable from here?") from None
        except Exception as e:
            raise SockbenchError(f"the Dask worker could not start: {_cause(e)}") from None
        print(json.dumps({"event": "ready", "worker": name, "address": worker.address, "scheduler": scheduler,
                          "pid": os.getpid()}), flush=True)
        finished = asyncio.ensure_future(worker.finished())
        await asyncio.wait([finished, stopping], return_when=asyncio.FIRST_COMPLETED)
        if received:
            await _close(worker)
            return received[0]
        raise SockbenchError(f"lost the Dask scheduler at {scheduler} (it stopped, or closed this worker); this worker stops")
    finally:
        stopping.cancel()


async def _close(worker):
    """Close ``worker`` (leave the scheduler, stop its threads) within ``CLOSE_TIMEOUT_S``, whatever state it is in."""
    try:
        await asyncio.wait_for(worker.close(timeout=CLOSE_TIMEOUT_S, executor_wait=False), CLOSE_TIMEOUT_S)
    except Exception:  # asyncio.TimeoutError, or a worker that never started: the process goes anyway
        pass


def _cause(e):
    """The innermost cause of a Dask start-up failure, as one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__
