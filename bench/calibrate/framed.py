"""Framed protocols (``frame``, ``json``): every server's msgs/s and CPU per message, through the harness or the C client.

Usage::

    python -m sockbench.bench.calibrate.framed [--client harness|c] [--repeats 3] [--duration 3] [--warmup 1]
        [--servers cython,uvloop] [--protocols frame,json] [--conns 100 --size 64 --depth 16]
        [--server-cpu 0 --client-cpu 1] [--json PATH] [--md PATH]

Why it is built this way: the question is what parsing messages costs each
server, answered from two sides behind ``--client``: ``harness`` (the
product's own load path, ``run_load``: does the harness keep up) and ``c``
(``ref_client.c``, a cross-check from outside that costs less per message
than any server; server CPU read with ``sockbench.procfs`` at its window's
edges).

Rules: each repeat runs every (server, protocol) cell once, rotating the
server order, server and client pinned apart.  Per cell: medians and min..max
of msgs/s (every answer verified), server user/system/total CPU per message,
client CPU and ``limited_by``.  Invalid runs (errors, a stall, see
``sockbench.thresholds``; the line says which side holds the unanswered
bytes) are listed and left out.  Targets are cython/uvloop ratios within one
repeat, then their median: ``frame`` msgs/s >= 2.5x and user CPU/msg <= 0.15x;
``json`` msgs/s >= 4x.

The *kernel ceiling* per protocol is uvloop's CPU per message over cython's
system CPU per message: cython's user time is near zero, so its kernel time is
the floor for any server, and no client can lift the msgs/s ratio above it.
A target above the ceiling is out of the machine's reach, and the line says so.

``--json`` writes ``Summary`` (``Run``, ``CellRow``, ``Ratio``, ``Ceiling``,
``Settings``) with ``dataclasses.asdict``.  Not a unit test: it carries speed targets.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

from sockbench.bench.calibrate.common import (
    RefResult, Spread, build_ref_client, check_cpus, field_names, fmt_spread, machine_line, pinned,
    ref_client_command, spread,
)
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.procfs import read_proc_stat, read_proc_state, read_task_cpu_s
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.protocols import PROTOCOLS
from sockbench.thresholds import CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL, STALL_S
from sockbench.timestamps import iso_utc

__all__ = ["CLIENTS", "TARGETS", "METRICS", "Run", "CellRow", "Ratio", "Ceiling", "Settings", "Summary",
           "harness_cell", "c_cell", "run_benchmark", "summarize", "render", "json_document", "main"]

CLIENTS = ("harness", "c")


@dataclass(frozen=True)
class Run:
    """One run of one (server, protocol) cell: msgs/s, the server's and the client's CPU µs per message and use.

    An invalid run says why (``invalid_reason``); a run the client could not
    even report has every figure None.
    """

    valid: bool
    invalid_reason: str | None
    limited_by: str | None
    msgs_per_s: float | None
    server_user_us: float | None
    server_sys_us: float | None
    server_total_us: float | None
    server_util: float | None
    client_us: float | None
    client_util: float | None


_F = field_names(Run)
#: (protocol, metric, bound, "min" | "max") as cython / uvloop ratios
TARGETS = (
    ("frame", _F.msgs_per_s, 2.5, "min"),
    ("frame", _F.server_user_us, 0.15, "max"),
    ("json", _F.msgs_per_s, 4.0, "min"),
)
METRICS = (_F.msgs_per_s, _F.server_user_us, _F.server_sys_us, _F.server_total_us, _F.server_util, _F.client_us,
           _F.client_util)


@dataclass(frozen=True)
class CellRow:
    """One cell over its valid runs: each metric's median and spread, the invalid runs' reasons, who limited each."""

    msgs_per_s: Spread | None
    server_user_us: Spread | None
    server_sys_us: Spread | None
    server_total_us: Spread | None
    server_util: Spread | None
    client_us: Spread | None
    client_util: Spread | None
    invalid: list[str]
    limited_by: list[str | None]


@dataclass(frozen=True)
class Ratio:
    """A target ratio cython/uvloop: per repeat where both runs are valid, their spread, and the verdict."""

    protocol: str
    metric: str
    target: str
    per_repeat: list[float]
    stats: Spread | None
    met: bool | None


@dataclass(frozen=True)
class Ceiling:
    """The kernel ceiling of a protocol's msgs/s ratio, and whether its target is within it."""

    protocol: str
    per_repeat: list[float]
    stats: Spread | None
    target: float | None
    reachable: bool | None


