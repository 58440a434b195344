"""io_uring against epoll, on both sides: msgs/s, CPU per message and p99 over a grid, rounds interleaved.

Why it is built this way: "is io_uring faster than epoll for a socket
server?" gets opposite published answers from benchmarks that rarely verify
bytes, pin CPUs, measure CPU per message or notice that their client was the
bottleneck.  Here each point is one ordinary load run of the harness
(``run_load``): every echoed byte checked, server and client pinned to CPUs
of their own, the server's CPU from schedstat and the client's from
getrusage over the same window, the foreign load on those CPUs measured.
The two sides are crossed: the server (``cython``, epoll; ``cython-uring``,
io_uring) with the load engine (``--engine epoll|uring``), so that a cheaper
client and a cheaper server are told apart, and a point where the client was
saturated says so (CLIENT-BOUND) instead of passing for the server's limit.

The grid is connections x size x depth (default 1, 10, 100, 1,000 x 64 B,
1 KiB, 16 KiB x 1, 16, closed loop): 24 workloads, 4 pairs each.  Every
round runs every point once, in an order shuffled per round (seeded), so no
point owns one stretch of the machine's time; a round whose window was
disturbed by foreign load is run again (up to ``--remeasure`` times) and
flagged if it stays disturbed.  The table shows medians with min..max over
the rounds, and per workload the ratios that answer the question, each a
ratio of medians measured in the same rounds: the io_uring server's CPU per
message over the epoll server's (with each engine), and the io_uring
engine's client CPU per message over the epoll engine's (against each
server).  Every point is written to ``--json`` as it is measured.

``--perf DIR`` asks where the server's time goes instead, with Linux
``perf`` attached to the server process for the measured window of each
(server, engine) at each workload: ``perf stat`` (its CPU time, context
switches and the system calls of either loop, each per message echoed) and
``perf record`` (its samples, by symbol, added up into kernel rooms: TCP/IP,
system call entry, epoll, io_uring, scheduler, copies, user space).  perf
itself runs on the client's CPU, so these runs are kept apart from the grid's
figures; its reports stay in DIR.

Run: ``python -m sockbench.bench.calibrate.uring [--conns 1 10 100 1000] [--sizes 64 1k 16k]
[--depths 1 16] [--servers cython cython-uring] [--engines epoll uring] [--rounds 3] [--duration 1]
[--warmup 0.3] [--seed 1] [--json PATH] [--perf DIR]``.  The full grid at the defaults takes about 10
minutes; ``--conns 100 --sizes 64 --depths 1`` is the headline workload alone.
"""

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import fmt_spread, machine_line, spread
from sockbench.bench.load.harness import run_load
from sockbench.bench.load.spec import ENGINES, LoadSpec, check_engine
from sockbench.children import child_setup
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.units import arg, format_size, parse_cpus, parse_number, parse_size

__all__ = ["Point", "Workload", "PerfPoint", "measure", "measure_perf", "table", "perf_table", "rooms", "main",
           "SERVERS", "HEADLINE", "ROOMS"]

#: the epoll server and its io_uring twin (same contract, same codecs; only the kernel interface differs)
SERVERS = ("cython", "cython-uring")
#: the workload the issue's targets are stated at: 100 connections x 64 B, depth 1, closed loop
HEADLINE = (100, 64, 1)


@dataclass(frozen=True)
class Workload:
    conns: int
    size: int
    depth: int

    def label(self):
        return f"{self.conns} conns x {format_size(self.size)} x depth {self.depth}"


@dataclass(frozen=True)
class Point:
    """One round of one (workload, server, engine): the figures of one load run."""

    conns: int
    size: int
    depth: int
    server: str
    engine: str
    round: int
    msgs_per_s: float
    server_user_us: float | None
    server_sys_us: float | None
    client_user_us: float | None
    client_sys_us: float | None
    p99_us: float | None
    client_bound: bool
    limited_by: str | None
    valid: bool
    invalid_reason: str | None
    disturbed: bool
    attempts: int

    @property
    def server_us(self):
        return None if self.server_user_us is None else self.server_user_us + (self.server_sys_us or 0.0)

    @property
    def client_us(self):
        return None if self.client_user_us is None else self.client_user_us + (self.client_sys_us or 0.0)


def _point(w, server, engine, rnd, r, attempts):
    sp, cl = r.server_proc.us_per_msg, r.client.us_per_msg
    return Point(conns=w.conns, size=w.size, depth=w.depth, server=server, engine=engine, round=rnd,
                 msgs_per_s=r.throughput.msgs_per_s, server_user_us=sp.user, server_sys_us=sp.sys,
                 client_user_us=cl.user, client_sys_us=cl.sys, p99_us=r.latency_us.p99,
                 client_bound=bool(r.client_bound), limited_by=r.limited_by, valid=bool(r.valid),
                 invalid_reason=r.invalid_reason, disturbed=bool(r.disturbed), attempts=attempts)


