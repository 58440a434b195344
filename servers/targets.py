"""What a command is pointed at: a registered server, a running one, or a server of another sockbench revision.

Why it is built this way: ``sockbench ab A B`` (and, in the design's words,
wherever a server is named) takes a *target*, and every kind of target must
end up as the same two things for the harness: a server it starts, pinned
and measured (a name, in this environment or in one that
``environments.environment`` built for a revision), or an endpoint it only
connects to (``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH``: not started by
sockbench, so no CPU figures).  ``resolve_target`` tells them apart by their
shape (a name never holds a ``:``), checks a name against the registry of
the environment it runs in, and gives each a ``label`` that can name files
and table rows.  ``Target.transports``/``protocols`` say what it serves:
the registry's row for a name; for an endpoint, its own transport and no
known protocol (the caller probes it).
"""

import re
from dataclasses import dataclass

from sockbench.endpoints import parse_target
from sockbench.servers.environments import Environment, current

__all__ = ["Target", "resolve_target", "slug"]


def slug(text):
    """``text`` as a file name may hold it: every run of other characters than ``A-Za-z0-9._@+=`` is one ``-``."""
    return re.sub(r"[^A-Za-z0-9._@+=]+", "-", text).strip("-") or "target"


@dataclass(frozen=True)
class Target:
    """One target: ``kind`` ``name`` (a server sockbench starts, from ``environment``) or ``endpoint`` (running)."""

    text: str
    kind: str
    name: str | None = None
    endpoint: object = None
    environment: Environment | None = None

    @property
    def started(self):
        """True when sockbench starts (and pins, and measures the CPU of) this target's server."""
        return self.kind == "name"

    @property
    def label(self):
        """How tables and file names call it: ``uvloop``, ``uvloop@main@1a2b3c4d``, ``127.0.0.1-7000``."""
        if self.kind == "endpoint":
            return slug(self.endpoint.format())
        env = self.environment
        return slug(self.name if env is None or env.own else f"{self.name}@{env.label}")

    def row(self):
        """The registry row of a named target (``Environment.server``); None for an endpoint."""
        return (self.environment or current()).server(self.name) if self.kind == "name" else None

    @property
    def transports(self):
        return tuple(self.row()["transports"]) if self.kind == "name" else (self.endpoint.transport,)

    @property
    def protocols(self):
        """The protocols it speaks; None when unknown (an endpoint: probe it)."""
        return tuple(self.row()["protocols"]) if self.kind == "name" else None

    def describe(self):
        if self.kind == "endpoint":
            return f"{self.endpoint.format()} (running; no CPU figures)"
        env = self.environment
        return self.name if env is None or env.own else f"{self.name} of sockbench {env.label}"


def resolve_target(text, environment=None):
    """The ``Target`` that ``text`` names; a name is checked against ``environment``'s registry (default: this
    one), an address is parsed (``endpoints.parse_target``); one-line errors, exit 2."""
    text = str(text).strip()
    if ":" in text or text.startswith("/"):
        return Target(text, "endpoint", endpoint=parse_target(text, name="target"))
    target = Target(text, "name", name=text, environment=environment)
    target.row()  # an unknown name, or one that cannot run there, is its one-line error now
    return target
