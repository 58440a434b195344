"""``sockbench check TARGET``: the conformance checks against any echo server, as a table, JSON and JUnit XML.

Why it is built this way: the checks are library code (``sockbench.bench.check``)
shared with the conformance suite; this module only turns the command line
into targets, runs them transport by transport and protocol by protocol, and
shows the outcome.  A registered server is checked over every transport it
serves unless ``--transport`` says otherwise; a ``--command`` or a running
address over tcp (or its own transport).  ``--tls`` runs the same checks over
TLS (a registered server started serving it with a self-signed pair made
for the run; a running target spoken to in TLS), over its stream transports.
Exit status: 0 when nothing failed,
1 when a check failed, 2 when the target could not be checked at all (bad
input, a command that does not start, a target that refuses connections).
Stopped (Ctrl-C, SIGTERM), it writes the runs that finished to ``--json`` and
``--junit`` before it exits 130 or 143.
"""

import json
import sys

from sockbench.cli import tlsargs
from sockbench.cli.targets import add_command_arguments, command_from_args
from sockbench.endpoints import TRANSPORTS, parse_target
from sockbench.errors import SockbenchError, UsageError
from sockbench.servers import registry
from sockbench.servers.protocols import PROTOCOLS
from sockbench.units import arg, parse_cpus

__all__ = ["add_arguments", "run_cli", "EXIT_FAILED"]

EXIT_FAILED = 1


def add_arguments(p):
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="a registered server (see `sockbench servers`), or a running one: HOST:PORT, [V6]:PORT, "
                        "unix:/PATH, udp:HOST:PORT")
    add_command_arguments(p)
    p.add_argument("--transport", nargs="+", metavar="T",
                   help=f"the transports to check ({' '.join(TRANSPORTS)}; default: every one a registered server "
                        f"serves; tcp for a --command; a running target's own)")
    p.add_argument("--protocol", nargs="+", default=["raw"], metavar="P",
                   help=f"the wire protocols to check ({' '.join(PROTOCOLS)}; default raw): frame and json add the "
                        f"pipelining, partial-message and malformed-message checks")
    p.add_argument("--python", metavar="PATH",
                   help="run a built-in server under this interpreter (3.11 or newer; its extensions are built once, "
                        "cached)")
    p.add_argument("--only", nargs="+", metavar="CHECK", help="run only these checks (see --list)")
    p.add_argument("--list", action="store_true", help="list the checks and what each applies to, then exit")
    p.add_argument("--server-cpus", type=arg(parse_cpus, "--server-cpus"), default=(0,), metavar="LIST",
                   help="the CPUs a server sockbench starts is pinned to (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the outcome as JSON here (- for stdout)")
    p.add_argument("--junit", metavar="FILE", help="write the outcome as JUnit XML here, for CI")
    tlsargs.add_arguments(p, "check")
    return p


def _list_checks(console):
    # deferred: rich and the checks, only when they are shown
    from rich.table import Table

    from sockbench.bench.check.runner import select_checks

    t = Table(box=None, show_edge=False)
    for col in ("check", "transports", "protocols", "needs", "what it checks"):
        t.add_column(col, no_wrap=col != "what it checks")
    for c in select_checks():
        needs = ", ".join(x for x, on in (("pid", c.needs_pid), ("stops the server", c.stops)) if on)
        t.add_row(c.name, " ".join(c.transports), " ".join(c.protocols), needs, c.title)
    console.print(t)
    return 0


def _targets(args):
    """``(Target, [transports])``: what the command line names, and the transports to check it over."""
    from sockbench.bench.check.runner import Target  # deferred: the checks, imported when a check runs

    command = command_from_args(args)
    if (args.target is None) == (command is None):
        raise UsageError("check: give a TARGET (a server name, HOST:PORT or unix:/PATH) or --command 'CMD ARGS' "
                         "(exactly one)")
    transports = list(dict.fromkeys(args.transport or []))
    for t in transports:
        if t not in TRANSPORTS:
            raise UsageError(f"bad --transport {t!r}; use some of {' '.join(TRANSPORTS)}")
    if command is not None:
        if args.python:
            raise UsageError("--python runs a built-in server under another interpreter; a --command brings its own")
        for t in transports or ["tcp"]:
            command.check_transport(t)
        return Target(command=command), transports or ["tcp"]
    if args.target in registry.SERVERS or ":" not in args.target and not args.target.startswith("/"):
        spec = registry.get(args.target)
        ok, why = spec.availability()
        if not ok:
            raise UsageError(f"server {spec.name!r} cannot run here: {why}")
        for t in transports:
            spec.check_transport(t)
        for p in args.protocol:
            if p not in spec.protocols:
                raise UsageError(f"server {spec.name!r} does not speak --protocol {p}; it speaks "
                                 f"{', '.join(spec.protocols)}")
        python = None
        if args.python:
            if spec.plugin:
                raise UsageError(f"--python runs the built-in servers; {spec.name!r} is a plugin of {spec.plugin}")
            # deferred: building an interpreter's environment is needed by --python only
            from sockbench.servers.environments import prepare

            python = prepare(args.python).python
        return Target(name=spec.name, python=python), transports or list(spec.transports)
    if args.python:
        raise UsageError("--python applies to a server sockbench starts, not to a running HOST:PORT")
    if len(transports) > 1:
        raise UsageError("a running target has one transport; give one --transport, or none")
    endpoint = parse_target(args.target, transports[0] if transports else None, name="TARGET")
    return Target(endpoint=endpoint), [endpoint.transport]


