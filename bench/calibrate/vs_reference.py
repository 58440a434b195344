"""Harness vs a minimal C epoll client, same server, same run: is the harness as lean as native code?

Usage::

    python -m sockbench.bench.calibrate.vs_reference [--server cython] [--rounds 3] [--duration 3] [--json out.json]

Why it is built this way: the claim is relative (at least 0.9x the C
client's msgs/s, at most 1.1x its CPU per message), and absolute figures of
separate runs on a shared machine mean little.  One pinned server is loaded
by both clients in alternation (A B, B A, ...), each pinned to the same client
CPU; ratios are taken per round and summarised by median and spread.  CPU per
message is each client's getrusage over its window divided by its messages.
The C client (``ref_client.c``, ``common.build_ref_client``) keeps the same
messages in flight and checks every byte, but keeps no histogram and runs no
Python, so the difference is the price of the harness's timing, histograms
and Cython.  It also prints the harness's coalescing (messages per write).
``--json`` writes its dataclasses (``RefFigures``, ``HarnessFigures``,
``Round``, ``WorkloadSummary``, ``Comparison``) with ``dataclasses.asdict``.
"""

import argparse
import sys
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import Spread, build_ref_client, check_cpus, fmt_spread, run_ref_client, spread
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.errors import SockbenchError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess

__all__ = ["WORKLOADS", "RefFigures", "HarnessFigures", "Round", "WorkloadSummary", "Comparison", "run_reference",
           "run_harness", "compare", "json_document", "main"]

#: (conns, size, depth): the two workloads the harness must keep up on
WORKLOADS = ((100, 64, 8), (10, 1024, 1))


@dataclass(frozen=True)
class RefFigures:
    """One run of the reference client: msgs/s over the nominal window, its CPU µs per message and utilisation."""

    msgs_per_s: float
    cpu_us_per_msg: float | None
    cpu_util: float | None


@dataclass(frozen=True)
class HarnessFigures:
    """One run of the harness: the reference's figures, plus its coalescing and latency."""

    msgs_per_s: float
    cpu_us_per_msg: float | None
    cpu_util: float | None
    msgs_per_write: float | None
    p50_us: float | None
    p99_us: float | None


@dataclass(frozen=True)
class Round:
    """One round of one workload: both clients and their ratios (harness / reference)."""

    harness: HarnessFigures
    ref: RefFigures
    ratio_msgs: float
    ratio_cpu_per_msg: float


@dataclass(frozen=True)
class WorkloadSummary:
    """One workload over every round: each figure's median and spread."""

    conns: int
    size: int
    depth: int
    rounds: list[Round]
    harness_msgs_per_s: Spread | None
    ref_msgs_per_s: Spread | None
    harness_cpu_us_per_msg: Spread | None
    ref_cpu_us_per_msg: Spread | None
    ratio_msgs: Spread | None
    ratio_cpu_per_msg: Spread | None
    harness_msgs_per_write: Spread | None
    harness_cpu_util: Spread | None
    ref_cpu_util: Spread | None


@dataclass(frozen=True)
class Comparison:
    """The whole comparison: its settings and every workload's summary."""

    server: str
    rounds: int
    warmup_s: float
    duration_s: float
    workloads: list[WorkloadSummary]


def run_reference(exe, address, conns, size, depth, warmup, duration, cpu):
    """One run of the reference client; its msgs/s (over the nominal window), CPU per message and utilisation."""
    ref = run_ref_client(exe, address, cpu, what="(reference client)", overrun_s=30, conns=conns, size=size,
                         depth=depth, warmup=warmup, duration=duration)
    if ref.errors.total:
        raise SockbenchError(f"the reference client's run failed: {ref.error}")
    cpu_s = ref.client.user_s + ref.client.sys_s
    return RefFigures(msgs_per_s=ref.msgs / duration, cpu_us_per_msg=cpu_s / ref.msgs * 1e6 if ref.msgs else None,
                      cpu_util=ref.client.cpu_util)


def run_harness(address, conns, size, depth, warmup, duration, cpu):
    """One run of the harness against the same server; the same figures, plus its latency and coalescing."""
    r = run_load(LoadSpec(target=tuple(address), mode="closed", conns=conns, size=size, depth=depth,
                          duration_s=duration, warmup_s=warmup, client_cpus=(cpu,)))
    if not r.valid:
        raise SockbenchError(f"harness run invalid: {r.invalid_reason}")
    c = r.client
    msgs = r.throughput.msgs_per_s * duration
    return HarnessFigures(msgs_per_s=r.throughput.msgs_per_s,
                          cpu_us_per_msg=(c.user_s + c.sys_s) / msgs * 1e6 if msgs else None,
                          cpu_util=c.cpu_util, msgs_per_write=c.msgs_per_write,
                          p50_us=r.latency_us.p50, p99_us=r.latency_us.p99)


