"""A load from several hosts: Dask distributed places one load host per worker; the histograms merge exactly.

Usage::

    from sockbench.bench.load.cluster import run_cluster_load
    result = run_cluster_load(spec, "tcp://10.0.0.1:8786", hosts=("a", "b"))
    result.hosts        # one HostPart per load host; the top-level figures are the merged totals

Why it is built this way: sockbench writes no coordination protocol of its
own.  Dask pins one task per host to a named worker (``sockbench
cluster-worker``, tuned by ``WORKER_CONFIG`` to idle beside the load) and
carries the start instant (a ``Variable``), the ready/failed lines (a
``Queue``) and each host's result (the return value).

Rules:

* Each host runs the harness's own steps (``harness.measure``,
  ``harness.build_result``), as a one-machine run would; only the start
  differs: one wall-clock instant ``START_LEAD_S`` ahead, turned into each
  host's CLOCK_MONOTONIC, and every load process records ``start_late_s``.
* Each host's clock offset is measured first (NTP-style through Dask,
  ``clock.py``) and recorded in its ``HostPart``; too large a one is a warning.
* Totals merge every host's load processes (counters summed, HDR histograms
  added); per host only: client CPU, ``interference``, the Dask worker's CPU.
  ``client_bound`` when any host was.
* A host that cannot start stops the run before the window, in one line; a
  worker dying in the window makes the result invalid and names the host,
  the other hosts' figures are kept and the JSON is written.
"""

import os
import socket
import sys
import time
import uuid
from dataclasses import replace
from types import SimpleNamespace

from sockbench.bench.load.clock import measure_offsets, too_large
# the harness's own steps: a host runs the same load a one-machine run does, and the totals are built
# by the same code from every host's load processes
from sockbench.bench.load.harness import (
    READY_TIMEOUT_S, ServerWindow, build_result, limited_by, measure, read_rss_peak, resolve, split,
)
from sockbench.bench.schema import Client, ClockOffset, CpuPerMsg, HostPart, LoadResult, ProcResult, WorkerCpu, merge_fields
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.procfs import read_proc_stat, read_task_cpu_s
from sockbench.servers.process import ServerProcess
from sockbench.thresholds import CLIENT_BOUND_UTIL
from sockbench.timestamps import iso_utc
from sockbench.units import parse_scheduler

__all__ = [
    "WORKER_CONFIG",
    "HEARTBEAT_S",
    "HOST_CPUS_ENV",
    "CONNECT_TIMEOUT_S",
    "START_LEAD_S",
    "connect",
    "connected_workers",
    "pick_hosts",
    "host_specs",
    "host_load",
    "merge",
    "run_cluster_load",
    "local_address_towards",
]

#: the Dask settings of ``sockbench cluster-worker``: no profiler, slow ticks (the tick only watches the
#: event loop for blocking) and monitors; with its ``HEARTBEAT_S`` heartbeat it idled at 0.24-0.32% of a
#: core, where a plain ``dask worker --no-nanny --nthreads 1`` took 4.1-7.1% (bench/calibrate/worker_idle.py)
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "5s",
    # the tick warns of a blocked loop past this limit, which must exceed the interval or every tick logs
    "distributed.admin.tick.limit": "60s",
    # the tick-rate bookkeeping cycles every second by default
    "distributed.admin.tick.cycle": "10s",
    "distributed.admin.system-monitor.interval": "10s",
    "distributed.worker.memory.monitor-interval": "10s",
    # the client a host task opens (for the start instant) polls the scheduler every 2 s by default
    "distributed.client.scheduler-info-interval": "60s",
}
#: the tuned worker's heartbeat to the scheduler, in seconds (Dask asks a small cluster for 0.5 s); it also
#: paces the worker's search for missing data, which Dask ties to the heartbeat
HEARTBEAT_S = 10.0
#: set by ``sockbench cluster-worker`` before it pins itself: the CPUs the host's load may use (the
#: worker's own pinning must not narrow them; its task thread widens its mask back while it spawns)
HOST_CPUS_ENV = "SOCKBENCH_HOST_CPUS"
#: how long the coordinator tries to reach the scheduler
CONNECT_TIMEOUT_S = 5.0
#: between the last host's "ready" and the shared start instant: the instant must reach every host first
START_LEAD_S = 0.5
#: after the window's end, how long a host may take to hand its result back
RESULT_GRACE_S = 30.0
#: how often the coordinator looks for workers that left the scheduler while it waits
POLL_S = 0.2


