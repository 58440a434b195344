"""A synthetic results folder for the report/plots/compare tests: realistic, deterministic, fast.

Why it exists: the report code must be testable without running a load (which
takes seconds and is noisy).  These results are built as ``LoadResult``
objects of the result schema (``sockbench.bench.schema``) and written with its
``to_json()``, as the suite writes a real run: real HdrHistogram-encoded latency
histograms, per-interval time series with a warmup, and the ``CellContext``
the suite attaches.  ``slowdown`` scales
one server's throughput (and stretches its latency), to test ``compare``;
``disturbed`` marks a server's rounds as disturbed by foreign load (and, with
``discarded``, leaves that many set-aside attempts per round in ``raw/``, as
the suite does when it measures a disturbed round again).  Each cell has 6
rounds (``rounds`` overrides), what a stable cell takes at the least: 6 is
the fewest rounds with a 95% interval of a median.
The default plan has the protocol section (raw, frame, json at 100 x 64 B x
16): a framed message costs the server more CPU (``PROTO_COST_US``, user
time), so its throughput is lower, as in a real run.
"""

import json
import math
import os
import random
import statistics

from hdrh.histogram import HdrHistogram

from sockbench.bench.report.store import discarded_name, raw_name, write_json_atomic
from sockbench.bench.schema import (
    ERROR_KINDS, CellContext, Client, CpuPerMsg, Datagrams, Errors, Fairness, Interference, Latency, LoadResult, Machine,
    ServerProc, Throughput, Timeseries, TlsPart, TlsSetting, Workload,
)
from sockbench.bench.suite.plan import Plan

__all__ = ["make_results", "BASE_RATE", "PROTO_COST_US", "TRANSPORT_CPU", "UDP_LOSS", "WORKER_GAIN", "WORKER_CPU",
           "worker_factor", "TLS_COST_US", "CONNECT_US", "connect_kind"]

#: closed-loop msgs/s at 64 B, 100 connections, per server (realistic orders of magnitude)
BASE_RATE = {"selectors": 30000.0, "asyncio-protocol": 45000.0, "uvloop": 90000.0}

#: the extra server user CPU per message of each protocol over raw, in µs
PROTO_COST_US = {"raw": 0.0, "frame": 3.0, "json": 12.0}

#: each transport's server CPU per message as a share of tcp's (unix skips the TCP/IP stack); the rate follows
TRANSPORT_CPU = {"tcp": 1.0, "tcp6": 1.02, "unix": 0.65, "udp": 0.8}

#: each extra worker adds this share of one worker's msgs/s while it has a CPU of its own (none once they share)
WORKER_GAIN = 0.8
#: the server CPU per message of N workers over one's: each worker's loop runs emptier
WORKER_CPU = 1.05

#: the share of datagrams a udp round loses (``loss`` overrides it per server)
UDP_LOSS = 0.002

#: TLS: the server CPU (user) each message costs over TLS besides its plain cost, in µs, per server (else 6)
TLS_COST_US = {"selectors": 9.0, "asyncio-protocol": 11.0, "uvloop": 10.0}
#: connect mode: the server CPU per connection, plain, and per full and resumed TLS handshake, in µs
CONNECT_US = {"plain": 60.0, "full": 600.0, "resumed": 300.0}

N_SAMPLES = 600
_NORMAL = statistics.NormalDist()

MACHINE = Machine(
    hostname="fixture-host",
    cpu_model="Synthetic CPU @ 3.0GHz",
    cores=2,
    os="Linux",
    kernel="6.1.0",
    python="3.11.9",
)


def _conc_factor(conns):
    return {1: 0.35, 10: 0.85, 100: 1.0}.get(conns, 0.9)


def _size_factor(size):
    return 1.0 / (1.0 + size / 8192.0)