def measure(workloads, servers, engines, rounds, duration, warmup, server_cpus=(0,), client_cpus=(1,), seed=1,
            remeasure=2, on_point=None):
    """Every (workload, server, engine) once per round, shuffled per round; ``[Point, ...]`` in the order measured."""
    rng = random.Random(seed)
    keys = [(w, s, e) for w in workloads for s in servers for e in engines]
    points = []
    for rnd in range(1, rounds + 1):
        order = keys[:]
        rng.shuffle(order)
        for w, server, engine in order:
            spec = LoadSpec(server=server, mode="closed", conns=w.conns, size=w.size, depth=w.depth,
                            duration_s=duration, warmup_s=warmup, procs=1, server_cpus=tuple(server_cpus),
                            client_cpus=tuple(client_cpus), engine=engine, name_busy=False)
            for attempt in range(1, remeasure + 2):
                r = run_load(spec)
                if not r.disturbed:
                    break
            p = _point(w, server, engine, rnd, r, attempt)
            points.append(p)
            if on_point is not None:
                on_point(p, points)
    return points


def _sel(points, w, server, engine):
    return [p for p in points if (p.conns, p.size, p.depth) == (w.conns, w.size, w.depth)
            and p.server == server and p.engine == engine and p.valid]


def _median(values):
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def ratios(points, w):
    """The ratios of medians that answer the question at workload ``w`` (None where a side was not measured).

    ``server[e]``: cython-uring's server CPU per message over cython's, both loaded by engine ``e``;
    ``client[s]``: the uring engine's client CPU per message over the epoll engine's, against server ``s``;
    ``msgs[e]``: cython-uring's msgs/s over cython's with engine ``e``.
    """
    med = {(s, e): (_median(p.server_us for p in _sel(points, w, s, e)),
                    _median(p.client_us for p in _sel(points, w, s, e)),
                    _median(p.msgs_per_s for p in _sel(points, w, s, e)))
           for s in SERVERS for e in ENGINES}
    return {
        "server": {e: _ratio(med[("cython-uring", e)][0], med[("cython", e)][0]) for e in ENGINES},
        "client": {s: _ratio(med[(s, "uring")][1], med[(s, "epoll")][1]) for s in SERVERS},
        "msgs": {e: _ratio(med[("cython-uring", e)][2], med[("cython", e)][2]) for e in ENGINES},
    }


def table(points, workloads, servers, engines):
    """The printed grid: per workload one line per (server, engine), then the ratios."""
    out = [f"{'server':13} {'engine':6} {'msgs/s median [min..max]':>30} {'server µs/msg user+sys':>24} "
           f"{'client µs/msg user+sys':>24} {'p99 µs':>10}  flags"]
    for w in workloads:
        out.append(f"-- {w.label()}")
        for s in servers:
            for e in engines:
                ps = [p for p in points if (p.conns, p.size, p.depth) == (w.conns, w.size, w.depth)
                      and p.server == s and p.engine == e]
                ok = [p for p in ps if p.valid]
                if not ps:
                    continue
                su = _median(p.server_user_us for p in ok)
                ss = _median(p.server_sys_us for p in ok)
                cu = _median(p.client_user_us for p in ok)
                cs = _median(p.client_sys_us for p in ok)
                flags = []
                if any(p.client_bound for p in ok):
                    flags.append(f"CLIENT-BOUND {sum(p.client_bound for p in ok)}/{len(ok)}")
                if any(p.disturbed for p in ps):
                    flags.append(f"DISTURBED {sum(p.disturbed for p in ps)}/{len(ps)}")
                if len(ok) < len(ps):
                    flags.append(f"INVALID {len(ps) - len(ok)}/{len(ps)}: "
                                 + next(p.invalid_reason for p in ps if not p.valid))
                out.append(f"{s:13} {e:6} {fmt_spread(spread([p.msgs_per_s for p in ok])):>30} "
                           f"{_uspair(su, ss):>24} {_uspair(cu, cs):>24} "
                           f"{_fmt_num(_median(p.p99_us for p in ok), ',.0f'):>10}  {' '.join(flags)}")
        if set(servers) == set(SERVERS) or set(engines) == set(ENGINES):
            r = ratios(points, w)
            parts = []
            if set(servers) == set(SERVERS):
                parts += [f"uring/epoll server CPU/msg: {_fmt_ratio(r['server'][e])} (engine {e})"
                          for e in engines]
                parts += [f"uring/epoll server msgs/s: {_fmt_ratio(r['msgs'][e])} (engine {e})" for e in engines]
            if set(engines) == set(ENGINES):
                parts += [f"uring/epoll engine client CPU/msg: {_fmt_ratio(r['client'][s])} ({s})" for s in servers]
            out.append("   " + "; ".join(parts))
    return "\n".join(out)