# --- the coordinator's side ----------------------------------------------------------------------------


def connect(scheduler, timeout=CONNECT_TIMEOUT_S):
    """A ``distributed.Client`` of ``scheduler``; an unreachable scheduler is one line after ``timeout``."""
    try:
        # deferred: distributed is the optional extra `cluster`, and heavy
        import distributed
    except ImportError:
        raise UsageError("--cluster needs Dask distributed: pip install 'sockbench[cluster]'") from None
    scheduler = parse_scheduler(scheduler, name="scheduler address")
    try:
        return distributed.Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SockbenchError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s "
                             f"({type(e).__name__}); is it running, and is that address reachable?") from None


def connected_workers(client):
    """``{name: address}`` of the workers connected to the scheduler now."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return {str(w.get("name", addr)): addr for addr, w in info["workers"].items()}


def _takes_n_workers(client):
    import inspect  # deferred: only to read which scheduler_info this distributed has

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def pick_hosts(workers, names=None):
    """``[(name, address)]`` of the load hosts: the ``names`` asked for, or every worker (by name)."""
    if not workers:
        raise SockbenchError("no Dask worker is connected to the scheduler; start `sockbench cluster-worker` on each load host")
    if not names:
        return sorted(workers.items())
    unknown = [n for n in names if n not in workers]
    if unknown:
        raise UsageError(f"--hosts {','.join(unknown)}: no worker of that name; the workers are "
                         f"{', '.join(sorted(workers))}")
    if len(set(names)) != len(names):
        raise UsageError(f"--hosts names a worker twice: {','.join(names)}")
    return [(n, workers[n]) for n in names]


def host_specs(spec, target, hosts):
    """One ``LoadSpec`` per host: the connections split between hosts, ``procs`` load processes on each.

    The total's ``conns`` is the sum over hosts; each host loads ``target``
    with its share, on its own ``client_cpus`` (the same numbers on every host).
    """
    if spec.conns < len(hosts):
        raise UsageError(f"--conns {spec.conns} < {len(hosts)} hosts: each host needs a connection")
    out = []
    for conns in split(spec.conns, len(hosts)):
        rate = spec.rate * conns / spec.conns if spec.rate is not None else None
        out.append(replace(spec, server=None, target=target, conns=conns, procs=min(spec.procs, conns), rate=rate))
    return out


def local_address_towards(scheduler):
    """This machine's address on the route to the scheduler: where the load hosts can reach a server started here.

    A UDP socket's ``connect`` picks the route and sends nothing.
    """
    host = scheduler.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
        except OSError as e:
            raise SockbenchError(f"no route to the scheduler's host {host}: {e.strerror or e}") from None
        return s.getsockname()[0]


def run_cluster_load(spec, scheduler, hosts=None, json_path=None, log=None, on_window=None):
    """Run ``spec`` from several hosts through the Dask scheduler ``scheduler``; return the merged ``LoadResult``.

    ``spec.conns`` is the total over hosts and ``spec.procs`` the load
    processes on each.  With ``spec.server`` the server is started here, on
    the address that faces the scheduler, pinned to ``spec.server_cpus``.
    ``log(line)`` gets the warnings (default: stderr); ``on_window(start_ns,
    end_ns)`` is told the window on this machine's CLOCK_MONOTONIC, as
    ``run_load`` tells it.
    """
    log = log or (lambda line: print(f"sockbench: warning: {line}", file=sys.stderr, flush=True))
    if spec.transport == "unix":
        raise UsageError("--cluster loads over the network: use --transport tcp, tcp6 or udp "
                         "(a unix socket is reachable from its own machine only)")
    # the client CPUs are checked on each host, where they are; here, everything else
    replace(spec, client_cpus=tuple(sorted(os.sched_getaffinity(0)))[:1]).validate()
    started_at = iso_utc()
    client = connect(scheduler)
    try:
        chosen = pick_hosts(connected_workers(client), hosts)
        if spec.server is not None:
            extra = ("--protocol", spec.protocol) if spec.protocol != "raw" else ()
            with ServerProcess(spec.server, transport=spec.transport, host=local_address_towards(scheduler),
                               cpus=spec.server_cpus, extra_args=extra) as server:
                result = _coordinate(client, spec, chosen, server, server.endpoint, started_at, log, on_window)
        else:
            result = _coordinate(client, spec, chosen, None, spec.target, started_at, log, on_window)
    finally:
        client.close()
    if json_path is not None:
        write_json_atomic(json_path, result.to_json())
    return result


def _coordinate(client, spec, chosen, server, target, started_at, log, on_window=None):
    """Place one task per host, start them at one instant, collect, merge."""
    # deferred: distributed is the optional extra (connect() checked it is there)
    import distributed

    run_id = uuid.uuid4().hex[:12]
    queue = distributed.Queue(f"sockbench-{run_id}-ready", client=client)
    start = distributed.Variable(f"sockbench-{run_id}-start", client=client)
    specs = host_specs(spec, target, chosen)
    futures = {
        name: client.submit(host_load, run_id, name, hspec, key=f"sockbench-load-{name}-{run_id}",
                            workers=[addr], allow_other_workers=False, pure=False, retries=0)
        for (name, addr), hspec in zip(chosen, specs)
    }
    try:
        _wait_ready(client, queue, futures, chosen)
        offsets = measure_offsets(client, [addr for _, addr in chosen])
        instant_ns = time.time_ns() + int(START_LEAD_S * 1e9)
        start.set({"start_wall_ns": instant_ns})
        if on_window is not None:
            start_ns = time.monotonic_ns() + (instant_ns - time.time_ns())
            on_window(start_ns, start_ns + int((spec.warmup_s + spec.duration_s) * 1e9))
        srv = _server_window(server, instant_ns, spec)
        answers, problems = _collect(client, futures, chosen, instant_ns, spec)
    except BaseException:
        start.set({"abort": True})
        client.cancel(list(futures.values()), force=True)
        raise
    window_s = spec.warmup_s + spec.duration_s
    clocks = {}
    for name, addr in chosen:
        o = offsets[addr]
        clocks[name] = ClockOffset(offset_s=o.offset_s, delay_s=o.delay_s, too_large=too_large(o, spec.duration_s))
        if clocks[name].too_large:
            log(f"host {name}: its clock is {o.offset_s * 1e3:+.1f} ms off the coordinator's "
                f"(± {o.delay_s * 5e2:.1f} ms) in a {window_s:g} s window; synchronise the clocks (chrony)")
    if server is not None and not server.alive():
        srv.exit_status = server.proc.returncode
        problems.insert(0, f"the server exited (status {server.proc.returncode}) during the run")
    return merge(spec, server, target, started_at, chosen, specs, answers, problems, srv, clocks)


def _wait_ready(client, queue, futures, chosen):
    """Every host says ready, or the first that cannot start stops the run in one line naming it."""
    ready = set()
    deadline = time.monotonic() + READY_TIMEOUT_S + 10
    while len(ready) < len(chosen):
        _check_alive(client, futures, chosen)
        try:
            msg = queue.get(timeout=POLL_S)
        except TimeoutError:
            if time.monotonic() > deadline:
                late = [n for n, _ in chosen if n not in ready]
                raise SockbenchError(f"host(s) {', '.join(late)} did not get ready within "
                                     f"{READY_TIMEOUT_S + 10:.0f} s") from None
            continue
        if msg["event"] != "ready":
            raise SockbenchError(f"host {msg['host']}: {msg['message']}")
        ready.add(msg["host"])


def _check_alive(client, futures, chosen):
    """Before the window: a host task that failed, or a worker that left, is one line naming the host."""
    names = set(connected_workers(client))
    for name, addr in chosen:
        f = futures[name]
        if f.status == "error":
            raise SockbenchError(f"host {name}: {_one_line(f.exception())}")
        if name not in names:
            raise SockbenchError(f"host {name} ({addr}) left the scheduler before the load started")


def _one_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _server_window(server, instant_ns, spec):
    """The server's CPU at the end of warmup and at the window's end, read here, where it runs (ticks)."""
    srv = ServerWindow(pid=server.pid if server is not None else None)
    if server is None:
        return srv
    samples = []
    for at_s in (spec.warmup_s, spec.warmup_s + spec.duration_s):
        delay = (instant_ns - time.time_ns()) / 1e9 + at_s
        if delay > 0:
            time.sleep(delay)
        try:
            user, sys_ = read_proc_stat(server.pid)
            samples.append((user, sys_, {}))
        except OSError:
            samples.append(None)
    srv.cpu0, srv.cpu1 = samples
    srv.rss_peak_bytes = read_rss_peak(server)  # a high-water mark: read after the window
    return srv


def _collect(client, futures, chosen, instant_ns, spec):
    """Each host's answer, and a problem line per host that died or failed during the run."""
    answers, problems = {}, []
    deadline = time.monotonic() + (instant_ns - time.time_ns()) / 1e9 + spec.warmup_s + spec.duration_s \
        + max(RESULT_GRACE_S, spec.timeout_s + 2)
    pending = dict(chosen)
    while pending:
        live = set(connected_workers(client))
        for name in list(pending):
            f = futures[name]
            if f.status == "finished":
                answers[name] = f.result()
                if answers[name].get("error"):
                    problems.append(f"host {name}: {answers[name]['error']}")
                del pending[name]
            elif f.status in ("error", "cancelled"):
                problems.append(f"host {name} failed during the run: {_one_line(f.exception())}"
                                if f.status == "error" else f"host {name}: its task was cancelled")
                del pending[name]
            elif name not in live:
                problems.append(f"host {name} ({pending[name]}) died during the run; its figures are lost")
                client.cancel([f], force=True)
                del pending[name]
        if pending and time.monotonic() > deadline:
            for name in pending:
                problems.append(f"host {name} did not hand its result back in time")
                client.cancel([futures[name]], force=True)
            break
        if pending:
            time.sleep(POLL_S)
    return answers, problems