def _tls_transports(target, transports, protocols):
    """The stream transports of ``transports`` (TLS has no udp form); a registered server must serve TLS there."""
    stream = [t for t in transports if t != "udp"]
    if not stream:
        raise UsageError("--tls applies to tcp, tcp6 and unix; give one of them")
    if target.name is not None:
        spec = registry.get(target.name)
        for t in stream:
            for p in protocols:
                spec.check_tls(p, t)
    return stream


_TLS_FOLDERS = []


def _with_certificate(tls, target):
    """``tls`` with a certificate for the server sockbench starts: a self-signed pair made once for this run, in a
    private folder removed at exit (``--cert``/``--key``: the user's)."""
    if tls is None or tls.cert is not None or target.name is None:
        return tls
    # deferred: the certificate maker, needed by a TLS check only
    import atexit
    import shutil
    import tempfile

    from sockbench.servers.tls import ensure_certificate

    if not _TLS_FOLDERS:
        _TLS_FOLDERS.append(tempfile.mkdtemp(prefix="sockbench-check-tls-"))
        atexit.register(shutil.rmtree, _TLS_FOLDERS[0], True)
    return tls.with_files(*ensure_certificate(_TLS_FOLDERS[0]))


def run_cli(args):
    from sockbench.cli.term import console as make_console  # deferred: rich, as every subcommand's console

    to_stdout = args.json == "-"
    console = make_console(stderr=to_stdout)
    if args.list:
        return _list_checks(console)
    for p in args.protocol:
        if p not in PROTOCOLS:
            raise UsageError(f"bad --protocol {p!r}; use some of {' '.join(PROTOCOLS)}")
    # deferred: the checks and their report, imported when a check runs
    from sockbench.bench.check.report import junit_xml, table, to_json
    from sockbench.bench.check.runner import run_checks, select_checks
    from sockbench.jsonfile import check_writable, write_json_atomic

    select_checks(args.only)  # an unknown name is bad input before anything starts
    target, transports = _targets(args)
    tls = tlsargs.config(args, "check")
    if tls is not None:
        transports = _tls_transports(target, transports, args.protocol)
    for path, what in ((args.json, "--json"), (args.junit, "--junit")):
        if path and path != "-":
            check_writable(path, what)
    runs = []
    stopped = None
    try:
        for transport in transports:
            for protocol in args.protocol:
                if protocol != "raw" and transport == "udp":
                    continue  # a datagram is one message: the servers speak raw over udp
                console.print(f"checking {target.describe()} over {transport}"
                              + (f", --protocol {protocol}" if protocol != "raw" else "") + " ...", highlight=False)
                run = run_checks(target, transport, protocol, only=args.only, cpus=args.server_cpus,
                                 tls=_with_certificate(tls, target))
                runs.append(run)
                console.print(table(run))
                for note in run.notes:
                    console.print(f"note: {note}", highlight=False, style="yellow")
    except KeyboardInterrupt as e:
        if not runs:
            raise
        stopped = e  # the runs that finished are written below, then the stop goes on
    if not runs:
        raise UsageError("nothing to check: frame and json do not apply over udp")
    doc = to_json(runs)
    if to_stdout:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif args.json:
        try:
            write_json_atomic(args.json, doc)
        except OSError as e:
            raise SockbenchError(f"cannot write {args.json}: {e.strerror}") from None
    if args.junit:
        try:
            with open(args.junit, "w") as f:
                f.write(junit_xml(runs))
        except OSError as e:
            raise SockbenchError(f"cannot write {args.junit}: {e.strerror}") from None
    if stopped is not None:
        console.print(f"interrupted: the {len(runs)} run{'s' if len(runs) != 1 else ''} that finished "
                      f"{'are' if len(runs) != 1 else 'is'} shown and written", highlight=False)
        raise stopped
    failed = sum(r.failed for r in runs)
    total = sum(len(r.outcomes) for r in runs)
    console.print(f"{'FAILED' if failed else 'passed'}: {failed} of {total} checks failed over "
                  f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({sum(r.seconds for r in runs):.1f} s)",
                  style="bold red" if failed else "bold green", highlight=False)
    return EXIT_FAILED if failed else 0
