"""Where a server listens and a client connects: the transports and their addresses, spelled once.

Why it is built this way: a server, the load harness, the conformance suite
and the command line all name one address in four ways (the ready line, a
``--target``, what ``bind()``/``connect()`` take, the text of a log line), and
four transports (``tcp``, ``tcp6``, ``unix``, ``udp``).  An ``Endpoint`` carries
the transport with the address, so the family and socket type follow from it
and no caller guesses them from the shape of a host string, and
``parse_target`` / ``Endpoint.format`` are each other's inverse.

* ``tcp`` and ``udp`` bind 127.0.0.1 unless told otherwise, ``tcp6`` ``::1``;
  ``udp`` takes its family from the host (an IPv6 literal is AF_INET6).
* ``unix`` is a filesystem path (AF_UNIX, SOCK_STREAM).  Linux's
  ``sun_path`` holds 108 bytes with the terminating NUL, so a path is at most
  ``UNIX_PATH_MAX`` (107) bytes, counted as the filesystem encodes it.
* Every error is one ``UsageError`` line that names the option it came from
  and shows what to type instead.
"""

import ipaddress
import os
import socket
from dataclasses import dataclass

from sockbench.errors import UsageError

__all__ = [
    "TRANSPORTS",
    "STREAM_TRANSPORTS",
    "DEFAULT_HOSTS",
    "UNIX_PATH_MAX",
    "Endpoint",
    "parse_target",
    "check_transport",
    "check_unix_path_length",
]

TRANSPORTS = ("tcp", "tcp6", "unix", "udp")
STREAM_TRANSPORTS = ("tcp", "tcp6", "unix")
#: the address a server binds, and a bare-port target means, per transport
DEFAULT_HOSTS = {"tcp": "127.0.0.1", "tcp6": "::1", "udp": "127.0.0.1"}
#: the longest AF_UNIX path in bytes: ``sizeof(sun_path)`` (108) less its NUL
UNIX_PATH_MAX = 107

_EXAMPLES = "HOST:PORT (127.0.0.1:8888), [V6]:PORT ([::1]:8888) or unix:/PATH"


def check_transport(transport, name="--transport"):
    """``transport`` if it is one of ``TRANSPORTS``, else a one-line UsageError."""
    if transport not in TRANSPORTS:
        raise UsageError(f"bad {name} {transport!r}; use one of {', '.join(TRANSPORTS)}")
    return transport


def check_unix_path_length(path, name="--path"):
    """``path`` if it fits in ``sun_path``, else a one-line UsageError that says by how much it does not."""
    n = len(os.fsencode(path))
    if n > UNIX_PATH_MAX:
        raise UsageError(f"{name} {path!r} is {n} bytes; a unix socket path is at most {UNIX_PATH_MAX} bytes "
                         f"(use a shorter directory, such as /tmp)")
    return path


def _is_v6(host):
    return host is not None and ":" in host


def _v6_literal(text, host, name):
    """``host`` (from ``[host]``) if it is an IPv6 literal, scope id allowed; else a one-line UsageError."""
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise UsageError(f"bad {name} {text!r}: {host!r} is not an IPv6 address; use e.g. [::1]:8888") from None
    return host