# --- the merge -------------------------------------------------------------------------------------


def merge(spec, server, target, started_at, chosen, specs, answers, problems, srv, clocks):
    """The merged ``LoadResult``: every host's load processes added up exactly, and each host's part."""
    rs, parts, reasons = [], [], list(problems)
    for (name, addr), hspec in zip(chosen, specs):
        a = answers.get(name) or {}
        procs = [ProcResult.from_json(p) for p in a.get("procs") or []]
        # the CPU counters are per machine: the total has no foreign-load figure (each host has its own)
        rs.extend(replace(p, index=len(rs) + i, cpu_stat=None, server_cpu=None) for i, p in enumerate(procs))
        parts.append(_host_part(name, addr, hspec, a, procs, clocks.get(name)))
        if a.get("problems"):
            reasons.extend(f"host {name}: {p}" for p in a["problems"])
    # every host's load processes, as one run's (a host that is missing shows as missing processes)
    total = replace(spec, target=None if spec.server else target, procs=sum(h.procs for h in specs))
    result = build_result(total, server, target, started_at, dict(enumerate(rs)), reasons, srv)
    client, client_bound = _cluster_client(rs, parts)
    client_bound = client_bound and srv.exit_status is None
    # the hosts' load processes are counted in ``procs``; the workload keeps what each host was asked for
    return replace(result, client=client, client_bound=client_bound,
                   limited_by=limited_by(client_bound, result.server_proc), interference=None,
                   workload=replace(result.workload, procs=spec.procs, client_cpus=list(spec.client_cpus)),
                   hosts=parts)


