"""Run the checks against one target over one transport: start it when sockbench may, every check in order, stop it.

A target is a registered server (built in or a plugin, optionally under
another interpreter's environment), a ``--command``, or a running
``HOST:PORT`` / ``unix:PATH`` (``Target``).  When sockbench starts the server
(pinned to ``cpus``, through ``ServerProcess`` like every other server), the
checks that read its pid run too; a check after which the server is gone is
a failure that says how it exited, and the server is started again for the
next check, so one crash does not hide what the others would find.  A running
target is probed first: one that refuses connections is a one-line error
(exit 2), not a column of failures.
"""

import socket
import time
from dataclasses import dataclass, field

# the checks register themselves on import: every module of checks is imported here, once
from sockbench.bench.check import datagram, framed, process, stream  # noqa: F401
from sockbench.bench.check.base import CHECKS, FAIL, NA, PASS, Outcome, Subject, run_one
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError, UsageError
from sockbench.servers.process import ServerProcess
from sockbench.servers.tls import client_context

__all__ = ["Target", "CheckRun", "run_checks", "select_checks", "TEST_MAX_MESSAGE"]

#: the message limit a framed server sockbench starts is given, so that "one byte over" is cheap to send
TEST_MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class Target:
    """What to check: a registered ``name`` (``python``: the executable that runs its ``sockbench serve``), a
    ``command`` (``servers.command.Command``), or the ``endpoint`` of a running server."""

    name: str | None = None
    command: object = None
    endpoint: Endpoint | None = None
    python: str | None = None

    @property
    def label(self):
        if self.command is not None:
            return self.command.name
        if self.endpoint is not None:
            return self.endpoint.format()
        return self.name

    def describe(self):
        if self.command is not None:
            return f"{self.command.name} (--command {self.command.text!r})"
        if self.endpoint is not None:
            return f"{self.endpoint.format()} (running; not started by sockbench)"
        return self.name + (f" (under {self.python})" if self.python else "")


@dataclass
class CheckRun:
    """The outcomes of one target over one transport and protocol."""

    target: str
    description: str
    transport: str
    protocol: str
    started: bool
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0
    #: lines about the run itself (a server started again after a check, one that ignored SIGTERM)
    notes: list = field(default_factory=list)

    def count(self, status):
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self):
        return self.count(FAIL)

    def summary(self):
        return (f"{self.count(PASS)} passed, {self.failed} failed, {self.count(NA)} not applicable "
                f"in {self.seconds:.1f} s")

    def to_json(self):
        return {"target": self.target, "description": self.description, "transport": self.transport,
                "protocol": self.protocol, "started_by_sockbench": self.started, "seconds": round(self.seconds, 2),
                "passed": self.count(PASS), "failed": self.failed, "not_applicable": self.count(NA),
                "notes": list(self.notes), "checks": [o.to_json() for o in self.outcomes]}


#: the order the modules' checks run in: the echo itself first, the pid's checks last
_MODULE_ORDER = ("stream", "framed", "datagram", "process")


def select_checks(only=None):
    """The checks to run, in order (those that stop the server last); ``only``: names, each of which must exist."""
    if only:
        unknown = [n for n in only if n not in CHECKS]
        if unknown:
            raise UsageError(f"unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)}")
    rank = {m: i for i, m in enumerate(_MODULE_ORDER)}
    chosen = sorted((c for c in CHECKS.values() if not only or c.name in only),
                    key=lambda c: rank.get(c.fn.__module__.rsplit(".", 1)[-1], len(rank)))
    return [c for c in chosen if not c.stops] + [c for c in chosen if c.stops]


def _probe(endpoint):
    """A one-line ``UsageError`` (exit 2) when nothing answers at a running target's address."""
    s = socket.socket(endpoint.family, endpoint.socktype)
    s.settimeout(3.0)
    try:
        s.connect(endpoint.sockaddr())
        if endpoint.transport == "udp":
            s.send(b"sockbench check")
            if s.recv(64) != b"sockbench check":
                raise UsageError(f"{endpoint} answered a datagram with other bytes: not an echo server")
    except OSError as e:
        why = ("connection refused" if isinstance(e, ConnectionRefusedError) else
               "no socket there" if isinstance(e, FileNotFoundError) else
               "no answer within 3 s" if isinstance(e, TimeoutError) else (e.strerror or str(e)))
        raise UsageError(f"cannot check {endpoint}: {why}; is an echo server listening there?") from None
    finally:
        s.close()


def _start(target, transport, protocol, cpus, max_message, tls=None):
    extra = ("--protocol", protocol, "--max-message", str(max_message)) if protocol != "raw" else ()
    if tls is not None:
        extra += tuple(tls.server_args())
    server = ServerProcess(target.name, transport, cpus=cpus, extra_args=extra if target.command is None else (),
                           command=target.command, python=target.python)
    try:
        return server.start()
    except SockbenchError as e:
        raise UsageError(str(e)) from None  # no server to check: a start that fails is bad input (exit 2)


def _gone_line(server):
    err = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
    return f"the server exited (status {server.proc.returncode}) during this check" + (f": {err[-1][:200]}" if err else "")


def run_checks(target, transport="tcp", protocol="raw", only=None, cpus=None, on_outcome=None, tls=None):
    """Every applicable check against ``target`` over ``transport``; a ``CheckRun``.

    ``on_outcome(outcome)`` is told each check's verdict as it comes.
    ``tls``: a ``servers.tls.TlsConfig`` (its certificate and key made): a
    registered server is started serving it, and every check speaks TLS to
    the target (``Subject.tls``); a ``--command`` serves what its own line
    says.  Raises ``UsageError`` (exit 2) when the target cannot be checked at all.
    """
    checks = select_checks(only)
    t0 = time.monotonic()
    started = target.endpoint is None
    framed_limit = TEST_MAX_MESSAGE if started and target.command is None else 16 * 1024 * 1024
    server = None
    serve_tls = tls if target.command is None else None
    options = {"tls": client_context(tls)} if tls is not None else {}
    if started:
        server = _start(target, transport, protocol, cpus, framed_limit, serve_tls)
        endpoint = server.endpoint
    else:
        endpoint = target.endpoint
        _probe(endpoint)
    run = CheckRun(target.label, target.describe() + (f", over TLS {tls.version}" if tls is not None else ""),
                   endpoint.transport, protocol, started)
    subject = Subject(endpoint, protocol, server, target.label, framed_limit, options)
    try:
        for c in checks:
            outcome = run_one(c, subject)
            if server is not None and not c.stops and not server.alive() and outcome.status != NA:
                line = _gone_line(server)
                outcome = Outcome(c.name, c.title, FAIL, line + (f" ({outcome.detail})" if outcome.detail else ""),
                                  outcome.seconds)
                server.stop()
                server = _start(target, transport, protocol, cpus, framed_limit, serve_tls)
                subject = Subject(server.endpoint, protocol, server, target.label, framed_limit, options)
                run.notes.append(f"started again after {c.name}")
            run.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        if server is not None:
            server.stop()
            if server.stop_note:
                run.notes.append(server.stop_note)
    run.seconds = time.monotonic() - t0
    return run