@dataclass(frozen=True)
class Settings:
    """What was run, where and when: the report's title."""

    client: str
    repeats: int
    duration: float
    warmup: float
    conns: int
    size: int
    depth: int
    server_cpu: int
    client_cpu: int
    started_at: str
    machine: str


@dataclass(frozen=True)
class Summary:
    """Every cell (``"server/protocol"``), the target ratios, the kernel ceilings, and the settings when known."""

    cells: dict[str, CellRow]
    ratios: list[Ratio]
    ceilings: list[Ceiling]
    settings: Settings | None = None


def _limited_by(client_util, server_util):
    """Which side's CPU was saturated, as the harness says it (None: neither)."""
    client = client_util is not None and client_util >= CLIENT_BOUND_UTIL
    server = server_util is not None and server_util >= SERVER_BOUND_UTIL
    return {(True, True): "both", (True, False): "client", (False, True): "server"}.get((client, server))


# --- one cell through the harness ------------------------------------------------------------------


def harness_cell(server, protocol, conns, size, depth, warmup, duration, server_cpu, client_cpu):
    """One run of ``sockbench load --protocol``; the cell's figures."""
    r = run_load(LoadSpec(server=server, protocol=protocol, mode="closed", conns=conns, size=size, depth=depth,
                          duration_s=duration, warmup_s=warmup, server_cpus=(server_cpu,), client_cpus=(client_cpu,)))
    sp, cl = r.server_proc, r.client
    user, sys_ = sp.us_per_msg.user, sp.us_per_msg.sys
    client_us = None
    if cl.us_per_msg.user is not None:
        client_us = cl.us_per_msg.user + cl.us_per_msg.sys
    return Run(
        valid=r.valid,
        invalid_reason=r.invalid_reason,
        limited_by=r.limited_by,
        msgs_per_s=r.throughput.msgs_per_s,
        server_user_us=user,
        server_sys_us=sys_,
        server_total_us=user + sys_ if user is not None and sys_ is not None else None,
        server_util=sp.cpu_util,
        client_us=client_us,
        client_util=cl.cpu_util,
    )


# --- one cell through the reference C client -------------------------------------------------------


def _queues(port):
    """For a stalled run: the socket queues on both sides (who holds the unanswered bytes)."""
    try:
        out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ss failed: {e}"
    server_rq = server_sq = client_rq = client_sq = 0
    for ln in out.splitlines():
        f = ln.split()
        if len(f) < 4:
            continue
        rq, sq, local = int(f[0]), int(f[1]), f[2]
        if local.endswith(f":{port}"):
            server_rq, server_sq = server_rq + rq, server_sq + sq
        else:
            client_rq, client_sq = client_rq + rq, client_sq + sq
    return f"queued bytes: server recv {server_rq} send {server_sq}, client recv {client_rq} send {client_sq}"


def _proc_state(pid):
    """For a stalled run: is the server running, and how loaded is the machine?"""
    try:
        state = read_proc_state(pid)
    except OSError as e:
        return f"server state unknown: {e}"
    return f"server state {state}, load average {os.getloadavg()[0]:.2f}"


def _server_cpu(pid):
    return read_proc_stat(pid), read_task_cpu_s(pid)