def _fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def _uspair(user, sys_):
    if user is None:
        return "-"
    return f"{user:.3f}+{sys_:.3f}={user + sys_:.3f}"


# --- where the time goes (perf) -------------------------------------------------------------------

#: the kernel's rooms a sample's symbol is added to, first match wins (the rest is "other kernel")
ROOMS = (
    ("io_uring", re.compile(r"^(io_|__io_|io_uring|__do_sys_io_uring|__x64_sys_io_uring|tctx_task_work)")),
    ("epoll", re.compile(r"(^ep_|epoll|^__ep_|ep_poll)")),
    ("syscall entry/exit", re.compile(r"^(entry_SYSCALL|do_syscall_64|syscall_exit|syscall_return|__x64_sys_|"
                                      r"__sys_|x64_sys_call|fdget|fget|fput|__fget|__fdget|exit_to_user|"
                                      r"arch_exit_to_user|syscall_enter)")),
    ("scheduler/idle", re.compile(r"(schedule|^finish_task_switch|^pick_next|^dequeue|^enqueue|^update_curr|"
                                  r"^try_to_wake_up|^ttwu|safe_halt|^cpuidle|^do_idle|^psi_|^__switch_to|"
                                  r"^switch_mm|wake_up|^select_task_rq|^update_load|^set_next)")),
    ("copies", re.compile(r"(copy_to|copy_from|_copy_|memcpy|memmove|csum_)")),
    ("TCP/IP", re.compile(r"^(tcp_|__tcp_|inet_|__inet_|ip_|__ip_|skb_|__skb|sk_|__sk_|sock_|__sock|lock_sock|"
                          r"release_sock|net_|__netif|netif_|__dev_|dev_|loopback|napi_|__napi|"
                          r"process_backlog|bbr_|kfree_skb|__kfree_skb|validate_xmit|ipv4_|ipv6_|ip6_|"
                          r"__local_bh|handle_softirqs|do_softirq|__do_softirq|raw_v4|unix_|__unix|"
                          r"rcu_read|security_sock|__check_object)")),
)


def rooms(symbols):
    """``{room: share}`` of ``[(share, kind, symbol)]`` ("u": user space, "k": kernel), summing to the total."""
    out = {}
    for share, kind, sym in symbols:
        room = "user space" if kind != "k" else next((r for r, pat in ROOMS if pat.search(sym)), "other kernel")
        out[room] = out.get(room, 0.0) + share
    return out


@dataclass(frozen=True)
class PerfPoint:
    """Where one server process spent the measured window, from perf, per message echoed."""

    conns: int
    size: int
    depth: int
    server: str
    engine: str
    msgs: int
    cpu_us: float            # the server's task-clock per message
    context_switches: float  # per message
    syscalls: dict           # system call -> calls per message (io_uring_enter, epoll_wait, recvfrom, sendto)
    rooms: dict              # room -> share of the server's samples
    top: list                # the top symbols: [share, kind, symbol]
    valid: bool


_SYSCALLS = ("io_uring_enter", "epoll_wait", "recvfrom", "sendto", "read", "write", "writev")


def _parse_perf_stat(text):
    counts = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,.]+)\s+(?:msec\s+)?(\S+)", line)
        if m and not line.strip().startswith("#"):
            try:
                counts[m.group(2)] = float(m.group(1).replace(",", ""))
            except ValueError:
                pass
    return counts


def _parse_perf_report(text):
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[(\S)\]\s+(\S+)", line)
        if m:
            out.append((float(m.group(1)) / 100, m.group(2), m.group(3)))
    return out