def _round(i, exe, address, workload, warmup, duration, client_cpu):
    """One round of one workload: both clients, in alternating order, and their ratios."""
    conns, size, depth = workload
    order = ("harness", "ref") if i % 2 == 0 else ("ref", "harness")
    ran = {}
    for who in order:
        if who == "ref":
            ran[who] = run_reference(exe, address, conns, size, depth, warmup, duration, client_cpu)
        else:
            ran[who] = run_harness(address, conns, size, depth, warmup, duration, client_cpu)
    h, r = ran["harness"], ran["ref"]
    row = Round(harness=h, ref=r, ratio_msgs=h.msgs_per_s / r.msgs_per_s,
                ratio_cpu_per_msg=h.cpu_us_per_msg / r.cpu_us_per_msg)
    print(f"  {conns} conns x {size} B x {depth}: round {i + 1}: harness {h.msgs_per_s:,.0f}/s "
          f"{h.cpu_us_per_msg:.3f} µs/msg | ref {r.msgs_per_s:,.0f}/s {r.cpu_us_per_msg:.3f} µs/msg "
          f"| ratios {row.ratio_msgs:.3f} {row.ratio_cpu_per_msg:.3f}", file=sys.stderr)
    return row


def _workload_summary(workload, rows):
    conns, size, depth = workload
    return WorkloadSummary(
        conns=conns, size=size, depth=depth, rounds=rows,
        harness_msgs_per_s=spread([r.harness.msgs_per_s for r in rows]),
        ref_msgs_per_s=spread([r.ref.msgs_per_s for r in rows]),
        harness_cpu_us_per_msg=spread([r.harness.cpu_us_per_msg for r in rows]),
        ref_cpu_us_per_msg=spread([r.ref.cpu_us_per_msg for r in rows]),
        ratio_msgs=spread([r.ratio_msgs for r in rows]),
        ratio_cpu_per_msg=spread([r.ratio_cpu_per_msg for r in rows]),
        harness_msgs_per_write=spread([r.harness.msgs_per_write for r in rows]),
        harness_cpu_util=spread([r.harness.cpu_util for r in rows]),
        ref_cpu_util=spread([r.ref.cpu_util for r in rows]),
    )


def compare(server, rounds, warmup, duration, server_cpu=0, client_cpu=1):
    """Run every workload ``rounds`` times with each client, alternating; return the ``Comparison``."""
    check_cpus(server_cpu, client_cpu)
    workloads = []
    exe = build_ref_client()
    with ServerProcess(server, cpus=(server_cpu,)) as sp:
        for workload in WORKLOADS:
            rows = [_round(i, exe, sp.address, workload, warmup, duration, client_cpu) for i in range(rounds)]
            workloads.append(_workload_summary(workload, rows))
    return Comparison(server=server, rounds=rounds, warmup_s=warmup, duration_s=duration, workloads=workloads)


def json_document(out, machine):
    """The ``--json`` document: the comparison, and the machine it ran on."""
    return {**asdict(out), "machine": machine}


def _print(out):
    print(f"server {out.server}, {out.rounds} rounds of {out.duration_s:g} s (+{out.warmup_s:g} s warmup), "
          f"medians [min..max]")
    for w in out.workloads:
        print(f"{w.conns} conns x {w.size} B x {w.depth} in flight")
        print(f"  msgs/s        harness {fmt_spread(w.harness_msgs_per_s)}   ref {fmt_spread(w.ref_msgs_per_s)}")
        print(f"  CPU µs/msg    harness {fmt_spread(w.harness_cpu_us_per_msg, '.3f')}   ref {fmt_spread(w.ref_cpu_us_per_msg, '.3f')}")
        print(f"  client util   harness {fmt_spread(w.harness_cpu_util, '.0%')}   ref {fmt_spread(w.ref_cpu_util, '.0%')}")
        print(f"  ratio msgs/s (>= 0.9)      {fmt_spread(w.ratio_msgs, '.3f')}")
        print(f"  ratio CPU/msg (<= 1.1)     {fmt_spread(w.ratio_cpu_per_msg, '.3f')}")
        print(f"  coalescing: harness msgs per write {fmt_spread(w.harness_msgs_per_write, '.2f')}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.vs_reference", description=__doc__.split("\n")[0])
    default = "cython" if "cython" in registry.available_names() else "uvloop"
    ap.add_argument("--server", default=default, help=f"registered server to load (default {default})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args(argv)
    try:
        out = compare(a.server, a.rounds, a.warmup, a.duration)
    except SockbenchError as e:
        print(f"vs_reference: {e}", file=sys.stderr)
        return e.exit_code
    _print(out)
    if a.json:
        write_json_atomic(a.json, json_document(out, machine_info()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
