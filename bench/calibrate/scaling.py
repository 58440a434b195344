"""How servers scale with ``--workers``: msgs/s and server CPU per message at 1..N worker processes.

Why it is built this way: the question is whether N processes on one port
(``--workers N``, ``SO_REUSEPORT``) echo N times what one does, and at what
cost per message.  Each (server, workers) point is one ordinary harness run
(``run_load`` with ``LoadSpec.workers``: workers pinned one per server CPU,
every byte checked, server CPU summed over the workers), so the figures are
the ones ``sockbench load`` and the report give.

Points run in rounds in rotating order; the table shows medians and min..max,
and flags client-bound points (their msgs/s is the client's limit).  With
fewer than twice as many CPUs as the most workers, the client shares CPUs
with the servers (said at the start): a worker on the client's CPU is woken
without a cross-CPU interrupt, which on loopback is worth more than a second
core, so only with the client on CPUs of its own do the ratios say how a
server scales.

Run: ``python -m sockbench.bench.calibrate.scaling [--servers cython,uvloop] [--workers 1 2 4 8]
[--server-cpus LIST] [--client-cpus LIST] [--conns 100] [--size 64] [--duration 2] [--rounds 3] [--json PATH]``.
"""

import argparse
import os
import statistics
import sys
from dataclasses import asdict, dataclass

from sockbench.bench.load.harness import run_load
from sockbench.bench.load.spec import LoadSpec
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.units import arg, parse_cpus, parse_number, parse_size

__all__ = ["Point", "default_cpus", "measure", "main"]


def default_cpus(allowed, most_workers):
    """``(server_cpus, client_cpus, shared)``: the servers' CPUs first, the rest for the client; shared when too few."""
    cpus = sorted(allowed)
    if len(cpus) >= most_workers + 1:
        server = cpus[:most_workers]
        client = cpus[most_workers:]
        return tuple(server), tuple(client), False
    return tuple(cpus), tuple(cpus[-1:]), True


@dataclass(frozen=True)
class Point:
    """One round of one (server, workers) point: the figures this tool compares, read from the result's fields."""

    msgs_per_s: float | None
    server_us_per_msg: float | None
    server_user_us: float | None
    server_sys_us: float | None
    server_cpu_util: float | None
    client_bound: bool
    valid: bool
    invalid_reason: str | None

    @classmethod
    def of(cls, result):
        sp = result.server_proc
        return cls(msgs_per_s=result.throughput.msgs_per_s, server_us_per_msg=sp.us_per_msg.total,
                   server_user_us=sp.us_per_msg.user, server_sys_us=sp.us_per_msg.sys, server_cpu_util=sp.cpu_util,
                   client_bound=bool(result.client_bound), valid=bool(result.valid), invalid_reason=result.invalid_reason)


def measure(servers, workers, server_cpus, client_cpus, conns=100, size=64, duration=2.0, warmup=0.5, rounds=3,
            on_point=None):
    """Every (server, workers) point ``rounds`` times, in a rotating order; ``{(server, n): [point, ...]}``."""
    points = [(s, n) for s in servers for n in workers]
    out = {p: [] for p in points}
    for r in range(rounds):
        shift = r % len(points)
        for server, n in points[shift:] + points[:shift]:
            # n workers on the first n server CPUs, one each (more workers than CPUs: all of them, shared)
            cpus = tuple(server_cpus[:n])
            spec = LoadSpec(server=server, mode="closed", conns=conns, size=size, duration_s=duration, warmup_s=warmup,
                            procs=max(1, min(len(client_cpus), conns)), server_cpus=cpus, client_cpus=tuple(client_cpus),
                            workers=n)
            point = Point.of(run_load(spec))
            out[(server, n)].append(point)
            if on_point is not None:
                on_point(server, n, point)
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(values, spec):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, spec)
    return f"{format(med, spec)} ({format(min(values), spec)}..{format(max(values), spec)})"


