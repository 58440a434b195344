"""``sockbench load``: the command-line face of ``sockbench.bench.load.harness``.

Why it is built this way: ``sockbench/cli.py`` is shared by every subcommand,
so it only registers ``load`` and calls in here; the arguments, their
parsing into a ``LoadSpec`` and the one-screen rich summary live in this
module.  The result JSON goes to ``--json PATH`` as soon as the run ends,
by default into ``results/load/<UTC time>__<server>.json`` (``--json -``: to
stdout, and then the summary goes to stderr so that stdout stays pure JSON).
Nothing is drawn while the load runs (a spinner redraws 12.5 times a second
on the CPUs being measured): one line says what is running, then the
summary follows.  An invalid run still writes its JSON and prints its
summary, then exits 1 with one line that says why.  Ctrl-C or SIGTERM inside
the window cuts it short: the result of the window until then is written and
shown (invalid, "interrupted by ..."), then the command exits 130 or 143.  ``--protocol frame|json``
speaks one of the framed protocols (``sockbench.servers.protocols``); ``--size``
is the payload size in every protocol, so "MB/s" counts payload bytes and
"wire MB/s" adds the framing and headers.  The summary reads the run's
``LoadResult`` (``sockbench.bench.schema``); the JSON is its ``to_json()``.
Foreign work on each side's CPUs (and the hypervisor's steal) sits beside
that side's own CPU, and a DISTURBED or STARVED run says so in one line
each, in the verdict's colour: a figure under either must not be quoted.
"""

import dataclasses
import json
import os
import sys

from sockbench.cli.targets import add_command_arguments, command_from_args
from sockbench.cli import damonargs, tlsargs
from sockbench.endpoints import TRANSPORTS, check_transport, parse_target
from sockbench.errors import SockbenchError, UsageError
from sockbench.thresholds import CLIENT_STALL_S, DISTURBED_SHARE
from sockbench.units import arg, parse_cpus, parse_number, parse_scheduler, parse_size

__all__ = ["add_arguments", "run_cli", "spec_from_args", "render_summary"]

EXIT_INVALID = 1


def add_arguments(p):
    """The ``load`` subcommand's arguments (the design's "Load command" contract)."""
    p.add_argument("name", nargs="?", help="a registered server to start and load (see `sockbench servers`)")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="load an echo server that is already running instead: HOST:PORT, [V6]:PORT or unix:/PATH")
    p.add_argument("--transport", type=arg(check_transport, "--transport"), default=None, metavar="|".join(TRANSPORTS),
                   help="tcp (default), tcp6, unix or udp: what NAME is started on; with --target, its transport "
                        "(default: the target's own)")
    p.add_argument("--mode", default="closed", help="closed (default), open or connect")
    p.add_argument("--conns", type=arg(parse_number, "--conns", kind=int), default=10, help="connections (default 10)")
    p.add_argument("--size", default="64", help="payload size per message: 64, 1k, 16k, 1m (default 64)")
    p.add_argument("--protocol", default="raw",
                   help="raw (default: a byte echo), frame (4-byte length + payload) or json (2-byte length + JSON header + content)")
    p.add_argument("--depth", type=arg(parse_number, "--depth", kind=int), default=1, help="messages in flight per connection, closed mode (default 1)")
    p.add_argument("--rate", type=arg(parse_number, "--rate"), default=None, help="open mode: total msgs/s")
    p.add_argument("--duration", type=arg(parse_number, "--duration"), default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=arg(parse_number, "--warmup"), default=1.0, help="seconds before measuring (default 1)")
    p.add_argument("--procs", type=arg(parse_number, "--procs", kind=int), default=1, help="load processes (default 1)")
    p.add_argument("--server-cpus", default="0", help="CPUs for the server (default 0)")
    p.add_argument("--workers", type=arg(parse_number, "--workers", kind=int, positive=True), default=1, metavar="N",
                   help="server processes, each on one of --server-cpus (sockbench serve --workers; default 1)")
    p.add_argument("--client-cpus", default="1", help="CPUs for the load processes (default 1)")
    p.add_argument("--interval", type=arg(parse_number, "--interval"), default=0.1, help="time-series interval in seconds (default 0.1)")
    p.add_argument("--timeout", type=arg(parse_number, "--timeout"), default=5.0, help="seconds before an unanswered message is an error (default 5)")
    p.add_argument("--engine", default="epoll", metavar="epoll|uring",
                   help="the load loop: epoll (default; every protocol and transport) or uring (io_uring; raw over "
                        "tcp, tcp6, unix)")
    p.add_argument("--json", metavar="PATH",
                   help="write the result JSON here (- for stdout; default results/load/<UTC time>__<server>.json)")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT", type=arg(parse_scheduler, "--cluster"),
                   help="load from several hosts: the Dask scheduler their `sockbench cluster-worker`s joined "
                        "(--conns is the total, --procs per host)")
    p.add_argument("--hosts", metavar="NAMES", help="with --cluster: these workers only, by name (default: all)")
    add_command_arguments(p)
    p.add_argument("--python", metavar="PATH",
                   help="run the built-in server NAME under this interpreter (3.11 or newer; built once, cached)")
    tlsargs.add_arguments(p, "load")
    damonargs.add_argument(p)
    return p


