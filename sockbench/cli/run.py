"""The ``run``, ``report`` and ``compare`` subcommands: their arguments and their entry points.

Why it is built this way: ``main.py`` only registers the subcommands; their
arguments and entry points live here, and the code they drive (the suite's
``runner``, the report, ``compare``) is imported when a command runs, so that
``sockbench serve`` starts without it.  Every user error is a
``SockbenchError``, which the command line prints as one line with a non-zero
exit.
"""

import dataclasses
import json
import math
import sys

from sockbench.cli.targets import add_command_arguments, commands_from_args
from sockbench.cli import damonargs, tlsargs
from sockbench.cli.term import console as make_console
from sockbench.errors import SockbenchError
from sockbench.units import arg, parse_cpus, parse_number, parse_percent, parse_scheduler

__all__ = [
    "add_run_arguments",
    "add_report_arguments",
    "add_compare_arguments",
    "run_cli",
    "report_cli",
    "compare_cli",
    "warn_left_out",
]


def warn_left_out(skipped):
    """Print to stderr one warning line per raw file left out (``Results.skipped``), then their count."""
    # deferred with the report it belongs to (hdrhistogram behind the store)
    from sockbench.bench.report.store import left_out_lines

    for line in left_out_lines(skipped):
        print(f"sockbench: warning: {line}", file=sys.stderr)


