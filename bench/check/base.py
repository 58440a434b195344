"""What every check shares: the server under check (``Subject``), a check's verdict (``Outcome``), the table of checks.

A check is one function ``fn(subject) -> str | None`` registered with the
``check`` decorator: it returns what it saw (a short note, or None) when the
server passes, raises ``Failed`` with what it saw when it does not, and raises
``NotApplicable`` when, once running, it finds it cannot say (a kernel that
refuses pidfd_getfd).  What a check applies to is declared, not tested inside
it: ``transports`` (the stream transports, udp, or both), ``protocols`` (raw,
the framed ones), ``needs_pid`` (it reads the server's memory, descriptors or
sockets, so it runs only when sockbench started the server: a running
``HOST:PORT`` has no pid we may trust), ``stops`` (it stops the server: run
last), and ``applies(subject)`` for anything else (an option such as TLS).  A
check that does not apply is reported as "not applicable" with the reason,
never left out in silence.
"""

import time
from dataclasses import dataclass, field

from sockbench.bench.check.client import Failed
from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS

__all__ = ["Subject", "Outcome", "Check", "CHECKS", "check", "Failed", "NotApplicable", "PASS", "FAIL", "NA",
           "STREAM", "FRAMED", "run_one"]

PASS, FAIL, NA = "pass", "fail", "n/a"
STREAM = STREAM_TRANSPORTS
FRAMED = ("frame", "json")


class NotApplicable(Exception):
    """Raised by a check that finds, once running, that it cannot say (the message says why)."""


@dataclass
class Subject:
    """The server under check: where it listens, what it speaks, and its process when sockbench started it.

    ``server`` is the ``ServerProcess`` (None for a running ``HOST:PORT``);
    ``max_message`` the largest message it accepts (the framed checks send
    one byte more); ``options`` anything a later option adds (``tls``).
    """

    endpoint: object  # sockbench.endpoints.Endpoint
    protocol: str = "raw"
    server: object = None
    name: str = ""
    max_message: int = 16 * 1024 * 1024
    options: dict = field(default_factory=dict)

    @property
    def transport(self):
        return self.endpoint.transport

    @property
    def address(self):
        """What ``connect`` takes: ``(host, port)`` or the unix socket's path."""
        e = self.endpoint
        return e.path if e.transport == "unix" else (e.host, e.port)

    @property
    def started(self):
        """True when sockbench started the server (so its pid is known)."""
        return self.server is not None

    @property
    def pid(self):
        return self.server.pid if self.server is not None else None

    @property
    def pids(self):
        return self.server.pids if self.server is not None else []

    def alive(self):
        return self.server is None or self.server.alive()

    @property
    def tls(self):
        """The client ``SSLContext`` the checks speak TLS with (``sockbench check --tls``), or None: in the clear."""
        return self.options.get("tls")


@dataclass(frozen=True)
class Outcome:
    """One check's verdict: ``status`` pass, fail or n/a; ``detail`` what was seen (or why n/a); ``seconds``."""

    name: str
    title: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    def to_json(self):
        return {"name": self.name, "title": self.title, "status": self.status, "detail": self.detail,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class Check:
    """A registered check: its name, a one-line title, what it applies to, and its function."""

    name: str
    title: str
    fn: object
    transports: tuple = TRANSPORTS
    protocols: tuple = ("raw",)
    needs_pid: bool = False
    stops: bool = False
    applies: object = None  # subject -> None, or the reason it does not apply

    def not_applicable(self, subject):
        """Why this check does not apply to ``subject`` (None: it does)."""
        if subject.transport not in self.transports:
            kind = "stream transports" if set(self.transports) <= set(STREAM) else ", ".join(self.transports)
            return f"for {kind}; this is {subject.transport}"
        if subject.protocol not in self.protocols:
            return f"for --protocol {' or '.join(self.protocols)}; this is {subject.protocol}"
        if self.needs_pid and not subject.started:
            return "needs the server's pid: sockbench did not start it (give a NAME or --command)"
        if self.applies is not None:
            return self.applies(subject)
        return None


#: every check, in the order it runs (a check that stops the server runs last)
CHECKS = {}


def check(name, title, transports=TRANSPORTS, protocols=("raw",), needs_pid=False, stops=False, applies=None):
    """Register ``fn`` as a check (see the module docstring)."""

    def register(fn):
        if name in CHECKS:
            raise ValueError(f"check {name!r} is registered twice")
        CHECKS[name] = Check(name, title, fn, tuple(transports), tuple(protocols), needs_pid, stops, applies)
        return fn

    return register


def run_one(c, subject):
    """Run check ``c`` against ``subject``: its ``Outcome`` (an unexpected exception is a failure that names it)."""
    why = c.not_applicable(subject)
    if why:
        return Outcome(c.name, c.title, NA, why)
    t0 = time.monotonic()
    try:
        note = c.fn(subject)
        status, detail = PASS, note or ""
    except NotApplicable as e:
        status, detail = NA, str(e)
    except Failed as e:
        status, detail = FAIL, str(e)
    except (OSError, ValueError) as e:
        status, detail = FAIL, f"{type(e).__name__}: {e}"
    return Outcome(c.name, c.title, status, detail, time.monotonic() - t0)