def _cluster_load(spec, args):
    # deferred: the cluster coordinator, as the harness in run_cli
    from sockbench.bench.load.cluster import run_cluster_load

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
    return run_cluster_load(spec, args.cluster, hosts=hosts)


def spec_from_args(args):
    # deferred: every `sockbench serve` builds the parser that imports this module, so the load
    # pipeline (the harness, the schema) is imported only when a load runs
    from sockbench.bench.load.spec import LoadSpec

    command = command_from_args(args)
    if sum(x is not None for x in (args.name, args.target, command)) != 1:
        raise UsageError("load: give a server NAME, --command 'CMD ARGS' or --target HOST:PORT (exactly one)")
    if command is not None and getattr(args, "cluster", None):
        raise UsageError("--cluster starts a registered server on its load hosts' side; give a NAME, or --target")
    server_python = python = None
    if getattr(args, "python", None):
        if args.name is None:
            raise UsageError("--python runs a built-in server NAME under another interpreter; give a NAME")
        # deferred: building an interpreter's environment, for --python only
        from sockbench.servers.environments import prepare

        env = prepare(args.python, log=lambda line: print(f"sockbench: {line}", file=sys.stderr, flush=True))
        server_python, python = env.python, env.label
    if getattr(args, "hosts", None) and not getattr(args, "cluster", None):
        raise UsageError("--hosts names load hosts of --cluster; give --cluster tcp://HOST:PORT too")
    target = parse_target(args.target, args.transport) if args.target else None
    spec = LoadSpec(
        server=args.name,
        target=target,
        transport=target.transport if target is not None else (args.transport or "tcp"),
        mode=args.mode,
        conns=args.conns,
        size=parse_size(args.size, name="--size"),
        depth=args.depth,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        procs=args.procs,
        server_cpus=parse_cpus(args.server_cpus, name="--server-cpus"),
        client_cpus=parse_cpus(args.client_cpus, name="--client-cpus"),
        interval_s=args.interval,
        timeout_s=args.timeout,
        protocol=args.protocol,
        workers=args.workers,
        command=command,
        server_python=server_python,
        python=python,
        tls=tlsargs.config(args, "load"),
        engine=args.engine,
    )
    # a load from several hosts checks the client CPUs on each host, where they are
    return spec if getattr(args, "cluster", None) else spec.validate()