def table(results):
    """The printed table: one line per (server, workers), with the speed-up over the same server's 1 worker."""
    lines = [f"{'server':16} {'workers':>7}  {'msgs/s (min..max)':>30}  {'x1':>5}  {'server CPU µs/msg':>24}  flags"]
    base = {}
    for (server, n), pts in results.items():
        med = _median(p.msgs_per_s for p in pts)
        if n == 1 or server not in base:
            base.setdefault(server, med)
        ratio = med / base[server] if med and base.get(server) else None
        flags = []
        if any(p.client_bound for p in pts):
            flags.append("CLIENT-BOUND")
        if not all(p.valid for p in pts):
            flags.append("INVALID: " + next(p.invalid_reason for p in pts if not p.valid))
        lines.append(f"{server:16} {n:>7}  {_fmt([p.msgs_per_s for p in pts], ',.0f'):>30}  "
                     f"{format(ratio, '.2f') if ratio else '-':>5}  {_fmt([p.server_us_per_msg for p in pts], '.2f'):>24}  "
                     f"{' '.join(flags)}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="cython,uvloop", help="comma-separated servers (default cython,uvloop)")
    p.add_argument("--workers", nargs="+", type=arg(parse_number, "--workers", kind=int, positive=True), default=None,
                   metavar="N", help="worker counts (default 1 2, and 4 8 where the machine has the CPUs)")
    p.add_argument("--server-cpus", type=arg(parse_cpus, "--server-cpus"), default=None, metavar="LIST")
    p.add_argument("--client-cpus", type=arg(parse_cpus, "--client-cpus"), default=None, metavar="LIST")
    p.add_argument("--conns", type=arg(parse_number, "--conns", kind=int, positive=True), default=100)
    p.add_argument("--size", type=arg(parse_size, "--size"), default=64)
    p.add_argument("--duration", type=arg(parse_number, "--duration", positive=True), default=2.0)
    p.add_argument("--warmup", type=arg(parse_number, "--warmup"), default=0.5)
    p.add_argument("--rounds", type=arg(parse_number, "--rounds", kind=int, positive=True), default=3)
    p.add_argument("--json", metavar="PATH", help="write every point of every round here")
    try:
        args = p.parse_args(argv)
        allowed = os.sched_getaffinity(0)
        workers = args.workers or [n for n in (1, 2, 4, 8) if n == 1 or n <= max(2, len(allowed) // 2)]
        server_cpus, client_cpus, shared = default_cpus(allowed, max(workers))
        server_cpus = args.server_cpus or server_cpus
        client_cpus = args.client_cpus or client_cpus
        if set(server_cpus) & set(client_cpus):
            print(f"note: the client shares CPU(s) {','.join(map(str, sorted(set(server_cpus) & set(client_cpus))))} "
                  f"with the servers: a worker's gain is measured on a busy machine", file=sys.stderr)
        servers = [s for s in args.servers.split(",") if s]
        if not servers:
            raise UsageError("--servers names no server")
        print(f"servers {', '.join(servers)}; workers {' '.join(map(str, workers))}; server CPUs "
              f"{','.join(map(str, server_cpus))}; client CPUs {','.join(map(str, client_cpus))}; {args.conns} conns x "
              f"{args.size} B closed loop, {args.duration:g} s windows, {args.rounds} rounds", flush=True)
        results = measure(servers, workers, server_cpus, client_cpus, args.conns, args.size, args.duration,
                          args.warmup, args.rounds,
                          on_point=lambda s, n, pt: print(f"  {s} x{n}: {pt.msgs_per_s:,.0f} msgs/s", file=sys.stderr))
        print(table(results))
        if args.json:
            write_json_atomic(args.json, {f"{s}:w{n}": [asdict(p) for p in pts] for (s, n), pts in results.items()})
    except SockbenchError as e:
        print(f"scaling: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