def _host_part(name, addr, hspec, a, procs, clock):
    r = LoadResult.from_json(a["result"], f"host {name}'s result") if a.get("result") else None
    late = [p.start_late_ns for p in procs if p.start_late_ns is not None]
    reason = a.get("error") or (r.invalid_reason if r is not None else "its result was lost")
    return HostPart(
        name=name, address=addr, conns=hspec.conns, procs=hspec.procs,
        valid=bool(r is not None and r.valid), invalid_reason=None if r is not None and r.valid else reason,
        throughput=r.throughput if r else None, latency_us=r.latency_us if r else None,
        errors=r.errors if r else HostPart(name).errors, client=r.client if r else Client(),
        client_bound=bool(r and r.client_bound), interference=r.interference if r else None,
        worker_cpu=WorkerCpu(**a["worker_cpu"]) if a.get("worker_cpu") else WorkerCpu(),
        clock=clock or ClockOffset(), start_late_s=max(late) / 1e9 if late else None,
        machine=r.machine if r else None,
    )


def _cluster_client(rs, parts):
    """The clients' CPU over every host: CPU seconds summed, the share over every host's CPUs (no CPU list:
    its numbers are per machine); the loops' counts over every load process; client-bound when any host was."""
    m = SimpleNamespace(**merge_fields(rs, ProcResult))  # the counts only: the histograms are the total's
    # each host's CPU-seconds available over its window (its CPUs x the window): its CPU time / its share
    caps = [((p.client.user_s + p.client.sys_s) / p.client.cpu_util, p.client.busy_util)
            for p in parts if p.client.cpu_util]
    capacity = sum(c for c, _ in caps)
    busy = [c * b for c, b in caps if b is not None]
    client = Client.of(
        rs, cpu_util=(m.user_s + m.sys_s) / capacity if capacity else None, polling=m.polling,
        busy_util=(sum(busy) / capacity) if m.polling and busy and capacity else None,
        user_s=m.user_s, sys_s=m.sys_s, cpus=None, us_per_msg=CpuPerMsg.of(m.user_s, m.sys_s, m.msgs),
        engine=next((p.client.engine for p in parts if p.client.engine), None),
    )
    bound = any(p.client_bound for p in parts) or bool(client.load is not None and client.load >= CLIENT_BOUND_UTIL)
    return client, bound


