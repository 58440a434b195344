"""The ``ab`` subcommand: its arguments, its entry point and its table.

Why it is built this way: as for ``run`` and ``compare``, the arguments and
the rendering live here and the measuring (``bench.suite.ab``) is imported
when the command runs, so ``sockbench serve`` starts without it.  Every bad
input is one line, exit 2, before a server is started: an unknown server, a
revision that does not build, two targets that do not speak the same
transport or protocol.
"""

import argparse
import dataclasses
import json
import math
import sys

from sockbench.cli import damonargs
from sockbench.cli.targets import add_command_arguments, commands_from_args
from sockbench.cli.term import console as make_console
from sockbench.damon import monitors, note as damon_note
from sockbench.errors import UsageError
from sockbench.units import arg, parse_cpus, parse_number, parse_percent, parse_size

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p):
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="A and B: a server name (see `sockbench servers`), HOST:PORT, [V6]:PORT or unix:PATH (a server "
                        "already running: no CPU figures); a --command counts as a target after these")
    p.add_argument("--rev", nargs=3, metavar=("BASE", "HEAD", "NAME"),
                   help="instead of A and B: server NAME as revision BASE of sockbench builds it (A) against HEAD (B); "
                        "each revision is built once in its own virtual environment and cached "
                        "(~/.cache/sockbench/envs, or $SOCKBENCH_CACHE); the load generator is this checkout's")
    add_command_arguments(p, many=True)
    p.add_argument("--fail-above", metavar="PCT", default="5%",
                   help="the verdict's threshold: slower / faster when the whole 95%% interval of B/A lies beyond it, "
                        "same when within (default 5%%); exit 1 when B is slower at any workload")
    p.add_argument("--sizes", nargs="+", metavar="SIZE", help="message sizes (default 64 1k)")
    p.add_argument("--conns", nargs="+", metavar="N", type=arg(parse_number, "--conns", kind=int, positive=True),
                   help="connection counts (default 100); each size is measured at each")
    p.add_argument("--depth", type=arg(parse_number, "--depth", kind=int, positive=True), default=1,
                   help="messages in flight per connection (default 1)")
    p.add_argument("--protocol", choices=("raw", "frame", "json"), default="raw", help="wire protocol (default raw)")
    p.add_argument("--transport", choices=("tcp", "tcp6", "unix"), default=None,
                   help="for two named targets: tcp (default), tcp6 or unix; an address target sets its own")
    p.add_argument("--min-pairs", type=arg(parse_number, "--min-pairs", kind=int, positive=True), default=8,
                   help="pairs of rounds every workload gets at least (default 8; 6 is the fewest with a 95%% interval)")
    p.add_argument("--max-pairs", type=arg(parse_number, "--max-pairs", kind=int, positive=True), default=40,
                   help="pairs at most (default 40)")
    p.add_argument("--budget", type=arg(parse_number, "--budget", positive=True), default=120.0, metavar="S",
                   help="the most seconds the rounds take (default 120); they stop sooner once every workload is "
                        "decided at 99%%")
    p.add_argument("--duration", type=arg(parse_number, "--duration", positive=True), default=0.3, metavar="S",
                   help="measured seconds per round (default 0.3)")
    p.add_argument("--warmup", type=arg(parse_number, "--warmup"), default=0.1, metavar="S",
                   help="warmup seconds per round (default 0.1)")
    p.add_argument("--seed", type=arg(parse_number, "--seed", kind=int), metavar="N",
                   help="the seed of the rounds' random order (default: drawn, and recorded in meta.json)")
    p.add_argument("--server-cpus", type=arg(parse_cpus, "--server-cpus"), default=(0,), metavar="LIST",
                   help="CPUs for the servers (default 0)")
    p.add_argument("--client-cpus", type=arg(parse_cpus, "--client-cpus"), default=(1,), metavar="LIST",
                   help="CPUs for the load (default 1)")
    p.add_argument("--out", metavar="DIR", help="results folder to create (default results/ab-<UTC time>)")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    damonargs.add_argument(p)
    # a test option: B's server burns this many extra µs of CPU per message (``sockbench serve --burn-us``)
    p.add_argument("--burn-us-b", type=arg(parse_number, "--burn-us-b", positive=True), default=None,
                   help=argparse.SUPPRESS)


def _targets(args, log):
    # deferred: the environments' build machinery and the targets come with the command
    from sockbench.servers.environments import environment
    from sockbench.servers.targets import command_target, resolve_target

    if args.rev:
        if args.targets or args.command:
            raise UsageError("ab: give two targets A B, or --rev BASE HEAD NAME, not both")
        base, head, name = args.rev
        a = resolve_target(name, environment(rev=base, log=log))
        b = resolve_target(name, environment(rev=head, log=log))
        return a, b
    targets = [resolve_target(t) for t in args.targets] + [command_target(c) for c in commands_from_args(args)]
    if len(targets) != 2:
        raise UsageError(f"ab: give two targets A B (names, addresses or --command, or --rev BASE HEAD NAME), not "
                         f"{len(targets)}")
    return targets[0], targets[1]


