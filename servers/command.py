"""A server in any language, started by sockbench: ``--command 'CMD ARGS'`` and how it says it is ready.

Why it is built this way: a Rust, Go or C echo server cannot be imported into
the registry, but it can be started, pinned, measured and stopped like one, if
sockbench knows two things: where it listens and when it is ready.  A
``Command`` is the command line as a template, split like a shell would
(``shlex``, no shell runs: ``sh -c '...'`` where one is wanted), with three
placeholders that sockbench fills before each start, so that every round of a
run gets a fresh address and a command needs no port of its own:

* ``{port}``: a free port on the transport's loopback (tcp, tcp6, udp);
* ``{host}``: that loopback address (127.0.0.1, or ::1 for tcp6);
* ``{path}``: a unix socket's path in a fresh private directory (removed after).

Readiness is one of two rules.  By default the server prints the serve
contract's ready line on stdout, ``{"event": "ready", "port": P, ...}``
(``path`` for unix; ``host``, ``pid``, ``server`` and ``transport`` may be left
out: they default to the address asked for, the started process and this
command's name).  With ``ready_port`` the server prints nothing of the kind and
is ready once its address accepts a connection (udp: once a datagram comes
back); ``ready_port`` is the port to try, or ``AUTO_PORT``: the ``{port}`` (or
``{path}``) sockbench put in the command.

``name`` is what its rows are called in a report: ``--name``, else the
program's base name (``socat``), made of the characters a results file name
and a cell id can carry.
"""

import os
import re
import shlex
import socket
import string
from dataclasses import dataclass

from sockbench.endpoints import DEFAULT_HOSTS, TRANSPORTS
from sockbench.errors import UsageError

__all__ = ["Command", "AUTO_PORT", "PLACEHOLDERS", "check_name", "free_port"]

#: ``ready_port``'s value for "the address sockbench chose for the command" (``--ready-port`` without a value)
AUTO_PORT = "auto"
PLACEHOLDERS = ("port", "host", "path")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def check_name(name, what="--name"):
    """``name`` if a report row, a results file and a cell id can carry it; else a one-line UsageError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"bad {what} {name!r}: use 1-64 letters, digits, '.', '_', '+' or '-', starting with a "
                         f"letter or digit")
    return name


def _fields(template):
    """The placeholder names a template uses; an unknown one (or a stray brace) is a one-line UsageError."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UsageError(f"--command {template!r}: {e} (a literal brace is written {{{{ or }}}})") from None
    unknown = sorted(n for n in names if n not in PLACEHOLDERS)
    if unknown:
        raise UsageError(f"--command {template!r}: unknown placeholder {{{unknown[0]}}}; use "
                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return names


def free_port(transport="tcp", host=None):
    """A port the kernel calls free now on ``transport``'s loopback (the race with another taker is the caller's)."""
    host = DEFAULT_HOSTS.get(transport, "127.0.0.1") if host is None else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Command:
    """A command-line server: ``text`` as typed, its ``name``, and its ready rule (``ready_port``: None, a port, ``AUTO_PORT``)."""

    text: str
    name: str
    ready_port: object = None
    #: how long it gets to become ready (``--ready-timeout``)
    ready_timeout_s: float = 15.0

    @classmethod
    def parse(cls, text, name=None, ready_port=None, ready_timeout_s=15.0):
        """Check a ``--command`` (with its ``--name`` and ``--ready-port``); every problem is one UsageError line."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError("--command is empty; give the server's command line, e.g. --command './echo --port {port}'")
        try:
            argv = shlex.split(text)
        except ValueError as e:
            raise UsageError(f"--command {text!r}: {e}") from None
        for word in argv:
            _fields(word)
        if name is None:
            base = os.path.basename(argv[0])
            name = re.sub(r"[^A-Za-z0-9._+-]", "-", base).strip("-.") or "command"
        check_name(name)
        if ready_port is not None and ready_port != AUTO_PORT:
            try:
                ready_port = int(ready_port)
            except (TypeError, ValueError):
                ready_port = -1
            if not 0 < ready_port < 65536:
                raise UsageError(f"bad --ready-port {ready_port!r}; use a port from 1 to 65535, or no value for the "
                                 f"{{port}} of the command")
        cmd = cls(text, name, ready_port, float(ready_timeout_s))
        if ready_port == AUTO_PORT and not ({"port", "path"} & cmd.placeholders):
            raise UsageError(f"--ready-port without a port needs {{port}} (or {{path}}) in --command {text!r}; or "
                             f"give the port the server listens on: --ready-port PORT")
        return cmd

    @property
    def argv_template(self):
        return shlex.split(self.text)

    @property
    def placeholders(self):
        return set().union(*(_fields(w) for w in self.argv_template))

    def check_transport(self, transport):
        """A transport this command can be started on, else a one-line UsageError (what its placeholders allow)."""
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}")
        used = self.placeholders
        if transport == "unix" and "port" in used:
            raise UsageError(f"--command {self.text!r} takes a {{port}}; over unix it needs {{path}} instead")
        if transport != "unix" and "path" in used:
            raise UsageError(f"--command {self.text!r} takes a {{path}}: a unix socket; use --transport unix")
        if transport == "unix" and isinstance(self.ready_port, int):
            raise UsageError("--ready-port PORT applies to tcp, tcp6 and udp; over unix give {path} in --command "
                             "and --ready-port without a value")
        return transport

    def argv(self, values):
        """The command line with ``values`` (``{"port": ..., "host": ..., "path": ...}``) put in."""
        return [w.format(**values) for w in self.argv_template]

    def ready_address(self, values):
        """Where the ready rule connects: ``(host, port)`` or a path; None when the server prints its ready line."""
        if self.ready_port is None:
            return None
        if self.ready_port == AUTO_PORT:
            return values["path"] if "path" in self.placeholders else (values["host"], values["port"])
        return values["host"], self.ready_port

    def describe(self):
        ready = {None: "prints the ready line", AUTO_PORT: "ready when {port} accepts"}.get(
            self.ready_port, f"ready when port {self.ready_port} accepts")
        return f"{self.name}: {self.text} ({ready})"

    def to_json(self):
        return {"name": self.name, "command": self.text, "ready_port": self.ready_port,
                "ready_timeout_s": self.ready_timeout_s}

    @classmethod
    def from_json(cls, d):
        return cls.parse(d["command"], d.get("name"), d.get("ready_port"), d.get("ready_timeout_s") or 15.0)