# --- the load host's side (runs in the Dask worker) --------------------------------------------------


def host_load(run_id, name, spec):
    """One load host's share, as a Dask task on that host's worker: connect, say ready, wait for the
    instant, run the window, hand back ``{"result", "procs", "problems", "worker_cpu"}`` (or ``{"error"}``)."""
    # deferred: distributed is the optional extra; this runs in a Dask worker, where it is imported
    import distributed

    queue = distributed.Queue(f"sockbench-{run_id}-ready")
    start = distributed.Variable(f"sockbench-{run_id}-start")
    started_at = iso_utc()
    cpu = {}

    def start_at():
        queue.put({"host": name, "event": "ready"})
        try:
            msg = start.get(timeout=READY_TIMEOUT_S + 60)
        except TimeoutError:
            raise SockbenchError("the coordinator never sent the start instant") from None
        if msg.get("abort"):
            raise SockbenchError("the coordinator stopped the run before the window")
        cpu["before"] = (read_proc_stat(os.getpid()), read_task_cpu_s(os.getpid()), time.monotonic())
        return time.monotonic_ns() + (msg["start_wall_ns"] - time.time_ns())

    pinned = os.sched_getaffinity(0)
    host_cpus = os.environ.get(HOST_CPUS_ENV)
    try:
        if host_cpus:
            # this thread only (pid 0): the load processes it spawns inherit its mask, then pin themselves
            os.sched_setaffinity(0, [int(c) for c in host_cpus.split(",")])
        spec.validate()
        endpoint = resolve(spec.target)
        procs, problems, srv = measure(spec, None, endpoint, start_at=start_at)
    except SockbenchError as e:
        # the harness's lines name the target they could not reach
        queue.put({"host": name, "event": "error", "message": str(e)})
        return {"error": str(e)}
    finally:
        os.sched_setaffinity(0, pinned)
    after = (read_proc_stat(os.getpid()), read_task_cpu_s(os.getpid()), time.monotonic())
    result = build_result(spec, None, endpoint, started_at, procs, problems, srv)
    (u0, s0), exact0, t0 = cpu["before"]
    (u1, s1), exact1, t1 = after
    span = t1 - t0
    # user/sys in clock ticks (10 ms), the share from the scheduler's exact runtime of the worker's threads
    worker_cpu = {"user_s": round(u1 - u0, 6), "sys_s": round(s1 - s0, 6), "span_s": round(span, 6),
                  "util": max(0.0, exact1 - exact0) / span if span > 0 else None}
    return {"result": result.to_json(), "procs": [procs[i].to_json() for i in sorted(procs)],
            "problems": problems, "worker_cpu": worker_cpu}

