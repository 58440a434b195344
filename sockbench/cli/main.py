"""The ``sockbench`` command line.

Every subcommand is a function ``_cmd_NAME(args) -> int`` registered in
``build_parser()``; the arguments and entry points of the bigger ones live
beside this module (``load.py``, ``run.py``).  A ``SockbenchError`` (bad input,
a port in use, a missing build...) becomes one line on stderr and a non-zero
exit, never a traceback.  Every command stops on SIGTERM (what ``timeout``,
systemd and a CI runner send) as on Ctrl-C: both unwind it
(``children.stop_signals``), a command keeps and writes what it measured on
the way, and the exit status is 128 + the signal (130, 143).  A command that
has a stop contract of its own installs it over this one (``serve`` exits 0).

Start-up matters here: ``sockbench serve`` is what every benchmark and test
spawns, so this module imports only light modules, and the subcommands import
rich, the harness and the report (matplotlib) when they run.
"""

import argparse
import json
import sys

from sockbench import __version__
from sockbench.cli import ab as ab_cmd
from sockbench.children import signal_of, stop_signals
from sockbench.cli import check as check_cmd
from sockbench.cli import cluster as cluster_cmd
from sockbench.cli import history as history_cmd
from sockbench.cli import load as load_cmd
from sockbench.cli import run as run_cmd
from sockbench.cli.targets import add_command_arguments, command_from_args
from sockbench.procfs import mark_run_root
from sockbench.cli import tlsargs
from sockbench.cli.term import console as make_console
from sockbench.endpoints import TRANSPORTS, check_transport
from sockbench.errors import SockbenchError
from sockbench.servers import registry
from sockbench.servers.contract import run_server
from sockbench.servers.protocols import PROTOCOLS
from sockbench.units import arg, parse_number, parse_port, parse_size

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit 2."""

    def error(self, message):
        # main() prefixes every error with "sockbench: ", so only a subcommand's name is said here
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise SockbenchError(f"{sub + ': ' if sub else ''}{message} (see --help)", exit_code=2)


def _cmd_serve(args):
    command = command_from_args(args)
    if (args.name is None) == (command is None):
        raise SockbenchError("serve: give a server NAME or --command 'CMD ARGS' (exactly one) (see --help)", exit_code=2)
    if command is not None:
        return _serve_command(command, args)
    registry.set_warning(None)  # a broken plugin was reported by the command that started this server
    return run_server(args.name, transport=args.transport, host=args.host, port=args.port, path=args.path,
                      protocol=args.protocol, max_message=args.max_message,
                      backlog=args.backlog, idle_timeout=args.idle_timeout, max_buffered=args.max_buffered,
                      workers=args.workers, tls=tlsargs.config(args, "serve"), burn_us=args.burn_us)


def _tls_column(spec):
    """What ``sockbench servers`` says of a server's TLS: ``yes``, ``no``, or why it is not built here."""
    if not spec.serves_tls:
        return "no"
    ok, why = spec.tls_availability()
    if ok:
        return "yes" if spec.tls == spec.protocols else f"yes ({' '.join(spec.tls)})"
    return "not built" if "TLS" in why else "-"


