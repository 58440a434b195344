"""The one registry of echo servers: a name, and how to start it.

The command line (``sockbench serve`` / ``sockbench servers``), the load
harness and the conformance suite all read this table, so a server added here
is served, benchmarked and tested with no other change.

Every server module exposes one function::

    serve(listener: socket.socket, announce: Callable[[], None], options: dict) -> None

``listener`` is already bound and listening.  ``serve`` installs its own
SIGTERM/SIGINT handling, calls ``announce()`` exactly once when it is ready to
accept (that prints the ready line), serves until one of those signals arrives,
closes the listener and every connection, and returns.  ``listener`` is a
TCP (IPv4 or IPv6) or a unix socket: the same code serves them all
(``contract.set_nodelay`` knows where Nagle applies).

A server with a datagram form (``"udp"`` in its ``transports``) also exposes::

    serve_datagram(sock: socket.socket, announce: Callable[[], None], options: dict) -> None

``sock`` is a bound SOCK_DGRAM socket; the stop signals and ``announce`` are
as for ``serve``.
"""

import importlib
import importlib.util
from dataclasses import dataclass, field

from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS
from sockbench.errors import UsageError
from sockbench.servers.protocols import PROTOCOLS as ALL_PROTOCOLS

__all__ = ["ServerSpec", "SERVERS", "ALL_PROTOCOLS", "get", "names", "available_names"]

BUILD_HINT = "pip install -e .  (needs a C compiler and Cython)"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str
    summary: str
    #: modules that must import for the server to run here (e.g. ``uvloop``)
    requires: tuple = field(default=())
    #: set for servers compiled from ext/: the line shown when the build is missing
    build_hint: str = ""
    #: the wire protocols it speaks (``sockbench serve NAME --protocol P``); see servers/protocols.py
    protocols: tuple = ("raw",)
    #: the transports it serves (``sockbench serve NAME --transport T``); see sockbench/endpoints.py
    transports: tuple = STREAM_TRANSPORTS
    #: set for servers whose library is an optional dependency: the ``sockbench[EXTRA]`` that installs it
    extra: str = ""
    #: set for servers that need something of the kernel: ``"module:function"``, a function returning
    #: ``(ok, reason)`` that asks the kernel (``cython-uring``: whether io_uring may be used here)
    kernel_check: str = ""

    def availability(self):
        """Return ``(True, "available")`` or ``(False, reason)``; never raises."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                if self.build_hint:
                    return False, f"not built (build it with: {self.build_hint})"
                if self.extra:
                    return False, f"not installed: pip install 'sockbench[{self.extra}]'"
                return False, f"missing module {mod!r} (pip install {mod.split('.')[0]})"
        if self.kernel_check:
            module, function = self.kernel_check.split(":")
            return getattr(importlib.import_module(module), function)()
        return True, "available"

    def check_transport(self, transport):
        """``transport`` if this server serves it; otherwise a one-line usage error that lists what it serves."""
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}", exit_code=2)
        if transport not in self.transports:
            raise UsageError(f"server {self.name!r} does not serve --transport {transport}; it serves "
                             f"{', '.join(self.transports)}", exit_code=2)
        return transport

    def load(self, transport="tcp"):
        """Import the server module and return its ``serve`` function (``serve_datagram`` for udp)."""
        self.check_transport(transport)
        ok, why = self.availability()
        if not ok:
            raise UsageError(f"server {self.name!r}: {why}", exit_code=2)
        module = importlib.import_module(self.module)
        return module.serve_datagram if transport == "udp" else module.serve


def _spec(name, module, summary, requires=(), build_hint="", protocols=("raw",), transports=STREAM_TRANSPORTS, extra="",
          kernel_check=""):
    return ServerSpec(name, "sockbench.servers." + module, summary, tuple(requires), build_hint, tuple(protocols),
                      tuple(transports), extra, kernel_check)


#: the transports of a server with a datagram form (``serve_datagram``)
WITH_UDP = STREAM_TRANSPORTS + ("udp",)

#: Insertion order is display order: from the simplest model to the fastest.
SERVERS = {
    s.name: s
    for s in (
        _spec("blocking", "blocking_echo", "blocking sockets, one thread per connection", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("socketserver", "socketserver_echo", "socketserver.ThreadingTCPServer + StreamRequestHandler, a thread per connection",
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS),
        _spec("selectors", "selectors_echo", "one thread, non-blocking sockets, selectors.DefaultSelector", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("asyncio-streams", "asyncio_streams_echo", "asyncio.start_server, StreamReader/StreamWriter, await drain()", protocols=ALL_PROTOCOLS),
        _spec("asyncio-protocol", "asyncio_protocol_echo", "asyncio.Protocol with write flow control", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("asyncio-sockets", "asyncio_sockets_echo", "asyncio's loop.sock_accept/sock_recv_into/sock_sendall, a task per connection",
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS),
        _spec("trio", "trio_echo", "trio.serve_listeners, a task per connection in a nursery", requires=("trio",),
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS, extra="trio"),
        _spec("gevent", "gevent_echo", "gevent.server.StreamServer, a greenlet per connection", requires=("gevent",),
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS, extra="gevent"),
        _spec("uvloop", "uvloop_echo", "the asyncio-protocol server on uvloop's loop", requires=("uvloop",), protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("cython-protocol", "cython_protocol_echo", "a Cython cdef-class asyncio.BufferedProtocol on uvloop",
              requires=("sockbench.ext.protocol_echo",), build_hint=BUILD_HINT),
        _spec("cython", "cython_echo", "Cython: level-triggered epoll loop in C, without the GIL",
              requires=("sockbench.ext.epoll_echo", "sockbench.ext.udp_echo"), build_hint=BUILD_HINT, protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("cython-uring", "uring_echo",
              "Cython: io_uring loop in C, without the GIL (multishot accept and receive, provided buffer ring)",
              requires=("sockbench.ext.uring_echo", "sockbench.ext.uringprobe"), build_hint=BUILD_HINT,
              protocols=ALL_PROTOCOLS, kernel_check="sockbench.servers.iouring:availability"),
    )
}


def names():
    return list(SERVERS)


def available_names():
    return [n for n, s in SERVERS.items() if s.availability()[0]]


def get(name):
    """Look a server up by name; an unknown name is a one-line usage error."""
    try:
        return SERVERS[name]
    except KeyError:
        raise UsageError(
            f"unknown server {name!r}; valid names: {', '.join(SERVERS)}", exit_code=2
        ) from None