def _perf_window(server, engine, w, duration, warmup, server_cpus, client_cpus, command):
    """One load run against ``server`` (pinned, started here) with ``command(pid, seconds)`` (a perf command line)
    run on the server process for the measured window; returns the run's ``LoadResult``.

    perf runs on the client CPUs and dies with this tool (``children.child_setup``).  The kernel's
    parent-death signal follows the thread that started it, so the thread that starts perf also waits for it.
    """
    with ServerProcess(server, cpus=tuple(server_cpus)) as srv:
        threads = []

        def attach(start_ns, end_ns):
            warm_end = start_ns + int(warmup * 1e9)

            def run():
                time.sleep(max(0.0, (warm_end - time.monotonic_ns()) / 1e9))
                window = max(0.1, (end_ns - time.monotonic_ns()) / 1e9)
                pr = subprocess.Popen(command(srv.pid, f"{window:.3f}"), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=child_setup(tuple(client_cpus)))
                try:
                    pr.wait(timeout=window + 60)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait()

            t = threading.Thread(target=run, daemon=True)
            t.start()
            threads.append(t)

        spec = LoadSpec(target=srv.endpoint, mode="closed", conns=w.conns, size=w.size, depth=w.depth,
                        duration_s=duration, warmup_s=warmup, procs=1, client_cpus=tuple(client_cpus), engine=engine,
                        name_busy=False)
        r = run_load(spec, on_window=attach)
        for t in threads:
            t.join(duration + warmup + 70)
    return r


def measure_perf(workloads, servers, engines, duration, warmup, server_cpus, client_cpus, out_dir, on_point=None):
    """Two runs per (workload, server, engine) with perf on the server for the window: ``[PerfPoint]``.

    The first counts (``perf stat``: CPU time, context switches, the system
    calls of either loop); the second samples (``perf record``, CPU time and
    context switches counted again) with no tracepoint armed, since a traced
    system call costs more and would be charged to the epoll server alone.
    """
    perf = shutil.which("perf")
    if perf is None:
        raise UsageError("--perf needs Linux perf (apt-get install linux-perf, or linux-tools for your kernel)")
    os.makedirs(out_dir, exist_ok=True)
    points = []
    for w in workloads:
        for server in servers:
            for engine in engines:
                tag = f"{server}__{engine}__c{w.conns}-{w.size}-d{w.depth}"
                sys_path = os.path.join(out_dir, tag + ".syscalls.txt")
                stat_path = os.path.join(out_dir, tag + ".stat.txt")
                data_path = os.path.join(out_dir, tag + ".perf.data")
                r1 = _perf_window(server, engine, w, duration, warmup, server_cpus, client_cpus, lambda pid, secs: [
                    perf, "stat", "-p", str(pid), "-e", ",".join(f"syscalls:sys_enter_{c}" for c in _SYSCALLS),
                    "-o", sys_path, "--", "sleep", secs])
                r2 = _perf_window(server, engine, w, duration, warmup, server_cpus, client_cpus, lambda pid, secs: [
                    perf, "record", "-p", str(pid), "-F", "2999", "-o", data_path, "--",
                    perf, "stat", "-p", str(pid), "-e", "task-clock,context-switches", "-o", stat_path, "--",
                    "sleep", secs])
                msgs1 = round(r1.throughput.msgs_per_s * duration)
                msgs2 = round(r2.throughput.msgs_per_s * duration)
                counts = {}
                for path in (sys_path, stat_path):
                    try:
                        with open(path) as f:
                            counts.update(_parse_perf_stat(f.read()))
                    except OSError:
                        pass
                report = subprocess.run([perf, "report", "-i", data_path, "--no-children", "--sort", "sym", "--stdio"],
                                        capture_output=True, text=True, timeout=300).stdout
                with open(os.path.join(out_dir, tag + ".report.txt"), "w") as f:
                    f.write(report)
                symbols = _parse_perf_report(report)

                def per(v, msgs):
                    return v / msgs if msgs else None

                p = PerfPoint(conns=w.conns, size=w.size, depth=w.depth, server=server, engine=engine, msgs=msgs2,
                              cpu_us=per(counts.get("task-clock", 0.0) * 1000.0, msgs2),
                              context_switches=per(counts.get("context-switches", 0.0), msgs2),
                              syscalls={c: per(counts[f"syscalls:sys_enter_{c}"], msgs1) for c in _SYSCALLS
                                        if counts.get(f"syscalls:sys_enter_{c}")},
                              rooms=rooms(symbols), top=[list(x) for x in symbols[:12]],
                              valid=bool(r1.valid and r2.valid))
                points.append(p)
                if on_point is not None:
                    on_point(p, points)
    return points


