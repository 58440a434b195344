"""The harness's TLS load against a C client on OpenSSL, and its handshakes against ``openssl s_time``.

Usage::

    python -m sockbench.bench.calibrate.tls_reference [--servers cython uvloop] [--rounds 5]
        [--warmup 0.5] [--duration 2] [--tls-version 1.3] [--no-handshakes] [--json out.json]

Why it is built this way: the claim is relative (the load over TLS is as lean
as a C client's), so it is checked as ``vs_reference`` checks the plain load:
one pinned TLS server per server, loaded in alternation (A B, B A, ...) by the
harness (``ext/tlsgen.pyx``) and by ``ref_client.c --tls`` (the same OpenSSL
settings, ``ext/tlsconf.pxd``; every byte checked; no histogram, no Python),
both pinned to the same client CPU, at 100 x 64 B and 10 x 16 KiB, one
message in flight each.  Per round: the harness's msgs/s over the C client's
(target 0.9 to 1.1), its CPU per message over the C client's (target at most
1.1x), and the server's CPU per message.

Handshakes (unless ``--no-handshakes``): ``openssl s_time -new`` against the
harness in connect mode with one connection and full handshakes, alternating:
handshakes per second, each client's CPU per handshake, and the server's CPU
per handshake under each, which is what the two must agree on (at one
connection a lighter client reads more handshakes a second).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import (
    Spread, build_ref_client, check_cpus, fmt_spread, machine_line, pinned, run_ref_client, spread,
)
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.tls import TlsConfig, ensure_certificate

__all__ = ["WORKLOADS", "MsgRound", "WorkloadSummary", "HandshakeRound", "HandshakeSummary", "ServerSummary",
           "Calibration", "calibrate", "main"]

#: (conns, size): the two workloads of the issue, one message in flight per connection
WORKLOADS = ((100, 64), (10, 16384))
#: the targets: the harness's msgs/s within 10% of the C client's, its CPU per message at most 1.1x
MSGS_RANGE = (0.9, 1.1)
CPU_MAX = 1.1


@dataclass(frozen=True)
class MsgRound:
    """One round of one workload: both clients' msgs/s and CPU µs per message, the server's under each, the ratios."""

    harness_msgs_per_s: float
    ref_msgs_per_s: float
    harness_cpu_us_per_msg: float | None
    ref_cpu_us_per_msg: float | None
    #: the server's exact CPU per message over the C client's window (it reads the server's /proc at its edges)
    server_cpu_us_per_msg_ref: float | None
    ratio_msgs: float
    ratio_cpu_per_msg: float | None


@dataclass(frozen=True)
class WorkloadSummary:
    conns: int
    size: int
    rounds: list
    harness_msgs_per_s: Spread | None
    ref_msgs_per_s: Spread | None
    harness_cpu_us_per_msg: Spread | None
    ref_cpu_us_per_msg: Spread | None
    ratio_msgs: Spread | None
    ratio_cpu_per_msg: Spread | None
    server_cpu_us_per_msg: Spread | None


@dataclass(frozen=True)
class HandshakeRound:
    """One round: handshakes per second and client CPU µs per handshake of ``openssl s_time`` and of the harness."""

    harness_per_s: float
    s_time_per_s: float
    harness_cpu_us: float | None
    s_time_cpu_us: float | None
    #: the server's exact CPU per handshake under each client, over each client's whole run (its runtime from /proc)
    server_cpu_us_harness: float | None
    server_cpu_us_s_time: float | None
    ratio: float


@dataclass(frozen=True)
class HandshakeSummary:
    rounds: list
    harness_per_s: Spread | None
    s_time_per_s: Spread | None
    harness_cpu_us: Spread | None
    s_time_cpu_us: Spread | None
    server_cpu_us_harness: Spread | None
    server_cpu_us_s_time: Spread | None
    ratio: Spread | None


@dataclass(frozen=True)
class ServerSummary:
    server: str
    negotiated: dict | None
    workloads: list
    handshakes: HandshakeSummary | None


@dataclass(frozen=True)
class Calibration:
    tls_version: str
    rounds: int
    warmup_s: float
    duration_s: float
    servers: list


def _per_msg(user, sys_, msgs):
    return (user + sys_) / msgs * 1e6 if msgs else None


def _harness(address, tls, conns, size, warmup, duration, cpu):
    r = run_load(LoadSpec(target=tuple(address), mode="closed", conns=conns, size=size, depth=1, duration_s=duration,
                          warmup_s=warmup, client_cpus=(cpu,), tls=tls))
    if not r.valid:
        raise SockbenchError(f"harness run invalid: {r.invalid_reason}")
    msgs = r.throughput.msgs_per_s * duration
    return r, _per_msg(r.client.user_s, r.client.sys_s, msgs)


def _msg_round(i, exe, sp, tls, workload, warmup, duration, cpu):
    conns, size = workload
    order = ("harness", "ref") if i % 2 == 0 else ("ref", "harness")
    out = {}
    for who in order:
        if who == "ref":
            ref = run_ref_client(exe, sp.address, cpu, what="(TLS reference client)", overrun_s=60, conns=conns,
                                 size=size, depth=1, warmup=warmup, duration=duration, server_pid=sp.pid, tls=tls)
            if ref.errors.total:
                raise SockbenchError(f"the reference client's run failed: {ref.error}")
            srv = ref.server.runtime_s if ref.server is not None else None
            out["ref"] = (ref.msgs / duration, _per_msg(ref.client.user_s, ref.client.sys_s, ref.msgs),
                          srv / ref.msgs * 1e6 if srv and ref.msgs else None, ref.tls)
        else:
            r, cpu_per = _harness(sp.address, tls, conns, size, warmup, duration, cpu)
            out["harness"] = (r.throughput.msgs_per_s, cpu_per, None, r.tls and {"version": r.tls.version,
                                                                                 "cipher": r.tls.cipher})
    h, ref = out["harness"], out["ref"]
    row = MsgRound(harness_msgs_per_s=h[0], ref_msgs_per_s=ref[0], harness_cpu_us_per_msg=h[1],
                   ref_cpu_us_per_msg=ref[1], server_cpu_us_per_msg_ref=ref[2], ratio_msgs=h[0] / ref[0],
                   ratio_cpu_per_msg=h[1] / ref[1] if h[1] and ref[1] else None)
    print(f"  {conns} x {size} B round {i + 1}: harness {row.harness_msgs_per_s:,.0f}/s "
          f"{row.harness_cpu_us_per_msg:.2f} µs/msg | C {row.ref_msgs_per_s:,.0f}/s {row.ref_cpu_us_per_msg:.2f} µs/msg"
          f" | ratios {row.ratio_msgs:.3f} {row.ratio_cpu_per_msg:.3f}", file=sys.stderr)
    return row, h[3] or ref[3]


_S_TIME_RE = re.compile(r"(\d+) connections in ([\d.]+) real seconds")


def _run_s_time(exe, address, tls, duration, cpu):
    """``openssl s_time -new`` for ``duration`` seconds, its CPU from ``wait4``: (handshakes per second, its CPU µs
    per handshake, handshakes)."""
    host, port = address
    cmd = [exe, "s_time", "-connect", f"{host}:{port}", "-new", "-time", str(max(1, round(duration))),
           "-tls1_3" if tls.version == "1.3" else "-tls1_2"]
    if tls.cipher:
        cmd += ["-ciphersuites" if tls.version == "1.3" else "-cipher", tls.cipher]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=pinned(cpu))
        deadline = time.monotonic() + duration + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise SockbenchError("openssl s_time overran its time")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    m = _S_TIME_RE.search(text)
    if proc.returncode != 0 or m is None:
        why = (etext.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SockbenchError(f"openssl s_time failed: {why}")
    n, secs = int(m.group(1)), float(m.group(2))
    return n / secs, (usage.ru_utime + usage.ru_stime) / n * 1e6 if n else None, n


def _server_runtime_s(pid):
    """The server's exact CPU so far: the scheduler's runtime of its threads (None if unreadable)."""
    # deferred: the /proc reader, read here around each client's run only
    from sockbench.procfs import read_task_runtimes

    try:
        return sum(read_task_runtimes(pid).values())
    except (OSError, ValueError):
        return None


def _per_handshake(before, after, n):
    return (after - before) / n * 1e6 if n and before is not None and after is not None else None


def _handshake_round(i, exe, sp, tls, duration, cpu):
    order = ("harness", "s_time") if i % 2 == 0 else ("s_time", "harness")
    out = {}
    for who in order:
        before = _server_runtime_s(sp.pid)
        if who == "s_time":
            per_s, cpu_us, n = _run_s_time(exe, sp.address, tls, duration, cpu)
            out[who] = (per_s, cpu_us, _per_handshake(before, _server_runtime_s(sp.pid), n))
        else:
            r = run_load(LoadSpec(target=tuple(sp.address), mode="connect", conns=1, size=64, duration_s=duration,
                                  warmup_s=0.3, client_cpus=(cpu,), tls=tls))
            after = _server_runtime_s(sp.pid)
            if not r.valid:
                raise SockbenchError(f"harness connect run invalid: {r.invalid_reason}")
            n = r.tls.handshakes or 0
            # the server's CPU over the whole run, per connection of the whole run (warmup's included): the probe's
            # one handshake aside, every connection of the run is in the time series
            whole = sum(r.timeseries.msgs or []) + 1
            out[who] = (r.tls.handshakes_per_s, _per_msg(r.client.user_s, r.client.sys_s, n),
                        _per_handshake(before, after, whole))
    h, s = out["harness"], out["s_time"]
    row = HandshakeRound(harness_per_s=h[0], s_time_per_s=s[0], harness_cpu_us=h[1], s_time_cpu_us=s[1],
                         server_cpu_us_harness=h[2], server_cpu_us_s_time=s[2], ratio=h[0] / s[0])
    print(f"  handshakes round {i + 1}: harness {row.harness_per_s:,.0f}/s {row.harness_cpu_us or 0:.0f} µs "
          f"(server {row.server_cpu_us_harness or 0:.0f} µs) | s_time {row.s_time_per_s:,.0f}/s "
          f"{row.s_time_cpu_us or 0:.0f} µs (server {row.server_cpu_us_s_time or 0:.0f} µs) | ratio {row.ratio:.3f}",
          file=sys.stderr)
    return row


def calibrate(servers, rounds, warmup, duration, tls_version="1.3", handshakes=True, server_cpu=0, client_cpu=1,
              messages=True):
    """Every server's workloads (and handshakes) ``rounds`` times with each client, alternating."""
    check_cpus(server_cpu, client_cpu)
    exe = build_ref_client(tls=True)
    openssl = shutil.which("openssl") if handshakes else None
    if handshakes and openssl is None:
        raise UsageError("the handshake check runs `openssl s_time`: no openssl command here (or pass --no-handshakes)")
    folder = tempfile.mkdtemp(prefix="sockbench-tls-calibration-")
    out = []
    try:
        cert, key = ensure_certificate(folder)
        tls = TlsConfig(cert=cert, key=key, version=tls_version).check()
        for server in servers:
            registry.get(server).check_tls()
            print(f"{server}:", file=sys.stderr)
            with ServerProcess(server, cpus=(server_cpu,), extra_args=tls.server_args()) as sp:
                workloads, negotiated = [], None
                for w in WORKLOADS if messages else ():
                    rows = []
                    for i in range(rounds):
                        row, neg = _msg_round(i, exe, sp, tls, w, warmup, duration, client_cpu)
                        rows.append(row)
                        negotiated = negotiated or neg
                    workloads.append(WorkloadSummary(
                        conns=w[0], size=w[1], rounds=rows,
                        harness_msgs_per_s=spread([r.harness_msgs_per_s for r in rows]),
                        ref_msgs_per_s=spread([r.ref_msgs_per_s for r in rows]),
                        harness_cpu_us_per_msg=spread([r.harness_cpu_us_per_msg for r in rows]),
                        ref_cpu_us_per_msg=spread([r.ref_cpu_us_per_msg for r in rows]),
                        ratio_msgs=spread([r.ratio_msgs for r in rows]),
                        ratio_cpu_per_msg=spread([r.ratio_cpu_per_msg for r in rows]),
                        server_cpu_us_per_msg=spread([r.server_cpu_us_per_msg_ref for r in rows])))
                hs = None
                if handshakes:
                    rows = [_handshake_round(i, openssl, sp, tls, duration, client_cpu) for i in range(rounds)]
                    hs = HandshakeSummary(rounds=rows, harness_per_s=spread([r.harness_per_s for r in rows]),
                                          s_time_per_s=spread([r.s_time_per_s for r in rows]),
                                          harness_cpu_us=spread([r.harness_cpu_us for r in rows]),
                                          s_time_cpu_us=spread([r.s_time_cpu_us for r in rows]),
                                          server_cpu_us_harness=spread([r.server_cpu_us_harness for r in rows]),
                                          server_cpu_us_s_time=spread([r.server_cpu_us_s_time for r in rows]),
                                          ratio=spread([r.ratio for r in rows]))
                out.append(ServerSummary(server=server, negotiated=negotiated, workloads=workloads, handshakes=hs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Calibration(tls_version=tls_version, rounds=rounds, warmup_s=warmup, duration_s=duration, servers=out)


def _print(c):
    print(f"TLS {c.tls_version}, {c.rounds} rounds of {c.duration_s:g} s (+{c.warmup_s:g} s warmup), medians "
          f"[min..max]; {machine_line()}")
    for s in c.servers:
        neg = s.negotiated or {}
        print(f"{s.server}  ({neg.get('version', '?')} {neg.get('cipher', '?')})")
        for w in s.workloads:
            print(f"  {w.conns} conns x {w.size} B")
            print(f"    msgs/s          harness {fmt_spread(w.harness_msgs_per_s)}   C {fmt_spread(w.ref_msgs_per_s)}")
            print(f"    client µs/msg   harness {fmt_spread(w.harness_cpu_us_per_msg, '.2f')}   "
                  f"C {fmt_spread(w.ref_cpu_us_per_msg, '.2f')}")
            print(f"    server µs/msg   (under the C client) {fmt_spread(w.server_cpu_us_per_msg, '.2f')}")
            print(f"    ratio msgs/s ({MSGS_RANGE[0]}..{MSGS_RANGE[1]})   {fmt_spread(w.ratio_msgs, '.3f')}")
            print(f"    ratio CPU/msg (<= {CPU_MAX})  {fmt_spread(w.ratio_cpu_per_msg, '.3f')}")
        h = s.handshakes
        if h is not None:
            print("  full handshakes, one connection at a time")
            print(f"    per second      harness {fmt_spread(h.harness_per_s)}   s_time {fmt_spread(h.s_time_per_s)}")
            print(f"    client µs each  harness {fmt_spread(h.harness_cpu_us)}   s_time {fmt_spread(h.s_time_cpu_us)}")
            print(f"    server µs each  under the harness {fmt_spread(h.server_cpu_us_harness)}   under s_time "
                  f"{fmt_spread(h.server_cpu_us_s_time)}")
            print(f"    ratio harness / s_time       {fmt_spread(h.ratio, '.3f')}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.tls_reference",
                                 description=__doc__.split("\n")[0])
    default = [n for n in ("cython", "uvloop") if registry.get(n).tls_availability()[0]]
    ap.add_argument("--servers", nargs="+", default=default, help=f"TLS servers to load (default {' '.join(default)})")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--tls-version", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--no-handshakes", action="store_true", help="leave out the comparison with openssl s_time")
    ap.add_argument("--no-messages", action="store_true", help="leave out the comparison with the C client")
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args(argv)
    try:
        out = calibrate(a.servers, a.rounds, a.warmup, a.duration, a.tls_version, not a.no_handshakes,
                        messages=not a.no_messages)
    except SockbenchError as e:
        print(f"tls_reference: {e}", file=sys.stderr)
        return e.exit_code
    _print(out)
    if a.json:
        write_json_atomic(a.json, {**asdict(out), "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