def run_cli(args):
    # deferred: the harness, the report's statistics and rich come with the command
    from sockbench.bench.suite.ab import AbPlan, AbRun, AbSide, check_targets, describe, prepare_out

    console = make_console(stderr=args.json)  # with --json, stdout holds the JSON alone

    def log(line):
        console.print(line, highlight=False, soft_wrap=True)

    threshold = parse_percent(args.fail_above, name="--fail-above")
    sizes = tuple(parse_size(s) for s in args.sizes) if args.sizes else None
    kw = {k: v for k, v in (("sizes", sizes), ("conns", tuple(args.conns) if args.conns else None)) if v}
    if args.warmup < 0:
        raise UsageError("--warmup cannot be negative")
    plan = AbPlan(depth=args.depth, protocol=args.protocol, transport=args.transport or "tcp",
                  duration_s=args.duration, warmup_s=args.warmup, min_pairs=args.min_pairs, max_pairs=args.max_pairs,
                  budget_s=args.budget, threshold=threshold, seed=args.seed, server_cpus=tuple(args.server_cpus),
                  client_cpus=tuple(args.client_cpus), **kw)
    ta, tb = _targets(args, log)
    a = AbSide("A", ta)
    b = AbSide("B", tb, ("--burn-us", f"{args.burn_us_b:g}") if args.burn_us_b else ())
    if b.extra and tb.kind != "name":
        raise UsageError("--burn-us-b needs a B that sockbench starts (a server name)")
    transport = check_targets(a, b, plan)
    if args.transport and any(not s.target.started for s in (a, b)) and transport != args.transport:
        raise UsageError(f"--transport {args.transport} does not match the address target's {transport}")
    plan = dataclasses.replace(plan, transport=transport)
    out = prepare_out(args.out)
    log(f"sockbench ab: A = {ta.describe()}, B = {tb.describe()}; {len(plan.workloads())} workload(s) "
        f"({'; '.join(describe(w) for w in plan.workloads())}), closed loop over {transport}, "
        f"{plan.min_pairs}-{plan.max_pairs} pairs of {plan.warmup_s:g} + {plan.duration_s:g} s rounds within "
        f"{plan.budget_s:g} s -> {out}")
    damon = "" if args.pause_damon else damon_note(monitors())
    if damon:
        log(f"note: {damon}")
    runner = AbRun(a, b, plan, out, log=(lambda line: None) if args.json else log, argv=sys.argv)
    with damonargs.pausing(args, log):
        rows = runner.run()
    if args.json:
        print(json.dumps({"a": a.label, "b": b.label, "out": out, "rows": [r.to_json() for r in rows]}, indent=2))
    else:
        _render(rows, a, b, plan, runner, console)
    if runner.interrupted:
        return 128 + runner.interrupted  # 130 or 143, as every command stopped by a signal
    return 1 if any(r.verdict in ("slower", "invalid") for r in rows) else 0


def _pct(v):
    return f"{v:+.1%}" if math.isfinite(v) else "n/a"


def _render(rows, a, b, plan, runner, console):
    # deferred with the command: rich, and the workload's wording
    from rich.markup import escape
    from rich.table import Table

    from sockbench.bench.suite.ab import describe

    t = Table(title=f"sockbench ab: B/A, {runner.passes} passes\nA = {a.target.describe()}\nB = {b.target.describe()}",
              box=None, show_edge=False)
    for col in ("workload", "A msgs/s (median)", "B msgs/s (median)", "B/A", "95% interval of the change", "pairs",
                "verdict"):
        t.add_column(col, justify="left" if col in ("workload", "verdict") else "right")
    for r in rows:
        ratio_text = f"{r.ratio.estimate:.3f}" if r.ratio is not None and math.isfinite(r.ratio.estimate) else "n/a"
        lo, hi = r.change_ci
        ci = f"{_pct(lo)} .. {_pct(hi)}" if math.isfinite(lo) and math.isfinite(hi) else "none"
        pairs = str(r.pairs) + (f" ({r.left_out} left out, disturbed)" if r.left_out else "")
        style = "red" if r.verdict in ("slower", "invalid") else "green" if r.verdict == "faster" else ""
        text = r.verdict + (f": {r.reason}" if r.reason else "")
        t.add_row(escape(describe(r.workload)), f"{r.a_median:,.0f}" if math.isfinite(r.a_median) else "n/a",
                  f"{r.b_median:,.0f}" if math.isfinite(r.b_median) else "n/a", ratio_text, ci, pairs,
                  f"[{style}]{escape(text)}[/]" if style else escape(text))
    console.print(t)
    console.print(f"change: + is faster, - is slower (msgs/s of B against A); the interval is the Wilcoxon signed-rank "
                  f"95% interval of B/A from the pairs of rounds measured in the same pass; a verdict needs it wholly "
                  f"beyond {plan.threshold:.1%} (slower, faster) or within it (same)", highlight=False)
    if runner.discarded:
        console.print(f"{runner.discarded} round(s) measured again because they were disturbed", highlight=False)
    slower = [r for r in rows if r.verdict in ("slower", "invalid")]
    if runner.interrupted:
        console.print("interrupted: the verdicts cover the pairs measured", highlight=False)
    if slower:
        worst = min((r for r in slower if r.ratio is not None), key=lambda r: r.ratio.estimate, default=slower[0])
        console.print(f"[red bold]FAIL[/]: B is slower than A by more than {plan.threshold:.1%} (or failed) at "
                      f"{len(slower)} workload(s); worst {escape(describe(worst.workload))}"
                      + (f" {worst.ratio.estimate - 1:+.1%}" if worst.ratio is not None else ""))
    else:
        verdicts = ", ".join(f"{sum(1 for r in rows if r.verdict == v)} {v}" for v in dict.fromkeys(r.verdict for r in rows))
        console.print(f"[green]OK[/]: no workload slower by more than {plan.threshold:.1%} ({verdicts})")
    console.print(f"rounds: {runner.out}/raw; `sockbench report {runner.out}` builds the full report", highlight=False,
                  soft_wrap=True)
