"""The command line's targets: ``--command``, ``--name``, ``--ready-port``, ``--ready-timeout`` and ``--python``.

Why it is built this way: ``serve``, ``load``, ``run``, ``check`` (and ``ab``)
name a server the same ways (the design's "Targets" contract): a registered
name, a ``--command`` that sockbench starts, or a running address.  The
options and their checks live here once; ``servers/command.py`` owns what a
command is, ``servers/process.py`` how it is started and stopped.
"""

from sockbench.errors import UsageError
from sockbench.servers.command import AUTO_PORT, Command
from sockbench.units import arg, parse_number

__all__ = ["add_command_arguments", "commands_from_args", "command_from_args"]


def add_command_arguments(p, many=False):
    """``--command`` (repeatable when ``many``), ``--name``, ``--ready-port [PORT]``, ``--ready-timeout S``."""
    action = "append" if many else "store"
    p.add_argument("--command", action=action, metavar="'CMD ARGS'",
                   help="a server in any language, started (and pinned, measured, stopped) by sockbench; {port}, "
                        "{host} and {path} are filled with a free port, the loopback and a private unix socket path; it "
                        "prints the ready line ({\"event\": \"ready\", \"port\": P}) unless --ready-port is given"
                        + ("; repeat it for several" if many else ""))
    p.add_argument("--name", dest="command_name", action=action, metavar="NAME",
                   help="what the --command's rows are called (default: its program's name)"
                        + ("; one per --command, in order" if many else ""))
    p.add_argument("--ready-port", nargs="?", const=AUTO_PORT, default=None, metavar="PORT",
                   help="the --command prints no ready line: it is ready once PORT accepts a connection (no value: the "
                        "{port} or {path} sockbench put in it)")
    p.add_argument("--ready-timeout", type=arg(parse_number, "--ready-timeout", positive=True), default=15.0,
                   metavar="S", help="how long a --command gets to become ready (default 15 s)")


def commands_from_args(args):
    """The ``Command``s the options name (``[]`` when no ``--command``); each problem is one UsageError line."""
    texts = args.command or []
    if isinstance(texts, str):
        texts = [texts]
    names = args.command_name or []
    if isinstance(names, str):
        names = [names]
    if not texts:
        if names or args.ready_port is not None:
            raise UsageError("--name and --ready-port apply to a --command; give --command 'CMD ARGS' too")
        return []
    if len(names) > len(texts):
        raise UsageError(f"{len(names)} --name for {len(texts)} --command; give at most one --name per --command")
    cmds = [Command.parse(t, names[i] if i < len(names) else None, args.ready_port, args.ready_timeout)
            for i, t in enumerate(texts)]
    seen = {}
    for c in cmds:
        if c.name in seen:
            raise UsageError(f"two --command are both named {c.name!r}; tell them apart with --name")
        seen[c.name] = c
    return cmds


def command_from_args(args):
    """The one ``Command`` of a single-target subcommand, or None."""
    cmds = commands_from_args(args)
    return cmds[0] if cmds else None