def add_run_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="the CI smoke matrix: 64 B, 10 connections closed loop, open loop at 75%% of the peak, exactly 3 "
                        "short rounds per cell (< 60 s; too few rounds for figures to quote)")
    p.add_argument("--full", action="store_true",
                   help="the full grid: sizes 64 1k 16k x connections 1 10 100 closed loop, open loop at 25 50 75 90%%, "
                        "the protocol section at 100 connections x 64 B x 16 in flight (well over 5 minutes)")
    p.add_argument("--servers", nargs="+", metavar="NAME", help="servers to run (default: every available one)")
    p.add_argument("--sizes", nargs="+", metavar="SIZE", help="closed-loop message sizes (default 64; --full: 64 1k 16k)")
    p.add_argument("--conns", nargs="+", metavar="N", help="closed-loop connection counts (default 100; --full: 1 10 100)")
    p.add_argument("--open-loads", nargs="*", metavar="PCT",
                   help="open-loop loads in %% of each server's peak (default 25 50; --full: 25 50 75 90; none: no open loop)")
    p.add_argument("--protocols", nargs="*", metavar="PROTO",
                   help="the protocol section: the closed-loop workload (by default 100 connections x 64 B, depth 1: the "
                        "grid's own cell is the raw baseline; --full: x 16 in flight) in each of these protocols (raw frame "
                        "json; default all three, raw always included; none: no section; with --quick the section uses the "
                        "quick cell's workload, 64 B x 10 connections, and is off unless asked for)")
    p.add_argument("--transports", nargs="+", metavar="T",
                   help="run every cell over each of these transports: tcp tcp6 unix udp (default tcp; a server "
                        "without one of them skips its cells there, with a note)")
    p.add_argument("--rounds", type=arg(parse_number, "--rounds", kind=int, positive=True),
                   help="exactly this many rounds per cell (no stopping rule; --quick: 3)")
    p.add_argument("--min-rounds", type=arg(parse_number, "--min-rounds", kind=int, positive=True),
                   help="rounds every cell runs at least (default 6, the fewest with a 95%% interval of a median)")
    p.add_argument("--max-rounds", type=arg(parse_number, "--max-rounds", kind=int, positive=True),
                   help="rounds a cell runs at most (default 30)")
    p.add_argument("--ci", type=arg(parse_percent, "--ci"), metavar="PCT",
                   help="a cell stops when the 95%% interval of its median msgs/s (closed) or p99 (open) is within "
                        "this much of the median (default 3%%; the open loop's p99: --ci-p99)")
    p.add_argument("--ci-p99", type=arg(parse_percent, "--ci-p99"), metavar="PCT",
                   help="the same for an open-loop cell's p99, a tail that varies more from round to round "
                        "(default 10%%)")
    p.add_argument("--cell-budget", type=arg(parse_number, "--cell-budget", positive=True), metavar="S",
                   help="the most seconds a cell's rounds may take; its minimum rounds always run (default 30; --full: 60)")
    p.add_argument("--run-budget", type=arg(parse_number, "--run-budget"), metavar="S",
                   help="the most seconds the cells take together, shared out as the run goes (default 270, so the "
                        "default run ends within 5 minutes; --quick: 40; 0: no limit, the --full default)")
    p.add_argument("--duration", type=arg(parse_number, "--duration", positive=True), metavar="S",
                   help="measured seconds per closed-loop round (default 0.3); open-loop rounds last at least this, and "
                        "long enough that one 4 ms scheduler hiccup cannot set their p99")
    p.add_argument("--warmup", type=arg(parse_number, "--warmup"), metavar="S", help="warmup seconds per round (excluded)")
    p.add_argument("--server-cpus", type=arg(parse_cpus, "--server-cpus"), metavar="LIST", help="CPUs for the server (default 0)")
    p.add_argument("--client-cpus", type=arg(parse_cpus, "--client-cpus"), metavar="LIST", help="CPUs for the load client (default 1)")
    p.add_argument("--workers", nargs="+", type=arg(parse_number, "--workers", kind=int, positive=True), metavar="N",
                   help="the scaling dimension: every cell with each of these server process counts, each worker on one "
                        "of --server-cpus (sockbench serve --workers; default 1)")
    p.add_argument("--engine", default=None, metavar="epoll|uring",
                   help="the load loop of the plain raw stream cells: epoll (default) or uring (io_uring); frame, json, TLS and "
                        "udp cells stay on epoll, and the report says which engine measured each cell")
    p.add_argument("--seed", type=arg(parse_number, "--seed", kind=int), metavar="N",
                   help="the seed of the passes' random order (default: drawn at the start and recorded in meta.json "
                        "and progress.jsonl, so any run's order can be replayed)")
    p.add_argument("--baseline", metavar="NAME",
                   help="give every server's figures as ratios to this server's, at each workload (default: to the "
                        "fastest)")
    p.add_argument("--out", metavar="DIR", help="results folder to create (default results/<UTC time>)")
    tlsargs.add_arguments(p, "run")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT", type=arg(parse_scheduler, "--cluster"),
                   help="load from several hosts: the Dask scheduler of their `sockbench cluster-worker`s "
                        "(reached, with the --hosts, before the run starts)")
    p.add_argument("--hosts", metavar="NAMES", help="with --cluster: these workers only, by name (default: all)")
    add_command_arguments(p, many=True)
    damonargs.add_argument(p)
    p.add_argument("--python", nargs="+", metavar="PATH",
                   help="the interpreter dimension: run the built-in servers under each of these Pythons (3.11 or "
                        "newer, e.g. python3.11 python3.12 python3.13; the first is the base of the ratios); their "
                        "extensions are built once per interpreter and commit (cached)")


def add_report_arguments(p):
    p.add_argument("dir", metavar="DIR", help="a results folder written by `sockbench run`")
    p.add_argument("--baseline", metavar="NAME",
                   help="give every server's figures as ratios to this server's (default: the run's --baseline, "
                        "else the fastest at each workload)")


def add_compare_arguments(p):
    p.add_argument("a", metavar="A", help="the baseline results folder")
    p.add_argument("b", metavar="B", help="the results folder to judge against A")
    p.add_argument("--fail-above", metavar="PCT",
                   help="exit 1 when a cell is slower by more than PCT (e.g. 5%%): its whole confidence interval lies "
                        "beyond it (without it, the verdicts use 5%%)")
    p.add_argument("--alpha", type=arg(parse_number, "--alpha", positive=True), default=0.05,
                   help="1 - the confidence of the interval of B/A (default 0.05: a 95%% interval)")
    p.add_argument("--json", action="store_true",
                   help="print the comparison as JSON (one object per cell: medians, ratio, interval, verdict)")