def run_cli(args):
    # deferred: the harness, as in spec_from_args
    from sockbench.bench.load.harness import LoadInterrupted, run_load
    from sockbench.cli.term import console as make_console
    from sockbench.damon import monitors, note as damon_note
    from sockbench.jsonfile import check_writable, write_json_atomic
    from sockbench.servers.tls import ensure_certificate
    from sockbench.timestamps import folder_stamp

    spec = spec_from_args(args)
    to_stdout = args.json == "-"
    if not args.json:
        name = spec.label.replace(":", "_").replace("/", "_")
        args.json = os.path.join("results", "load", f"{folder_stamp()}__{name}.json")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
    if not to_stdout:
        check_writable(args.json, "--json")  # before measuring: a result with nowhere to go is lost
    if spec.tls is not None and spec.server is not None and spec.tls.cert is None:
        # the server's certificate, made once per results folder: the folder the result goes to
        folder = os.path.dirname(os.path.abspath(args.json)) if not to_stdout else os.path.join("results", "load")
        spec = dataclasses.replace(spec, tls=spec.tls.with_files(*ensure_certificate(folder)))
    console = make_console(stderr=to_stdout)
    # one line, then nothing until the run ends: a redrawn spinner would cost the measured CPUs
    console.print(f"loading {spec.label}: {spec.mode}, {spec.protocol}, {spec.conns} conns, "
                  f"{spec.warmup_s:g} s warmup + {spec.duration_s:g} s, {spec.engine} load engine ...", highlight=False)
    damon = damon_note(monitors()) if spec.mode == "open" and not args.pause_damon else ""
    if damon:
        console.print(f"note: {damon}", highlight=False)
    notes = []
    cut = None
    try:
        with damonargs.pausing(args):
            result = _cluster_load(spec, args) if args.cluster else run_load(spec, notes=notes)
    except LoadInterrupted as e:
        if e.result is None:
            raise  # stopped before the window measured anything
        cut, result = e, e.result
    if to_stdout:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        sys.stdout.flush()
    elif args.json:
        try:
            write_json_atomic(args.json, result.to_json())
        except OSError as e:
            raise SockbenchError(f"cannot write {args.json}: {e.strerror}") from None
    console.print(render_summary(result))
    if not to_stdout:
        console.print(f"result: {args.json}", highlight=False)
    if cut is not None:
        raise cut  # written and shown: now the exit status of the signal
    if notes:
        raise SockbenchError(notes[0], exit_code=2)  # said once more, last: the result above stands
    if not result.valid:
        raise SockbenchError(f"invalid run: {result.invalid_reason}", exit_code=EXIT_INVALID)
    return 0


