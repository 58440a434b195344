"""``sockbench cluster-worker``: a Dask worker tuned to sit beside a load generator on a load host.

Why it is built this way: a load from several hosts (``sockbench load
--cluster``) is placed by Dask distributed, so each load host runs a Dask
worker; what sockbench adds is the worker's tuning, because it shares the
machine with the load it measures.  One thread (a host runs one load task at
a time), no nanny (a second process that only watches the first), the
profiler off and the ticks and monitors slowed (``cluster.WORKER_CONFIG``),
and a heartbeat every ``HEARTBEAT_S`` instead of the 0.5 s the scheduler asks
of a small cluster (each heartbeat is about 11 ms of Python here, and was
most of what the worker did idle): measured quiet by
``bench/calibrate/worker_idle.py`` (30 s windows, both pinned to one CPU), a
plain ``dask worker --no-nanny --nthreads 1`` idled at 4.1-7.1% of a core,
this one at 0.24-0.32%, fresh or after a task.
``--cpus`` pins it away from the load processes' CPUs.  The worker runs in
this process (``distributed.Worker``), so its pid is the one to stop: SIGTERM
or SIGINT closes it and it leaves the scheduler.
"""

import asyncio
import json
import os
import signal
import socket

from sockbench.errors import UsageError
from sockbench.units import parse_cpus

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p):
    p.add_argument("--scheduler", required=True, metavar="tcp://HOST:PORT",
                   help="the Dask scheduler (`dask scheduler` listens on port 8786)")
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

    if "://" not in args.scheduler:
        raise UsageError(f"bad --scheduler {args.scheduler!r}; use tcp://HOST:PORT")
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
    asyncio.run(_serve(_quiet_worker_class(distributed, HEARTBEAT_S), args.scheduler, args.name or socket.gethostname()))
    return 0


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


async def _serve(worker_class, scheduler, name):
    """Run the worker until SIGTERM/SIGINT, then close it (it leaves the scheduler)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker_class(scheduler, name=name, nthreads=1, dashboard=False) as worker:
        print(json.dumps({"event": "ready", "worker": name, "address": worker.address, "pid": os.getpid()}), flush=True)
        done = asyncio.ensure_future(worker.finished())
        await asyncio.wait([done, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            await worker.close()