def _read_client(proc, server, deadline):
    """Follow the client's output: the server's CPU at its ``window`` line and at its result line."""
    before = after = result = None
    for line in proc.stdout:
        line = line.strip()
        if line == "window":
            before = _server_cpu(server.pid)
        elif line.startswith("{"):
            after = _server_cpu(server.pid)
            result = RefResult.parse(line)
            if result.errors.count("stall"):
                result = replace(result, error=result.error + "; " + _queues(server.address[1]) + "; "
                                 + _proc_state(server.pid))
            proc.stdin.close()  # a client that reported an error holds its connections until this
            break
        if time.monotonic() > deadline:
            break
    return before, after, result


def _run_client(client, server, protocol, conns, depth, size, warmup, duration, client_cpu):
    """Run the client to its end (killed past its deadline); ``(before, after, result, returncode, stderr)``."""
    cmd = ref_client_command(client, server.address, protocol=protocol, conns=conns, size=size, depth=depth,
                             warmup=warmup, duration=duration, marks=True, stall=STALL_S, hold=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pinned(client_cpu))
    deadline = time.monotonic() + warmup + duration + 30
    before = after = result = None
    try:
        before, after, result = _read_client(proc, server, deadline)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    return before, after, result, proc.returncode, stderr


def c_cell(client, server, protocol, conns, depth, size, warmup, duration, client_cpu):
    """One run of the reference C client against a started server; the cell's figures."""
    before, after, result, rc, stderr = _run_client(client, server, protocol, conns, depth, size, warmup, duration,
                                                    client_cpu)
    if result is None or before is None or after is None:
        return Run(valid=False, invalid_reason=(stderr.strip() or "no result from the client")[-300:],
                   limited_by=None, **{m: None for m in METRICS})
    msgs, secs = result.msgs, result.window_s
    (u0, s0), t0 = before
    (u1, s1), t1 = after
    ok = rc == 0 and not result.errors.total and msgs > 0
    per = 1e6 / msgs if msgs else float("nan")
    server_util = (t1 - t0) / secs if secs else 0.0
    client_util = result.client.cpu_util if secs else 0.0
    return Run(
        valid=ok,
        invalid_reason=None if ok else (result.error or stderr.strip() or f"client exit {rc}")[-300:],
        limited_by=_limited_by(client_util, server_util),
        msgs_per_s=result.throughput.msgs_per_s if secs else 0.0,
        server_user_us=(u1 - u0) * per,
        server_sys_us=(s1 - s0) * per,
        server_total_us=(t1 - t0) * per,
        server_util=server_util,
        client_us=(result.client.user_s + result.client.sys_s) * per,
        client_util=client_util,
    )


# --- the benchmark ---------------------------------------------------------------------------------


def _log_line(rep, repeats, protocol, server, c):
    def num(x):
        return x or 0

    return (f"repeat {rep + 1}/{repeats} {protocol:5} {server:16} {num(c.msgs_per_s):>10,.0f} msgs/s  "
            f"server user {num(c.server_user_us):.3f} sys {num(c.server_sys_us):.3f} µs/msg  "
            f"client {num(c.client_us):.3f} µs/msg ({num(c.client_util):.0%})  "
            f"limited by {c.limited_by}{'' if c.valid else '  INVALID: ' + c.invalid_reason}")


def run_benchmark(servers, protocols, repeats, duration_s, warmup_s, conns, size, depth, client="harness",
                  server_cpu=0, client_cpu=1, log=print):
    """``{(server, protocol): [Run per repeat]}``; each repeat runs every cell once, the servers rotated."""
    check_cpus(server_cpu, client_cpu)
    exe = build_ref_client() if client == "c" else None
    cells = {(s, p): [] for p in protocols for s in servers}
    for rep in range(repeats):
        order = servers[rep % len(servers):] + servers[: rep % len(servers)]
        for p in protocols:
            for s in order:
                if client == "c":
                    with ServerProcess(s, cpus=[server_cpu], extra_args=("--protocol", p)) as server:
                        c = c_cell(exe, server, p, conns, depth, size, warmup_s, duration_s, client_cpu)
                else:
                    c = harness_cell(s, p, conns, size, depth, warmup_s, duration_s, server_cpu, client_cpu)
                cells[(s, p)].append(c)
                log(_log_line(rep, repeats, p, s, c))
    return cells