def _n(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def render_summary(r):
    """A one-screen rich renderable of a ``LoadResult``: the run, its verdict, throughput, latency, CPU, errors."""
    # deferred: rich, as in run_cli
    from rich.console import Group
    from rich.text import Text

    verdict = Text("VALID", style="bold green") if r.valid else Text(f"INVALID: {r.invalid_reason}", style="bold red")
    e = r.errors
    errs = Text(f"errors: {e.total}  " + "  ".join(f"{k} {v}" for k, v in e.by_kind.items()),
                style="red" if e.total else "dim")
    return Group(_head(r), verdict, *_verdict_lines(r), _throughput_table(r), _latency_table(r), _cpu_table(r),
                 *_fairness_line(r), *_datagram_line(r), *_tls_line(r), *_stall_line(r), errs, *_notes(r))


def _verdict_lines(r):
    """DISTURBED and STARVED, one line each, under the verdict."""
    from rich.text import Text  # deferred: rich, as in run_cli

    lines = []
    i = r.interference
    if i is not None and i.disturbed:
        parts = [f"{what} {share:.0%} of the {side} CPUs" for side, what, share in (
            ("server", "foreign", i.server_foreign), ("client", "foreign", i.client_foreign),
            ("server", "steal", i.server_steal), ("client", "steal", i.client_steal)) if share]
        lines.append(Text(f"DISTURBED: {', '.join(parts)} (>= {DISTURBED_SHARE:.0%} of a CPU); "
                          "re-run on a quieter machine", style="bold yellow"))
    f = r.fairness
    if f is not None and f.starved:
        lines.append(Text(f"STARVED: {f.starved} of {f.conns} connections completed no message in the window",
                          style="bold red"))
    return lines


def _fairness_line(r):
    from rich.text import Text  # deferred: rich, as in run_cli

    f = r.fairness
    if f is None or not f.conns:
        return []
    jain = f"  Jain's index {f.jain:.3f}" if f.jain is not None else ""
    return [Text(f"per connection: min {f.min:,}  median {f.median:,.0f}  max {f.max:,} msgs{jain}",
                 style="red" if f.starved else "dim")]


def _tls_line(r):
    """TLS: what the handshakes negotiated, and in connect mode how many a second, resumed or not."""
    from rich.text import Text  # deferred: rich, as in run_cli

    t = r.tls
    if t is None:
        return []
    line = f"TLS {t.version or '?'}  {t.cipher or '?'}  key exchange {t.group or '?'}"
    if t.handshakes is not None:
        line += f"  handshakes {t.handshakes_per_s:,.0f}/s ({t.resumed:,} of {t.handshakes:,} resumed)"
    if t.handshake_errors:
        line += f"  {t.handshake_errors:,} failed: {t.handshake_error}"
    return [Text(line, style="red" if t.handshake_errors else "dim")]


def _stall_line(r):
    """Open loop, polling: how often the client's CPU was taken from it for ``CLIENT_STALL_S`` or more (no verdict)."""
    from rich.text import Text  # deferred: rich, as in run_cli

    cl = r.client
    if cl.stalls is None:
        return []
    line = f"client stalls (CPU taken >= {CLIENT_STALL_S * 1e3:g} ms): {cl.stalls:,}"
    if cl.stalls:
        line += (f", {cl.stall_s * 1e3:,.1f} ms in all, longest {cl.longest_stall_s * 1e3:,.2f} ms: "
                 "a p99 near that length is the machine as much as the server")
    return [Text(line, style="yellow" if cl.stalls else "dim")]


def _datagram_line(r):
    """udp: sent, received, lost (and its share), duplicates, out of order, late, corrupt; a run with loss is valid."""
    from rich.text import Text  # deferred: rich, as in run_cli

    from sockbench.bench.load.datagram import summary_line  # deferred: the load pipeline, as in spec_from_args

    d = r.datagrams
    if d is None:
        return []
    return [Text(summary_line(d), style="red" if d.corrupt else ("yellow" if d.lost else "dim"))]


def _head(r):
    from rich.text import Text  # deferred: rich, as in run_cli

    w = r.workload
    head = Text()
    head.append(f"{r.server}", style="bold")
    if w.transport != "tcp":
        head.append(f"  {w.transport}")
    if w.tls is not None:
        head.append(f"  TLS {w.tls.version}" + ("  resuming" if w.tls.resumption else ""))
    head.append(f"  {w.mode}")
    if w.protocol != "raw":
        head.append(f"  {w.protocol}")
    head.append(f"  {w.conns} conns x {w.size} B x {w.depth} in flight")
    if w.mode == "open":
        head.append(f"  rate {w.rate:,.0f}/s")
    head.append(f"  {w.duration_s:g} s (+{w.warmup_s:g} s warmup)  {w.procs} proc(s)")
    head.append(f"  {r.client.engine_name} load engine")
    return head


def _throughput_table(r):
    # deferred: rich, as in run_cli
    from rich.table import Table
    from rich.text import Text

    t = r.throughput
    tp = Table(box=None, show_header=False, pad_edge=False)
    tp.add_column(style="dim")
    tp.add_column(justify="right")
    tp.add_row("msgs/s", _n(t.msgs_per_s))
    tp.add_row("MB/s", _n(t.bytes_per_s / 1e6, "{:,.1f}"))
    if r.workload.protocol != "raw" and t.wire_bytes_per_s is not None:
        tp.add_row("wire MB/s", _n(t.wire_bytes_per_s / 1e6, "{:,.1f}"))
    if t.conns_per_s is not None:
        tp.add_row("conns/s", _n(t.conns_per_s))
    if t.target_rate is not None:
        tp.add_row("target rate", _n(t.target_rate))
        style = "red" if t.behind else ""
        tp.add_row("achieved rate", Text(f"{t.achieved_rate:,.0f} ({t.pacing_error:+.2%})", style=style))
    return tp


def _latency_table(r):
    from rich.table import Table  # deferred: rich, as in run_cli

    lat = Table(box=None, pad_edge=False)
    lat.add_column("µs", style="dim")
    rows = [("latency" if r.workload.mode != "connect" else "connect", r.latency_us)]
    if r.service_us is not None:
        rows.append(("service", r.service_us))
    if r.cycle_us is not None:
        rows.append(("cycle", r.cycle_us))
    for k in r.latency_us.figures():
        lat.add_column(k, justify="right")
    for label, s in rows:
        lat.add_row(label, *(_n(v, "{:,.1f}") for v in s.figures().values()))
    return lat


def _cpu_table(r):
    # deferred: rich, as in run_cli
    from rich.table import Table
    from rich.text import Text

    cpu = Table(box=None, pad_edge=False)
    cpu.add_column("cpu", style="dim")
    for k in ("user s", "sys s", "user µs/msg", "sys µs/msg", "util", "foreign", "steal", "peak RSS"):
        cpu.add_column(k, justify="right")
    sp, cl, i = r.server_proc, r.client, r.interference

    def other(share):
        # foreign work or steal on that side's CPUs: yellow once it reaches the threshold
        return Text(_n(share, "{:.0%}"), style="yellow" if share is not None and share >= DISTURBED_SHARE else "")

    cpu.add_row(
        "server", _n(sp.user_s, "{:.2f}"), _n(sp.sys_s, "{:.2f}"),
        _n(sp.us_per_msg.user, "{:.3f}"), _n(sp.us_per_msg.sys, "{:.3f}"),
        _n(sp.cpu_util, "{:.0%}"), other(i and i.server_foreign), other(i and i.server_steal),
        _n(sp.rss_peak_bytes and sp.rss_peak_bytes / 2**20, "{:.1f} MiB"),
    )
    cpu.add_row(
        "client", _n(cl.user_s, "{:.2f}"), _n(cl.sys_s, "{:.2f}"),
        _n(cl.us_per_msg.user, "{:.3f}"), _n(cl.us_per_msg.sys, "{:.3f}"),
        Text(_n(cl.cpu_util, "{:.0%}") + (f" (busy {cl.busy_util:.0%})" if cl.busy_util is not None else ""),
             style="red" if r.client_bound else ""),
        other(i and i.client_foreign), other(i and i.client_steal), "",
    )
    return cpu


def _notes(r):
    from rich.text import Text  # deferred: rich, as in run_cli

    cl = r.client
    notes = []
    if r.client_bound:
        notes.append(Text("client-bound: the load CPUs were >= 95% busy; this figure measures the client too", style="yellow"))
    if r.limited_by:
        notes.append(Text(f"limited by: {r.limited_by} CPU saturated", style="dim"))
    if cl.polling:
        notes.append(Text("the client polled between sends (open loop, a CPU per load process): "
                          "its CPU is always 100%, its busy share says how loaded it was", style="dim"))
    if cl.msgs_per_write:
        notes.append(Text(f"coalescing: {cl.msgs_per_write:.2f} msgs per write ({cl.writes:,} writes)", style="dim"))
    if cl.waits and cl.msgs_queued is not None:
        notes.append(Text(f"wake-ups: {cl.msgs_queued / cl.waits:.2f} msgs per epoll_wait ({cl.waits:,} calls)", style="dim"))
    return notes