def run_cli(args):
    # the suite, the report and compare import rich, hdrhistogram and matplotlib: only when they run
    from sockbench.bench.suite.runner import build_plan, preflight_commands, prepare_pythons, run_main

    commands = commands_from_args(args)
    if args.warmup is not None and args.warmup < 0:
        raise SockbenchError("--warmup cannot be negative", exit_code=2)
    if args.run_budget is not None and args.run_budget < 0:
        raise SockbenchError("--run-budget cannot be negative", exit_code=2)
    plan = build_plan(
        servers=args.servers, sizes=args.sizes, conns=args.conns, quick=args.quick, full=args.full,
        rounds=args.rounds, min_rounds=args.min_rounds, max_rounds=args.max_rounds, ci=args.ci, ci_p99=args.ci_p99,
        cell_budget_s=args.cell_budget, run_budget_s=args.run_budget, duration_s=args.duration, warmup_s=args.warmup,
        open_pcts=args.open_loads, server_cpus=args.server_cpus, client_cpus=args.client_cpus, protocols=args.protocols,
        transports=args.transports,
        workers=args.workers,
        seed=args.seed,
        commands=commands,
        pythons=prepare_pythons(args.python, log=lambda line: print(f"sockbench: {line}", file=sys.stderr, flush=True))
        if args.python else None,
        tls=args.tls,
        tls_config=tlsargs.config(args, "run"),
        tls_resumption=args.tls_resumption,
        engine=args.engine,
    )
    if args.baseline is not None and args.baseline not in plan.servers:
        raise SockbenchError(f"--baseline {args.baseline} is not one of the servers run: {' '.join(plan.servers)}",
                             exit_code=2)
    if args.hosts and not args.cluster:
        raise SockbenchError("--hosts names load hosts of --cluster; give --cluster tcp://HOST:PORT too", exit_code=2)
    if args.cluster:
        hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
        _reach_cluster(args.cluster, hosts)
        plan = dataclasses.replace(plan, extra={**plan.extra, "cluster": {"scheduler": args.cluster, "hosts": hosts}})
    if plan.commands:
        if args.cluster:
            raise SockbenchError("--cluster starts registered servers; a --command runs on this machine only", exit_code=2)
        preflight_commands(plan)
    with damonargs.pausing(args) as damon_paused:
        return run_main(plan, out=args.out, argv=sys.argv, baseline=args.baseline, damon_paused=damon_paused)


def _reach_cluster(scheduler, hosts):
    """The scheduler answers and the hosts asked for are its workers, before a results folder exists: else one line."""
    # deferred: the coordinator imports Dask's client, only for a cluster run
    from sockbench.bench.load.cluster import connect, connected_workers, pick_hosts

    client = connect(scheduler)
    try:
        pick_hosts(connected_workers(client), hosts)
    finally:
        client.close()


def report_cli(args):
    # deferred heavy import: the report's matplotlib
    from sockbench.bench.report.document import build_report

    rep = build_report(args.dir, baseline=args.baseline)
    warn_left_out(rep["results"].skipped)
    console = make_console()
    skipped = [(t, why) for _, t, why in rep["plots"] if why]
    for title, why in skipped:
        console.print(f"not drawn: {title} ({why})", highlight=False)
    console.print(f"report: {rep['html']}", highlight=False, soft_wrap=True)
    console.print(f"        {rep['md']}", highlight=False, soft_wrap=True)
    return 0


def _plain(v):
    """A comparison value as JSON can carry it: non-finite numbers are null, tuples are lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def compare_cli(args):
    # deferred heavy import: the results store's hdrhistogram
    from sockbench.bench.report.compare import compare, render

    fail_above = parse_percent(args.fail_above, name="--fail-above") if args.fail_above is not None else None
    if not 0 < args.alpha < 1:
        raise SockbenchError(f"--alpha must be between 0 and 1, not {args.alpha}", exit_code=2)
    result = compare(args.a, args.b, alpha=args.alpha, fail_above=fail_above)
    warn_left_out(result["skipped"])
    if not result["rows"]:
        raise SockbenchError(f"{args.a} and {args.b} have no (server, workload) in common; nothing to compare")
    if args.json:
        print(json.dumps(_plain({k: v for k, v in result.items() if k != "skipped"}), indent=2))
    else:
        render(result, make_console())
    return 1 if result["failed"] else 0