def _ratio(a, b, protocol, metric, bound, kind):
    """A target ratio cython/uvloop, from the repeats where both runs are valid."""
    per = [getattr(x, metric) / getattr(y, metric) for x, y in zip(a, b)
           if x.valid and y.valid and getattr(x, metric) and getattr(y, metric)]
    st = spread(per)
    met = None if st is None else (st.median >= bound if kind == "min" else st.median <= bound)
    return Ratio(protocol=protocol, metric=metric, target=f"{'>=' if kind == 'min' else '<='} {bound:g}",
                 per_repeat=per, stats=st, met=met)


def _ceiling(a, b, protocol):
    """The kernel ceiling of the msgs/s ratio: uvloop's server CPU/msg over cython's kernel CPU/msg."""
    per = [(y.server_user_us + y.server_sys_us) / x.server_sys_us for x, y in zip(a, b)
           if x.valid and y.valid and x.server_sys_us
           and y.server_user_us is not None and y.server_sys_us is not None]
    bound = next((t[2] for t in TARGETS if t[0] == protocol and t[1] == _F.msgs_per_s), None)
    st = spread(per)
    return Ceiling(protocol=protocol, per_repeat=per, stats=st, target=bound,
                   reachable=None if st is None or bound is None else st.median >= bound)


def summarize(cells, protocols, settings=None):
    """Medians with spread per cell (valid runs only), the per-repeat cython/uvloop ratios, the kernel ceilings."""
    rows, ratios, ceilings = {}, [], []
    for (s, p), runs in cells.items():
        ok = [r for r in runs if r.valid]  # an invalid run (errors, a stall) is no measurement
        rows[f"{s}/{p}"] = CellRow(**{m: spread([getattr(r, m) for r in ok]) for m in METRICS},
                                   invalid=[r.invalid_reason for r in runs if not r.valid],
                                   limited_by=[r.limited_by for r in ok])
    for p, metric, bound, kind in TARGETS:
        a, b = cells.get(("cython", p)), cells.get(("uvloop", p))
        if a and b and p in protocols:
            ratios.append(_ratio(a, b, p, metric, bound, kind))
    for p in protocols:
        a, b = cells.get(("cython", p)), cells.get(("uvloop", p))
        if a and b:
            ceilings.append(_ceiling(a, b, p))
    return Summary(cells=rows, ratios=ratios, ceilings=ceilings, settings=settings)


# --- the report ------------------------------------------------------------------------------------


def _title(settings):
    return [f"# Framed protocols through the {settings.client} client: {settings.conns} conns x "
            f"{settings.size} B x {settings.depth} in flight",
            "",
            f"{settings.started_at}, {settings.machine}, server CPU {settings.server_cpu}, client CPU "
            f"{settings.client_cpu}, {settings.repeats} repeats x {settings.duration:g} s "
            f"(+{settings.warmup:g} s warmup).  Median [min..max].",
            ""]