@dataclass(frozen=True)
class Endpoint:
    """One transport and its address: ``host`` and ``port`` for tcp, tcp6 and udp, ``path`` for unix."""

    transport: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __post_init__(self):
        check_transport(self.transport, "transport")
        if self.transport == "unix":
            if not self.path or self.host is not None or self.port is not None:
                raise UsageError(f"a unix endpoint is a path, not {self.host!r}:{self.port!r}")
        elif self.path is not None:
            raise UsageError(f"a {self.transport} endpoint has a host and port, not a path ({self.path!r})")
        elif self.host is None:
            object.__setattr__(self, "host", DEFAULT_HOSTS[self.transport])
        elif self.transport == "tcp" and _is_v6(self.host):
            object.__setattr__(self, "transport", "tcp6")  # tcp takes its family from an address literal

    @property
    def stream(self):
        """True for the connection transports (tcp, tcp6, unix)."""
        return self.transport in STREAM_TRANSPORTS

    @property
    def family(self):
        if self.transport == "unix":
            return socket.AF_UNIX
        if self.transport == "tcp6" or (self.transport == "udp" and _is_v6(self.host)):
            return socket.AF_INET6
        return socket.AF_INET

    @property
    def socktype(self):
        return socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM

    def sockaddr(self):
        """What ``bind()`` and ``connect()`` take for this endpoint: a path, ``(host, port)`` or ``(host, port, 0, scope)``.

        A host name is resolved here, in this endpoint's family; one that does
        not resolve is a one-line UsageError.
        """
        if self.transport == "unix":
            return self.path
        try:
            infos = socket.getaddrinfo(self.host, self.port or 0, self.family, self.socktype)
        except socket.gaierror as e:
            kind = "an IPv6" if self.family == socket.AF_INET6 else "an IPv4"
            raise UsageError(f"cannot resolve {self.host!r} to {kind} address for {self.transport}: {e.strerror}") from None
        return infos[0][4]

    def with_port(self, port):
        """This endpoint with another port (what the kernel picked for port 0)."""
        return Endpoint(self.transport, self.host, port)

    def format(self):
        """``127.0.0.1:5000``, ``[::1]:5000``, ``unix:/path`` or ``udp:127.0.0.1:5000``: what ``parse_target`` reads back."""
        if self.transport == "unix":
            return f"unix:{self.path}"
        where = f"[{self.host}]:{self.port}" if _is_v6(self.host) else f"{self.host}:{self.port}"
        return f"udp:{where}" if self.transport == "udp" else where

    def __str__(self):
        return self.format()

    def ready_fields(self):
        """The ready line's address keys: ``transport`` and ``path``, or ``transport``, ``host`` and ``port``."""
        if self.transport == "unix":
            return {"transport": "unix", "path": self.path}
        return {"transport": self.transport, "host": self.host, "port": self.port}

    @classmethod
    def from_sockname(cls, transport, sockname):
        """The endpoint a socket of ``transport`` is bound to, from its ``getsockname()``."""
        if transport == "unix":
            return cls("unix", path=sockname if isinstance(sockname, str) else os.fsdecode(sockname))
        return cls(transport, sockname[0], sockname[1])

    @classmethod
    def from_ready(cls, ready):
        """The endpoint a server's ready line announces; a line without ``transport`` is tcp (as before transports)."""
        transport = ready.get("transport") or "tcp"
        if transport == "unix":
            return cls("unix", path=ready["path"])
        return cls(transport, ready["host"], int(ready["port"]))


def parse_target(text, transport=None, name="--target"):
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:/PATH`` (``tcp:``, ``tcp6:``, ``udp:`` prefixes too) -> ``Endpoint``.

    ``transport``, when given, is what the user asked for with ``--transport``:
    a target of another transport is an error, never silently one or the
    other (but ``tcp`` takes its family from the address: ``[::1]:P`` is
    tcp6); ``udp`` reads ``HOST:PORT`` as a datagram address, ``unix`` also
    takes a bare path.  Without it the target says its own transport:
    ``unix:``, a bracketed IPv6 literal (tcp6), otherwise tcp.
    """
    raw = str(text).strip()
    if transport is not None:
        check_transport(transport)
    prefix, sep, rest = raw.partition(":")
    said = None
    if sep and prefix in TRANSPORTS:
        said, raw = prefix, rest
    elif transport == "unix" and raw.startswith("/"):
        said = "unix"
    if said == "unix":
        if transport not in (None, "unix"):
            raise UsageError(f"{name} {text!r} is a unix socket but --transport is {transport}")
        if not raw:
            raise UsageError(f"bad {name} {text!r}; use unix:/PATH")
        return Endpoint("unix", path=check_unix_path_length(raw, name))
    if raw.startswith("["):
        host, closed, after = raw[1:].partition("]")
        if not closed or not after.startswith(":"):
            raise UsageError(f"bad {name} {text!r}; an IPv6 target is [V6]:PORT, such as [::1]:8888")
        host, port = _v6_literal(text, host, name), after[1:]
    else:
        host, _, port = raw.rpartition(":")
        if ":" in host:
            raise UsageError(f"bad {name} {text!r}; an IPv6 address goes in brackets: [{host}]:{port}")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad {name} {text!r}; use {_EXAMPLES}")
    v6 = _is_v6(host)
    chosen = said or transport
    if chosen is None:
        chosen = "tcp6" if v6 else "tcp"
    if chosen == "tcp" and v6:
        chosen = "tcp6"  # tcp takes its family from the address, as `sockbench serve --host ::1` does
    if transport is not None and chosen != transport and not (transport == "tcp" and chosen == "tcp6"):
        raise UsageError(f"{name} {text!r} is {chosen} but --transport is {transport}")
    if chosen == "unix":
        raise UsageError(f"{name} {text!r} is not a unix socket path; use unix:/PATH")
    if chosen == "tcp6" and not v6:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass  # a host name: resolved in AF_INET6 when connecting
        else:
            raise UsageError(f"{name} {text!r} is an IPv4 address but the transport is tcp6; use [V6]:PORT")
    return Endpoint(chosen, host, int(port))
