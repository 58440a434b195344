"""The ``sockbench`` command line.

Every subcommand is a function ``_cmd_NAME(args) -> int`` registered in
``build_parser()``.  A ``SockbenchError`` (bad input, a port in use, a missing
build...) becomes one line on stderr and a non-zero exit, never a traceback.
"""

import argparse
import sys

from sockbench.errors import SockbenchError
from sockbench.servers.protocols import PROTOCOLS
from sockbench.units import arg, parse_size

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit 2."""

    def error(self, message):
        raise SockbenchError(f"{self.prog}: {message} (see --help)", exit_code=2)


def _cmd_serve(args):
    from sockbench.servers.contract import run_server

    return run_server(args.name, host=args.host, port=args.port, protocol=args.protocol, max_message=args.max_message)


def _cmd_servers(args):
    from rich.console import Console
    from rich.table import Table

    from sockbench.servers import registry

    table = Table(title="sockbench servers", box=None, show_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("model")
    missing = []
    for spec in registry.SERVERS.values():
        ok, why = spec.availability()
        if not ok:
            missing.append(f"{spec.name}: {why}")
        table.add_row(spec.name, "[green]available[/]" if ok else f"[red]{why.split(' (', 1)[0]}[/]", spec.summary)
    console = Console(width=max(100, Console().width), soft_wrap=True)
    console.print(table)
    # the full reason, with the command that fixes it, on one unwrapped line per server
    for line in missing:
        console.print(line, markup=False, highlight=False)
    return 0


def _cmd_load(args):
    from sockbench.cli.load import run_cli

    return run_cli(args)


def _cmd_run(args):
    from sockbench.cli.run import run_cli

    return run_cli(args)


def _cmd_report(args):
    from sockbench.cli.run import report_cli

    return report_cli(args)


def _cmd_compare(args):
    from sockbench.cli.run import compare_cli

    return compare_cli(args)


def build_parser():
    p = _Parser(prog="sockbench", description="Honest, reproducible socket echo benchmarks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("serve", help="run one echo server (prints one JSON ready line)")
    s.add_argument("name", help="a server name (see `sockbench servers`)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    s.add_argument("--protocol", choices=PROTOCOLS, default="raw", help="wire protocol (default raw: echo bytes as they come)")
    s.add_argument("--max-message", type=arg(parse_size, "--max-message"), default=None, metavar="SIZE", help="largest frame or content accepted (default 16m)")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("servers", help="list every server and whether it is available here")
    s.set_defaults(func=_cmd_servers)

    from sockbench.cli.load import add_arguments as _load_arguments

    s = sub.add_parser("load", help="load one server (NAME or --target HOST:PORT); print a summary, write the result JSON")
    _load_arguments(s)
    s.set_defaults(func=_cmd_load)

    from sockbench.cli import run as _runcmd

    s = sub.add_parser("run", help="the main job: run the benchmark suite, write results/<UTC time>/ with a report")
    _runcmd.add_run_arguments(s)
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("report", help="(re)build report.md, report.html and the plots of a results folder")
    _runcmd.add_report_arguments(s)
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("compare", help="compare two results folders: ratios and significance per (server, workload)")
    _runcmd.add_compare_arguments(s)
    s.set_defaults(func=_cmd_compare)
    return p


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SockbenchError as e:
        sys.stdout.flush()
        print(f"sockbench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sockbench: interrupted", file=sys.stderr)
        return 130
