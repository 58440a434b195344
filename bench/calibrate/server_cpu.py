"""Server CPU per message, throughput and ping-pong latency of every server, side by side.

The benchmark behind the ``cython`` server's speed targets (its user CPU per
message against ``uvloop`` and ``asyncio-protocol``, best throughput and round
trip).  A script, not a test: on a shared machine it measures every server in
one run, repeats the set in rotating order, and reports medians with min..max
and the ratios the targets are about.

Why it is built this way:

* CPU per message from /proc (netperf's "service demand"): the server's
  ``utime``/``stime`` over the window divided by its messages; the total is
  exact, the user/system split a tick sample (schedstat runtime is recorded
  as a cross-check).  On loopback the kernel's share is about the same for
  every server, so the user share is what an implementation adds.
* The reference C client (``ref_client.c``, ``common.build_ref_client``): a
  Python client would cost more than the fastest servers.  It reads the
  server's counters at its window's edges (``--server-pid``, ``ext/procfs.h``),
  checks every byte and reports its own CPU.
* Pinned (server and client on separate CPUs) and bounded (each run stops by
  itself, and is killed by pid a minute past its end).

Cells: cpu64 and cpu1k (100 conns, CPU µs/msg), tp16k (100 conns) and tp1m
(10 conns) (msgs/s, MB/s), pingpong (1 conn, mean RTT).  "server/client CPU"
is the share of one CPU each side used: a client near 1.0 is client-bound;
neither near 1.0 means other processes took the time.  "msgs per server CPU-s"
is the server's capacity on a core of its own.  ``--json`` writes ``Summary``
(``Run``, ``Row``, ``Target``, ``Meta``) with ``dataclasses.asdict``.

Run: ``python -m sockbench.bench.calibrate.server_cpu [--repeats 3] [--duration 5]
[--servers a,b,...] [--json PATH] [--md PATH]``.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field

from sockbench.bench.calibrate.common import (
    RefServerCpu, Spread, build_ref_client, check_cpus, field_names, fmt_spread, machine_line, run_ref_client, spread,
)
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.thresholds import CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL
from sockbench.timestamps import iso_utc

__all__ = ["CELLS", "METRICS", "Cell", "Run", "Row", "Target", "ThroughputTarget", "Meta", "Summary", "run_cell",
           "run_benchmark", "summarize", "render_markdown", "json_document", "main"]


@dataclass(frozen=True, slots=True)
class Cell:
    """One workload: ``conns`` connections, each with one ``size``-byte message in flight."""

    name: str
    conns: int
    size: int
    what: str


CELLS = (
    Cell("cpu64", 100, 64, "cpu"),
    Cell("cpu1k", 100, 1024, "cpu"),
    Cell("tp16k", 100, 16 * 1024, "throughput"),
    Cell("tp1m", 10, 1024 * 1024, "throughput"),
    Cell("pingpong", 1, 64, "latency"),
)
THROUGHPUT_CELLS = ("cpu64", "cpu1k", "tp16k", "tp1m")
CPU_CELLS = ("cpu64", "cpu1k")

@dataclass(frozen=True)
class Run:
    """One load of one cell against one server: the client's figures, the server's CPU, and what follows from them.

    The server's ``server_user_s`` and ``server_sys_s`` are NaN, and its
    ``server_runtime_s`` -1.0, where /proc could not be read.  ``valid`` is
    not given but follows: a run with a wrong byte, with no echo at all in its
    window, or without the server's CPU measures nothing.
    """

    server: str
    cell: str
    conns: int
    size: int
    repeat: int
    msgs: int
    bytes: int
    elapsed_s: float
    rtt_mean_us: float
    rtt_min_us: float
    rtt_max_us: float
    server_user_s: float
    server_sys_s: float
    server_runtime_s: float
    client_user_s: float
    client_sys_s: float
    errors: dict
    conns_alive: int
    msgs_per_s: float
    mb_per_s: float
    user_us_per_msg: float
    sys_us_per_msg: float
    total_us_per_msg: float
    runtime_us_per_msg: float | None
    server_util: float
    client_util: float
    errors_total: int
    valid: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "valid", self.msgs > 0 and self.errors_total == 0
                           and self.server_user_s == self.server_user_s)


def run_cell(client, server, cell, warmup, duration, client_cpu, repeat=0):
    """Run one load against a started ``ServerProcess``; its ``Run`` (``repeat`` says which repeat it is)."""
    ref = run_ref_client(
        client, server.address, client_cpu, what=f"against {server.name!r} ({cell.name})",
        conns=cell.conns, size=cell.size, depth=1, warmup=warmup, duration=duration, server_pid=server.pid,
    )
    srv = ref.server or RefServerCpu()
    nan = float("nan")  # the server's /proc could not be read: no figure, and the run is not valid
    user = nan if srv.user_s is None else srv.user_s
    sys_ = nan if srv.sys_s is None else srv.sys_s
    runtime = -1.0 if srv.runtime_s is None else srv.runtime_s
    msgs = ref.msgs
    el = ref.window_s
    per = 1e6 / msgs if msgs else float("nan")
    return Run(
        server=server.name,
        cell=cell.name,
        conns=cell.conns,
        size=cell.size,
        repeat=repeat,
        msgs=msgs,
        bytes=ref.bytes,
        elapsed_s=el,
        rtt_mean_us=ref.latency_us.mean,
        rtt_min_us=ref.latency_min_us,
        rtt_max_us=ref.latency_us.max,
        server_user_s=user,
        server_sys_s=sys_,
        server_runtime_s=runtime,
        client_user_s=ref.client.user_s,
        client_sys_s=ref.client.sys_s,
        errors=dict(ref.errors.by_kind),
        conns_alive=ref.conns_alive,
        msgs_per_s=msgs / el,
        mb_per_s=ref.bytes / el / 1e6,
        user_us_per_msg=user * per,
        sys_us_per_msg=sys_ * per,
        total_us_per_msg=(user + sys_) * per,
        runtime_us_per_msg=runtime * per if runtime >= 0 else None,
        server_util=(user + sys_) / el,
        client_util=(ref.client.user_s + ref.client.sys_s) / el,
        errors_total=ref.errors.total,
    )


def _log_line(rep, repeats, name, cell, res):
    return (
        f"[{rep + 1}/{repeats}] {name:17s} {cell.name:8s} {res.msgs_per_s:10.0f} msg/s "
        f"user {res.user_us_per_msg:7.3f} sys {res.sys_us_per_msg:7.3f} us/msg "
        f"rtt {res.rtt_mean_us:9.1f} us  util srv {res.server_util:.2f} cli {res.client_util:.2f}"
        + (f"  ERRORS {res.errors}" if res.errors_total else "")
        + ("" if res.msgs > 0 else "  NO ECHO IN THE WINDOW (excluded)")
    )


def run_benchmark(servers, cells=CELLS, repeats=3, warmup=1.0, duration=5.0, server_cpu=0, client_cpu=1, log=None):
    """Every server x every cell x ``repeats``; returns the list of ``Run``s."""
    check_cpus(server_cpu, client_cpu)
    client = build_ref_client()
    runs = []
    for rep in range(repeats):
        shift = rep % len(servers)
        order = servers[shift:] + servers[:shift]  # rotate: no server always goes first
        for name in order:
            with ServerProcess(name, cpus=[server_cpu]) as server:
                for cell in cells:
                    res = run_cell(client, server, cell, warmup, duration, client_cpu, repeat=rep)
                    runs.append(res)
                    if log:
                        log(_log_line(rep, repeats, name, cell, res))
                rc = server.stop()
            if rc != 0:
                raise SockbenchError(f"server {name!r} exited with status {rc} after the load")
    return runs


_F = field_names(Run)
#: the figures of a run that the table gives as median [min..max] over the repeats
METRICS = (
    _F.user_us_per_msg,
    _F.sys_us_per_msg,
    _F.total_us_per_msg,
    _F.runtime_us_per_msg,
    _F.msgs_per_s,
    _F.mb_per_s,
    _F.rtt_mean_us,
    _F.server_util,
    _F.client_util,
)


@dataclass(frozen=True)
class Row:
    """One (server, cell) over its valid runs: each metric's median and spread, the errors, the runs left out.

    ``msgs_per_cpu_s`` is what the server could echo per second of its own
    CPU: its capacity when it is the bottleneck, whoever limited the run.
    """

    server: str
    cell: str
    user_us_per_msg: Spread | None
    sys_us_per_msg: Spread | None
    total_us_per_msg: Spread | None
    runtime_us_per_msg: Spread | None
    msgs_per_s: Spread | None
    mb_per_s: Spread | None
    rtt_mean_us: Spread | None
    server_util: Spread | None
    client_util: Spread | None
    msgs_per_cpu_s: Spread | None
    errors: int
    excluded: int


@dataclass(frozen=True)
class Target:
    """One target of the ``cython`` server, the figures it was judged on, and whether it was met."""

    target: str
    value: str
    met: bool


@dataclass(frozen=True)
class ThroughputTarget(Target):
    """A throughput target, with what limited the run: the client's CPU, or neither side's (starved)."""

    client_bound: bool
    starved: bool


@dataclass(frozen=True)
class Summary:
    """The servers and cells in order of appearance, the table by (server, cell), the ratios by
    (cell, other server), and the targets."""

    servers: list[str]
    cells: list[str]
    table: dict[tuple[str, str], Row]
    ratios: dict[tuple[str, str], Spread]
    targets: list[Target]


@dataclass(frozen=True)
class Meta:
    """Where, when and how the benchmark ran: the report's preamble and the ``--json`` document's ``meta``."""

    started_at: str
    wall_s: float
    machine: str
    machine_info: dict
    repeats: int
    warmup_s: float
    duration_s: float
    server_cpu: int
    client_cpu: int
    command: str


def _table(runs, servers, cells):
    """Medians/spreads of the valid runs per (server, cell), with the errors and the runs left out."""
    table = {}
    for s in servers:
        for c in cells:
            every = [r for r in runs if r.server == s and r.cell == c]
            rs = [r for r in every if r.valid]
            if rs:
                table[(s, c)] = Row(
                    server=s,
                    cell=c,
                    **{m: spread([getattr(r, m) for r in rs]) for m in METRICS},
                    msgs_per_cpu_s=spread([1e6 / r.total_us_per_msg for r in rs if r.total_us_per_msg > 0]),
                    errors=sum(r.errors_total for r in every),
                    excluded=len(every) - len(rs),
                )
    return table


def _per_rep_ratio(runs, focus, cell, other, metric):
    """``focus``/``other`` for ``metric`` in ``cell``, taken within each repeat, then spread."""
    ratios = []
    for rep in sorted({r.repeat for r in runs}):
        a = [getattr(r, metric) for r in runs if r.server == focus and r.cell == cell and r.repeat == rep]
        b = [getattr(r, metric) for r in runs if r.server == other and r.cell == cell and r.repeat == rep]
        if a and b and b[0]:
            ratios.append(a[0] / b[0])
    return spread(ratios)


def _best_check(table, servers, focus, cell, metric, lower_is_better, label):
    """The target "``focus`` is the best at ``metric`` in ``cell``" (within the spread), or None."""
    rows = {s: getattr(table[(s, cell)], metric) for s in servers
            if (s, cell) in table and getattr(table[(s, cell)], metric)}
    if focus not in rows:
        return None
    pick = min if lower_is_better else max
    best = pick(rows, key=lambda s: rows[s].median)
    mine, theirs = rows[focus], rows[best]
    if best == focus:
        met, how = True, "best"
    elif lower_is_better:
        met, how = mine.min <= theirs.max, f"best is {best}"
    else:
        met, how = mine.max >= theirs.min, f"best is {best}"
    fmt = "{:.3f}" if metric.endswith("per_msg") else "{:.1f}" if metric == _F.rtt_mean_us else "{:.0f}"
    value = f"{focus} {fmt.format(mine.median)} [{fmt.format(mine.min)}..{fmt.format(mine.max)}]"
    if best != focus:
        value += f"; {best} {fmt.format(theirs.median)} [{fmt.format(theirs.min)}..{fmt.format(theirs.max)}]"
    target = f"{cell}: {label} ({how}; ranges overlapping = within spread)"
    if metric not in (_F.msgs_per_s, _F.mb_per_s):
        return Target(target=target, value=value, met=met)
    cu = table[(focus, cell)].client_util.median
    su = table[(focus, cell)].server_util.median
    return ThroughputTarget(
        target=target, value=value + f"; client CPU {cu:.2f}, {focus} server CPU {su:.2f}", met=met,
        client_bound=cu >= CLIENT_BOUND_UTIL,
        # neither side used its CPU: the time went elsewhere (other processes on a shared machine)
        starved=cu < CLIENT_BOUND_UTIL and su < SERVER_BOUND_UTIL,
    )


def summarize(runs, focus="cython"):
    """Medians/spreads per (server, cell), per-repeat ratios, and the verdict on each target: a ``Summary``.

    Invalid runs (a wrong byte, or no echo at all in the window: a stalled
    machine or server) are left out of every figure and counted per row.
    """
    servers = list(dict.fromkeys(r.server for r in runs))
    cells = list(dict.fromkeys(r.cell for r in runs))
    table = _table(runs, servers, cells)
    runs = [r for r in runs if r.valid]
    out = Summary(servers=servers, cells=cells, table=table, ratios={}, targets=[])
    if focus not in servers:
        return out
    for cell in CPU_CELLS:
        for other, limit in (("uvloop", 0.2), ("asyncio-protocol", 0.1)):
            if (other, cell) not in table or (focus, cell) not in table:
                continue
            st = _per_rep_ratio(runs, focus, cell, other, _F.user_us_per_msg)
            if st is None:
                continue
            out.ratios[(cell, other)] = st
            out.targets.append(Target(
                target=f"{cell}: {focus} user CPU/msg <= {limit}x {other}",
                value=f"{st.median:.3f}x (repeats {st.min:.3f}..{st.max:.3f})",
                met=st.median <= limit,
            ))
    checks = [(cell, _F.total_us_per_msg, True, f"{focus} total server CPU/msg is the lowest") for cell in CPU_CELLS]
    checks += [(cell, _F.msgs_per_s, False, f"{focus} throughput is the highest") for cell in THROUGHPUT_CELLS]
    checks.append(("pingpong", _F.rtt_mean_us, True, f"{focus} mean ping-pong round trip is the lowest"))
    for cell, metric, lower_is_better, label in checks:
        target = _best_check(table, servers, focus, cell, metric, lower_is_better, label)
        if target is not None:
            out.targets.append(target)
    return out


def render_markdown(summary, meta):
    """The figures as Markdown: medians with [min..max] over the repeats."""
    t = summary.table
    lines = [
        "# Server CPU per message, throughput and ping-pong",
        "",
        f"Measured {meta.started_at} on {meta.machine}: {meta.repeats} repeats, "
        f"warmup {meta.warmup_s} s, window {meta.duration_s} s per cell; server on CPU {meta.server_cpu}, "
        f"C load client on CPU {meta.client_cpu}.  Each figure: median [min..max] over the repeats.",
        f"Command: `{meta.command}`",
        "",
        "The user/sys split comes from the kernel's tick sampling (/proc/PID/stat, in 10 ms units): a window that "
        "holds only a few ticks of a cheap server's user time quantizes it (0, 1, 2 ticks...), so judge the user "
        "figures of the fastest servers on long windows (--duration 10 or more); the totals are exact.",
        "",
    ]
    for cell in summary.cells:
        c = next(x for x in CELLS if x.name == cell)
        lines += [
            f"## {cell}: {c.conns} conn(s) x {c.size} B, closed loop",
            "",
            "| server | user µs/msg | sys µs/msg | total µs/msg | msgs/s | MB/s | mean RTT µs | server CPU | client CPU "
            "| msgs per server CPU-s | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in summary.servers:
            row = t.get((s, cell))
            if not row:
                continue
            lines.append(
                f"| {s} | {fmt_spread(row.user_us_per_msg, '.3f')} | {fmt_spread(row.sys_us_per_msg, '.2f')} | "
                f"{fmt_spread(row.total_us_per_msg, '.2f')} | {fmt_spread(row.msgs_per_s, '.0f')} | {fmt_spread(row.mb_per_s, '.1f')} | "
                f"{fmt_spread(row.rtt_mean_us, '.1f')} | {fmt_spread(row.server_util, '.2f')} | {fmt_spread(row.client_util, '.2f')} | "
                f"{fmt_spread(row.msgs_per_cpu_s, '.0f')} | {row.errors}"
                + (f" ({row.excluded} invalid run(s) left out)" if row.excluded else "")
                + " |"
            )
        lines.append("")
    if summary.targets:
        lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
        for tg in summary.targets:
            met = "yes" if tg.met else "NO"
            if isinstance(tg, ThroughputTarget) and tg.client_bound:
                met += " (client-bound)"
            if isinstance(tg, ThroughputTarget) and tg.starved:
                met += " (neither side saturated its CPU: not a measure of the server)"
            lines.append(f"| {tg.target} | {tg.value} | {met} |")
        lines.append("")
    return "\n".join(lines)


def _parser():
    p = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.server_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="", help="comma-separated server names (default: every available one)")
    p.add_argument("--cells", default=",".join(c.name for c in CELLS), help="comma-separated cells (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="how many times to run the whole set (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warmup per cell, not measured (default 1)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell (default 5)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU the load client is pinned to (default 1)")
    p.add_argument("--json", default="", help="write the raw runs and the summary here")
    p.add_argument("--md", default="", help="write the Markdown report here (it is always printed)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _parse(argv):
    p = _parser()

    def error(message):
        raise UsageError(f"{p.prog}: {message} (see --help)")

    p.error = error
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        raise UsageError("--duration must be > 0 and --warmup >= 0")
    if args.duration > 600 or args.warmup > 600:
        raise UsageError("--duration and --warmup are capped at 600 s each")
    names = [n for n in args.servers.split(",") if n] or registry.available_names()
    for n in names:
        ok, why = registry.get(n).availability()
        if not ok:
            raise UsageError(f"server {n!r}: {why}")
    by_name = {c.name: c for c in CELLS}
    cells = []
    for n in [n for n in args.cells.split(",") if n]:
        if n not in by_name:
            raise UsageError(f"unknown cell {n!r}; valid cells: {', '.join(by_name)}")
        cells.append(by_name[n])
    if not cells:
        raise UsageError("--cells is empty")
    return args, names, cells


def _meta(args, argv, started, wall_s):
    info = machine_info()
    return Meta(
        started_at=started,
        wall_s=wall_s,
        machine=machine_line(info),
        machine_info=info,
        repeats=args.repeats,
        warmup_s=args.warmup,
        duration_s=args.duration,
        server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
        command="python -m sockbench.bench.calibrate.server_cpu " + " ".join(sys.argv[1:] if argv is None else argv),
    )


def json_document(runs, summary, meta):
    """The ``--json`` document: every run, and the summary with its tuple keys spelled out (format 1)."""
    return {
        "schema": 1,
        "meta": asdict(meta),
        "runs": [asdict(r) for r in runs],
        "summary": {
            "table": [asdict(row) for row in summary.table.values()],
            "ratios": [{"cell": c, "vs": o, **asdict(st)} for (c, o), st in summary.ratios.items()],
            "targets": [asdict(t) for t in summary.targets],
        },
    }


def main(argv=None):
    try:
        args, names, cells = _parse(argv)
        started = iso_utc()
        log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        t0 = time.monotonic()
        runs = run_benchmark(names, cells, args.repeats, args.warmup, args.duration, args.server_cpu, args.client_cpu, log)
        summary = summarize(runs)
        meta = _meta(args, argv, started, round(time.monotonic() - t0, 1))
        md = render_markdown(summary, meta)
        print(md)
        if args.md:
            with open(args.md, "w") as f:
                f.write(md + "\n")
        if args.json:
            write_json_atomic(args.json, json_document(runs, summary, meta))
        return 0
    except SockbenchError as e:
        print(f"server_cpu: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("server_cpu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