def _result(rng, cell, round_no, index, plan, rate, slow, peak=None, raw_rate=None, disturbed=False, loss=UDP_LOSS,
            pass_no=None):
    noise = 1.0 + rng.uniform(-0.02, 0.02)
    target = None
    if cell.mode in ("closed", "connect"):
        msgs = rate * noise * slow
        base_lat = cell.conns / msgs * 1e6  # Little's law, microseconds
        thr = Throughput(msgs_per_s=msgs, bytes_per_s=msgs * cell.size,
                         conns_per_s=msgs if cell.mode == "connect" else None)
    else:
        target = peak * cell.load_pct / 100.0
        msgs = target * (1.0 - rng.uniform(0, 0.003))
        util = min(0.97, cell.load_pct / 100.0)
        base_lat = 40.0 / (1.0 - util) / slow  # M/M/1-ish hockey stick; a slower server is slower per message
        thr = Throughput(msgs_per_s=msgs, bytes_per_s=msgs * cell.size, target_rate=target, achieved_rate=msgs, behind=False)
    w = Workload(mode=cell.mode, protocol=cell.protocol, conns=cell.conns, transport=cell.transport, size=cell.size,
                 depth=cell.depth, server_cpus=list(plan.server_cpus), client_cpus=list(plan.client_cpus),
                 workers=cell.workers, tls=TlsSetting(version="1.3", resumption=cell.resumed) if cell.tls else None,
                 rate=target, duration_s=plan.duration_s, warmup_s=plan.warmup_s, procs=1)
    # nanoseconds, like the harness (sockbench.bench.load.hdr); the summary is in microseconds
    # stratified lognormal quantiles: the percentiles move with the workload, not with sampling luck
    h = HdrHistogram(1, 100 * 10**9, 3)
    scale = base_lat * 1000 * (1.0 + rng.uniform(-0.02, 0.02))
    values = [max(1, int(scale * math.exp(0.45 * _NORMAL.inv_cdf((i + 0.5) / N_SAMPLES)))) for i in range(N_SAMPLES)]
    for v in values:
        h.record_value(v)

    def at(pct):  # get_value_at_percentile's answer, read off the values (recorded in ascending order) at once
        return h.get_highest_equivalent_value(values[h.get_target_count_at_percentile(pct) - 1]) / 1e3

    lat = Latency(count=N_SAMPLES, p50=at(50), p90=at(90), p99=at(99), p999=at(99.9), max=h.get_max_value() / 1e3,
                  mean=sum(values) / N_SAMPLES / 1e3)
    n_iv = int(round((plan.duration_s + plan.warmup_s) / plan.interval_s))
    warm = int(round(plan.warmup_s / plan.interval_s))
    series = []
    for i in range(n_iv):
        ramp = 0.6 + 0.4 * i / max(1, warm) if i < warm else 1.0
        series.append(int(msgs * plan.interval_s * ramp * (1 + rng.uniform(-0.03, 0.03))))
    # closed loop: the rate already follows the transport's cost (make_results), so the CPU per message does too
    # N workers answer N-fold (while they have the CPUs) but each message costs about what it cost one
    per_worker = worker_factor(cell.workers, len(plan.server_cpus)) * WORKER_CPU if cell.workers > 1 else 1.0
    us_user = (1e6 / (msgs / slow) * 0.35 * per_worker if cell.mode == "closed"
               else 6.0 * TRANSPORT_CPU.get(cell.transport, 1.0))
    us_sys = us_user * 0.8
    if cell.protocol != "raw":
        # the raw costs, plus the protocol's own in user time: the parsing is the interpreter's work
        raw_user = 1e6 / (raw_rate * noise) * 0.35 * per_worker
        us_user, us_sys = raw_user + PROTO_COST_US[cell.protocol], raw_user * 0.8
    elif cell.tls and cell.mode == "closed":
        # the plain costs, plus TLS's own in user time: the record layer's crypto and framing
        raw_user = 1e6 / (raw_rate * noise) * 0.35 * per_worker
        us_user, us_sys = raw_user + TLS_COST_US.get(cell.server, 6.0), raw_user * 0.8
    if cell.mode == "connect":
        cost = CONNECT_US[connect_kind(cell)] / slow
        us_user, us_sys = cost * 0.75, cost * 0.25
    tls = None
    if cell.tls:
        tls = TlsPart(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", group="x25519")
        if cell.mode == "connect":
            n = int(msgs * plan.duration_s)
            tls = TlsPart(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", group="x25519", handshakes=n,
                          resumed=n if cell.resumed else 0, handshakes_per_s=msgs)
    return LoadResult(
        server=cell.server,
        workload=w,
        throughput=thr,
        latency_us=lat,
        service_us=lat if cell.mode == "open" else None,
        cycle_us=lat if cell.mode == "connect" else None,
        errors=Errors.of(dict.fromkeys(ERROR_KINDS, 0)),
        valid=True,
        client_bound=False,
        invalid_reason=None,
        server_proc=ServerProc(
            user_s=us_user * msgs * plan.duration_s / 1e6, sys_s=0.4 * plan.duration_s,
            rss_peak_bytes=20_000_000 + cell.conns * 50_000,
            us_per_msg=CpuPerMsg(user=us_user, sys=us_sys),
        ),
        client=Client(cpu_util=0.55, user_s=0.1, sys_s=0.1),
        timeseries=Timeseries(interval_s=plan.interval_s, msgs=series, warmup_intervals=warm),
        hdr=h.encode().decode("ascii"),
        machine=MACHINE,
        started_at=f"2026-11-24T02:00:{index % 60:02d}Z",
        cell=CellContext.of(cell, round_no, None, index, peak, pass_no),
        interference=Interference(server_foreign=0.3 if disturbed else 0.002, client_foreign=0.001, server_steal=0.0,
                                  client_steal=0.0, loadavg_1m=1.2 if disturbed else 0.1, disturbed=disturbed),
        fairness=(Fairness.of([int(msgs * plan.duration_s / cell.conns)] * cell.conns)
                  if cell.mode != "connect" else None),
        datagrams=_datagrams(msgs * plan.duration_s, loss, round_no) if cell.transport == "udp" else None,
        tls=tls,
    )


def connect_kind(cell):
    """A connect cell's kind: ``plain`` connections, ``full`` or ``resumed`` TLS handshakes."""
    return "plain" if not cell.tls else ("resumed" if cell.resumed else "full")


def worker_factor(workers, cpus):
    """msgs/s of ``workers`` server processes over one's, on ``cpus`` server CPUs."""
    return 1.0 + WORKER_GAIN * (min(workers, cpus) - 1)


def _datagrams(answered, loss, round_no):
    """A udp round's accounting: ``answered`` echoes of ``answered / (1 - loss)`` sent; a few reordered, one duplicate."""
    received = int(answered)
    sent = int(round(received / (1.0 - loss)))
    return Datagrams(sent=sent, received=received, lost=sent - received, duplicates=1 if round_no == 1 else 0,
                     out_of_order=3 * round_no)


def make_results(path, servers=("selectors", "asyncio-protocol", "uvloop"), slowdown=None, seed=1, plan=None,
                 rounds=None, disturbed=(), discarded=0, loss=None, passes=True):
    """Write a complete results folder at ``path``; ``slowdown={server: 0.2}`` makes that server 20% slower.

    ``passes``: round k of every cell was measured in pass k, as a run measured in passes records it (False: a
    folder from before the passes, with no ``cell.pass``).

    Every cell runs over its plan's transport (the rate follows ``TRANSPORT_CPU``); a udp cell carries a
    datagram accounting that loses ``UDP_LOSS`` of what it sent, or ``loss={server: share}``.

    ``disturbed`` servers' rounds say ``interference.disturbed``; each of their rounds also leaves
    ``discarded`` set-aside attempts.
    """
    rng = random.Random(seed)
    plan = plan or Plan(servers=tuple(servers), duration_s=1.0, warmup_s=0.2, interval_s=0.1)
    rounds = rounds or max(plan.min_rounds, 6)
    slowdown = slowdown or {}
    os.makedirs(path, exist_ok=True)
    plan.save(os.path.join(path, "plan.json"))
    meta = {
        "schema": 1, "kind": "sockbench-run", "started_at": "2026-11-24T02:00:00Z",
        "commit": "0123abc", "dirty": False, "machine": MACHINE.to_json(), "plan": plan.to_dict(),
        "status": "complete",
    }
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)
    for index, cell in enumerate(plan.cells()):
        slow = 1.0 - slowdown.get(cell.server, 0.0)
        per_transport = 1.0 / TRANSPORT_CPU.get(cell.transport, 1.0) * worker_factor(cell.workers, len(plan.server_cpus))
        raw_rate = rate = (BASE_RATE.get(cell.server, 40000.0) * _conc_factor(cell.conns) * _size_factor(cell.size)
                           * per_transport)
        if cell.protocol != "raw":
            # what the extra CPU per message allows, if the server is CPU-bound at the raw rate
            rate = 1e6 / (1e6 / rate + PROTO_COST_US[cell.protocol])
        elif cell.tls and cell.mode == "closed":
            rate = 1e6 / (1e6 / rate + TLS_COST_US.get(cell.server, 6.0))
        if cell.mode == "connect":
            rate = 1e6 / CONNECT_US[connect_kind(cell)]
        peak = BASE_RATE.get(cell.server, 40000.0) * _size_factor(plan.open_size) * slow * per_transport
        bad = cell.server in disturbed
        lost = (loss or {}).get(cell.server, UDP_LOSS)
        for r in range(1, rounds + 1):
            pass_no = r if passes else None
            for attempt in range(1, discarded + 1 if bad else 1):
                res = _result(rng, cell, r, index, plan, rate, slow, peak, raw_rate, disturbed=True, loss=lost,
                              pass_no=pass_no)
                write_json_atomic(os.path.join(path, "raw", discarded_name(cell, r, attempt)), res.to_json())
            res = _result(rng, cell, r, index, plan, rate, slow, peak, raw_rate, disturbed=bad, loss=lost,
                          pass_no=pass_no)
            write_json_atomic(os.path.join(path, "raw", raw_name(cell, r)), res.to_json())
    return path