def _serve_command(command, args):
    """``sockbench serve --command``: start it, print its ready line (the contract's), stop it on SIGTERM or SIGINT.

    A wrapper in the foreground: the ready line names the command's own pid, so
    whatever measures it measures the server, not this process.
    """
    import signal  # deferred with the command wrapper: a registered `serve` never needs it
    import time

    from sockbench.servers.process import ServerProcess

    for flag, value in (("--protocol", args.protocol != "raw"), ("--max-message", args.max_message),
                        ("--backlog", args.backlog), ("--idle-timeout", args.idle_timeout),
                        ("--max-buffered", args.max_buffered), ("--workers", args.workers), ("--tls", args.tls)):
        if value:
            raise SockbenchError(f"{flag} is an option of sockbench's own servers; a --command takes its own",
                                 exit_code=2)
    stop = []
    old = {sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = ServerProcess(command=command, transport=args.transport, host=args.host, port=args.port, path=args.path)
    try:
        server.start()
        print(json.dumps(server.ready), flush=True)
        while not stop and server.alive():
            time.sleep(0.1)
    finally:
        server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if server.stop_note:
        raise SockbenchError(server.stop_note, exit_code=2)
    if not stop:
        err = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
        raise SockbenchError(f"{server.label} exited by itself (status {server.proc.returncode})"
                             + (f": {err[-1][:200]}" if err else ""))
    return 0


def _cmd_servers(args):
    # rich is deferred: `sockbench serve` must start fast and never needs it
    from rich.table import Table

    if args.json:
        rows = []
        for spec in registry.SERVERS.values():
            ok, why = spec.availability()
            tls_ok, tls_why = spec.tls_availability()
            rows.append({"name": spec.name, "available": ok, "reason": None if ok else why, "model": spec.summary,
                         "protocols": list(spec.protocols), "transports": list(spec.transports),
                         "plugin": spec.plugin or None,
                         "tls": {"protocols": list(spec.tls), "available": tls_ok,
                                 "reason": None if tls_ok else tls_why} if spec.serves_tls else None})
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="sockbench servers", box=None, show_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("transports", no_wrap=True)
    table.add_column("tls", no_wrap=True)
    table.add_column("model")
    missing = []
    for spec in registry.SERVERS.values():
        ok, why = spec.availability()
        if not ok:
            missing.append(f"{spec.name}: {why}")
        elif spec.serves_tls and not spec.tls_availability()[0]:
            missing.append(f"{spec.name}: {spec.tls_availability()[1]}")
        table.add_row(spec.name, "[green]available[/]" if ok else f"[red]{why.split(' (', 1)[0]}[/]",
                      " ".join(spec.transports), _tls_column(spec),
                      spec.summary + (f" [dim](plugin: {spec.plugin})[/]" if spec.plugin else ""))
    console = make_console()
    console.print(table)
    # the full reason, with the command that fixes it, on one unwrapped line per server
    for line in missing:
        console.print(line, markup=False, highlight=False)
    return 0


def build_parser():
    p = _Parser(prog="sockbench", description="Honest, reproducible socket echo benchmarks.")
    p.add_argument("--version", action="version", version=f"sockbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("serve", help="run one echo server (prints one JSON ready line)")
    s.add_argument("name", nargs="?", help="a server name (see `sockbench servers`)")
    s.add_argument("--transport", type=arg(check_transport, "--transport"), default="tcp", metavar="|".join(TRANSPORTS),
                   help="tcp (default), tcp6, unix or udp (the servers that have a datagram form; see `sockbench servers`)")
    s.add_argument("--host", default=None, help="address to bind (default 127.0.0.1, ::1 for tcp6; 0.0.0.0 or :: is reachable from the network)")
    s.add_argument("--port", type=arg(parse_port, "--port"), default=0, help="port to bind, 0..65535 (default 0: any free port)")
    s.add_argument("--path", default=None, help="unix: the socket file (default: in a fresh private directory, removed on exit)")
    s.add_argument("--protocol", choices=PROTOCOLS, default="raw", help="wire protocol (default raw: echo bytes as they come)")
    s.add_argument("--max-message", type=arg(parse_size, "--max-message"), default=None, metavar="SIZE", help="largest frame or content accepted (default 16m)")
    s.add_argument("--backlog", type=arg(parse_number, "--backlog", kind=int, positive=True), default=None, metavar="N",
                   help="listen backlog (default: the system maximum, net.core.somaxconn)")
    s.add_argument("--idle-timeout", type=arg(parse_number, "--idle-timeout", positive=True), default=None, metavar="S",
                   help="close a connection that completes no message for S seconds (default off)")
    s.add_argument("--max-buffered", type=arg(parse_size, "--max-buffered"), default=None, metavar="SIZE",
                   help="frame/json: close the connection whose partial message would take all partial messages over SIZE (default off)")
    s.add_argument("--workers", type=arg(parse_number, "--workers", kind=int, positive=True), default=None, metavar="N",
                   help="N server processes on one port (SO_REUSEPORT; unix: one shared socket), each pinned to one CPU "
                        "of this process's affinity; the ready line lists their \"pids\" (default: one process, no \"pids\")")
    # a test option (sockbench ab's tests): burn a fixed extra CPU time per message; asyncio-protocol and uvloop only
    s.add_argument("--burn-us", type=arg(parse_number, "--burn-us", positive=True), default=None, help=argparse.SUPPRESS)
    add_command_arguments(s)
    tlsargs.add_arguments(s, "serve")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("servers", help="list every server and whether it is available here")
    s.add_argument("--json", action="store_true", help="print the list as JSON (name, available, reason, model, protocols, transports, tls)")
    s.set_defaults(func=_cmd_servers)

    s = sub.add_parser("load", help="load one server (NAME or --target HOST:PORT); print a summary, write the result JSON")
    load_cmd.add_arguments(s)
    s.set_defaults(func=load_cmd.run_cli)

    s = sub.add_parser("check", help="the conformance checks against any echo server: a NAME, --command or HOST:PORT")
    check_cmd.add_arguments(s)
    s.set_defaults(func=check_cmd.run_cli)

    s = sub.add_parser("cluster-worker", help="a Dask worker tuned for a load host (for load --cluster)")
    cluster_cmd.add_arguments(s)
    s.set_defaults(func=cluster_cmd.run_cli)

    s = sub.add_parser("run", help="the main job: run the benchmark suite, write results/<UTC time>/ with a report")
    run_cmd.add_run_arguments(s)
    s.set_defaults(func=run_cmd.run_cli)

    s = sub.add_parser("report", help="(re)build report.md, report.html and the plots of a results folder")
    run_cmd.add_report_arguments(s)
    s.set_defaults(func=run_cmd.report_cli)

    s = sub.add_parser("compare", help="compare two results folders: ratios and significance per (server, workload)")
    run_cmd.add_compare_arguments(s)
    s.set_defaults(func=run_cmd.compare_cli)

    s = sub.add_parser("ab", help="two targets side by side, round by round: B/A with its interval and a verdict "
                                   "(slower / faster / same / undecided); exit 1 when B is slower")
    ab_cmd.add_arguments(s)
    s.set_defaults(func=ab_cmd.run_cli)

    s = sub.add_parser("history", help="chosen cells across results folders, ordered by time: a plot and a table")
    history_cmd.add_arguments(s)
    s.set_defaults(func=history_cmd.run_cli)
    return p


def main(argv=None):
    # the processes this command starts count its ancestors up to here as the run's own, not a shell's or init's
    mark_run_root()
    try:
        with stop_signals():
            args = build_parser().parse_args(argv)
            return args.func(args)
    except SockbenchError as e:
        sys.stdout.flush()
        print(f"sockbench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        sig = signal_of(e)
        print(f"sockbench: interrupted ({sig.name})", file=sys.stderr)
        return 128 + sig