def _table(summary):
    lines = ["| cell | msgs/s | server user µs/msg | server sys µs/msg | server total µs/msg | client µs/msg "
             "| client util | limited by |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in summary.cells.items():
        bad = f" ({len(c.invalid)} run(s) invalid, left out)" if c.invalid else ""
        lines.append(
            f"| {name}{bad} | {fmt_spread(c.msgs_per_s, ',.0f')} | "
            f"{fmt_spread(c.server_user_us, '.3f')} | {fmt_spread(c.server_sys_us, '.3f')} | "
            f"{fmt_spread(c.server_total_us, '.3f')} | "
            f"{fmt_spread(c.client_us, '.3f')} | {fmt_spread(c.client_util, '.0%')} | "
            f"{', '.join(str(x) for x in c.limited_by)} |")
    return lines


def render(summary):
    """The report as Markdown: the title (when the summary carries its settings), the cells, the verdicts."""
    lines = _title(summary.settings) if summary.settings is not None else []
    lines += _table(summary) + [""]
    for r in summary.ratios:
        per = ", ".join(f"{x:.2f}" for x in r.per_repeat)
        verdict = {True: "met", False: "NOT met", None: "-"}[r.met]
        lines.append(f"cython/uvloop {r.protocol} {r.metric}: median {fmt_spread(r.stats, '.2f')} "
                     f"[per repeat: {per}] target {r.target}: {verdict}")
    for c in summary.ceilings:
        if c.stats is None:
            continue
        verdict = {True: "the target is within it", False: "the target is ABOVE it: out of this machine's reach",
                   None: ""}[c.reachable]
        lines.append(f"kernel ceiling {c.protocol} msgs/s ratio (uvloop server CPU/msg over cython's kernel "
                     f"CPU/msg): median {fmt_spread(c.stats, '.2f')}"
                     + (f"; target >= {c.target:g}: {verdict}" if c.target is not None else ""))
    for name, c in summary.cells.items():
        for why in c.invalid:
            lines.append(f"invalid {name}: {why}")
    return "\n".join(lines)


def json_document(summary, cells, machine):
    """The ``--json`` document: the summary, the machine, and every run by ``"server/protocol"``."""
    return {"summary": asdict(summary), "machine": machine,
            "runs": {f"{s}/{p}": [asdict(r) for r in v] for (s, p), v in cells.items()}}


# --- the command line ------------------------------------------------------------------------------


def _list(text, allowed, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if not items or bad:
        raise UsageError(f"bad --{what} {text!r}; choose from {', '.join(allowed)}")
    return items


def _parser():
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.framed",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=CLIENTS, default="harness",
                    help="harness: sockbench's own load path (default); c: the reference C client")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--servers", default="cython,uvloop")
    ap.add_argument("--protocols", default="frame,json")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="write every run and the summary here")
    ap.add_argument("--md", metavar="PATH", help="write the report here (it is printed anyway)")
    return ap


def _parse(argv):
    """The arguments, the servers and the protocols; one-line ``UsageError`` for anything that cannot run."""
    ap = _parser()

    def error(message):
        raise UsageError(message)

    ap.error = error
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.conns < 1 or a.size < 1 or a.depth < 1:
        raise UsageError("--repeats, --conns, --size and --depth must be >= 1")
    if a.duration <= 0 or a.warmup < 0:
        raise UsageError("--duration must be > 0 and --warmup >= 0")
    servers = _list(a.servers, registry.available_names(), "servers")
    protocols = _list(a.protocols, PROTOCOLS, "protocols")
    for s in servers:
        missing = [p for p in protocols if p not in registry.SERVERS[s].protocols]
        if missing:
            raise UsageError(f"server {s!r} does not speak {', '.join(missing)}")
    return a, servers, protocols


def main(argv=None):
    try:
        a, servers, protocols = _parse(argv)
        info = machine_info()
        settings = Settings(client=a.client, repeats=a.repeats, duration=a.duration, warmup=a.warmup, conns=a.conns,
                            size=a.size, depth=a.depth, server_cpu=a.server_cpu, client_cpu=a.client_cpu,
                            started_at=iso_utc(), machine=machine_line(info))
        cells = run_benchmark(servers, protocols, a.repeats, a.duration, a.warmup, a.conns, a.size, a.depth,
                              client=a.client, server_cpu=a.server_cpu, client_cpu=a.client_cpu,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
    except SockbenchError as e:
        print(f"framed: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("framed: interrupted", file=sys.stderr)
        return 130
    summary = summarize(cells, protocols, settings)
    text = render(summary)
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text + "\n")
    if a.json:
        write_json_atomic(a.json, json_document(summary, cells, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