def perf_table(points):
    room_names = ["TCP/IP", "copies", "syscall entry/exit", "epoll", "io_uring", "scheduler/idle", "other kernel",
                  "user space"]
    out = []
    for p in points:
        sc = ", ".join(f"{k} {v:.2f}" for k, v in p.syscalls.items())
        out.append(f"-- {p.server} / {p.engine} engine, {Workload(p.conns, p.size, p.depth).label()}: "
                   f"{p.cpu_us:.2f} µs of server CPU per message, {p.context_switches:.3f} context switches, "
                   f"system calls per message: {sc or 'none'}{'' if p.valid else '  (INVALID run)'}")
        out.append("   " + ", ".join(f"{r} {p.rooms.get(r, 0.0):.0%}" for r in room_names))
        out.append("   top: " + "; ".join(f"{sym} {share:.1%}" for share, _, sym in p.top[:8]))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.uring", description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", nargs="+", type=arg(parse_number, "--conns", kind=int, positive=True),
                   default=[1, 10, 100, 1000], metavar="N")
    p.add_argument("--sizes", nargs="+", type=arg(parse_size, "--sizes"), default=[64, 1024, 16384], metavar="SIZE")
    p.add_argument("--depths", nargs="+", type=arg(parse_number, "--depths", kind=int, positive=True), default=[1, 16],
                   metavar="D")
    p.add_argument("--servers", nargs="+", default=list(SERVERS), metavar="NAME")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), metavar="ENGINE")
    p.add_argument("--rounds", type=arg(parse_number, "--rounds", kind=int, positive=True), default=3)
    p.add_argument("--duration", type=arg(parse_number, "--duration", positive=True), default=1.0,
                   help="measured seconds per point (default 1)")
    p.add_argument("--warmup", type=arg(parse_number, "--warmup"), default=0.3)
    p.add_argument("--remeasure", type=arg(parse_number, "--remeasure", kind=int), default=2,
                   help="a disturbed point is run again up to this many times (default 2)")
    p.add_argument("--seed", type=arg(parse_number, "--seed", kind=int), default=1)
    p.add_argument("--server-cpus", type=arg(parse_cpus, "--server-cpus"), default=(0,), metavar="LIST")
    p.add_argument("--client-cpus", type=arg(parse_cpus, "--client-cpus"), default=(1,), metavar="LIST")
    p.add_argument("--json", metavar="PATH", help="every point, written as it is measured")
    p.add_argument("--perf", metavar="DIR",
                   help="instead of the grid: one run per point with perf stat and perf record on the server; "
                        "the reports go to DIR")
    try:
        args = p.parse_args(argv)
        for s in args.servers:
            ok, why = registry.get(s).availability()
            if not ok:
                raise UsageError(f"server {s!r} cannot run here: {why}")
        for e in args.engines:
            check_engine(e)
        workloads = [Workload(c, s, d) for c in args.conns for s in args.sizes for d in args.depths]
        n = len(workloads) * len(args.servers) * len(args.engines)
        est = n * args.rounds * (args.duration + args.warmup + 0.6)
        print(f"{machine_line()}; server CPU {','.join(map(str, args.server_cpus))}, client CPU "
              f"{','.join(map(str, args.client_cpus))}; {len(workloads)} workloads x {len(args.servers)} servers x "
              f"{len(args.engines)} engines = {n} points x {args.rounds} rounds, {args.duration:g} s windows "
              f"(+{args.warmup:g} s warmup), about {est / 60:.0f} min", flush=True)
        t0 = time.monotonic()
        if args.perf:
            def on_perf(pt, points):
                print(f"  {pt.server}/{pt.engine}: {pt.cpu_us:.2f} µs/msg", file=sys.stderr, flush=True)
                if args.json:
                    write_json_atomic(args.json, {"machine": machine_line(), "args": vars(args),
                                                  "perf": [asdict(x) for x in points]})

            points = measure_perf(workloads, args.servers, args.engines, args.duration, args.warmup,
                                  args.server_cpus, args.client_cpus, args.perf, on_perf)
            print(perf_table(points))
            return 0

        def on_point(pt, points):
            print(f"  r{pt.round} {pt.server}/{pt.engine} {pt.conns}x{format_size(pt.size)}xd{pt.depth}: "
                  f"{pt.msgs_per_s:,.0f} msgs/s{' DISTURBED' if pt.disturbed else ''}"
                  f"{' INVALID' if not pt.valid else ''}", file=sys.stderr, flush=True)
            if args.json:
                write_json_atomic(args.json, {"machine": machine_line(), "args": vars(args),
                                              "points": [asdict(x) for x in points]})

        points = measure(workloads, args.servers, args.engines, args.rounds, args.duration, args.warmup,
                         args.server_cpus, args.client_cpus, args.seed, args.remeasure, on_point)
        print(table(points, workloads, args.servers, args.engines))
        print(f"({len(points)} points in {(time.monotonic() - t0) / 60:.1f} min)")
    except SockbenchError as e:
        print(f"uring: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
