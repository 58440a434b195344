"""What every echo server shares: the listening socket, the ready line, the stop signals.

Each server module implements only its own I/O model.  Binding, error
messages and the process contract (one JSON ready line on stdout, exit 0 on
SIGTERM/SIGINT) live here so that every server behaves the same from outside.
"""

import ctypes
import errno
import json
import os
import signal
import socket
import sys

from sockbench.errors import SockbenchError, UsageError
from sockbench.servers import registry
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE

__all__ = [
    "RECV_SIZE",
    "STOP_SIGNALS",
    "read_buffer",
    "listen",
    "set_nodelay",
    "stop_event",
    "run_server",
    "StopServing",
]

#: Bytes asked of one read.  Also the most a connection holds unsent in user
#: space: a server stops reading a connection while its echo is pending.
#: Read with ``recv_into`` into a buffer allocated once, never with
#: ``sock.recv(RECV_SIZE)``: glibc serves a 256 KiB request with mmap, so a
#: fresh bytes object per read costs an mmap, an mremap and a munmap (measured
#: here: the selectors server at 100 connections x 64 B spent 24 µs of system
#: CPU per message that way, against 6 µs with recv_into).
RECV_SIZE = 256 * 1024

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PAGE = 4096


def read_buffer(size=RECV_SIZE):
    """A writable, page-aligned memoryview of ``size`` bytes to ``recv_into``, allocated once.

    Page-aligned because the kernel's copy into a buffer that starts 16 bytes
    past a 32-byte boundary, where malloc puts a large block, costs markedly
    more here (measured: selectors at 100 x 16 KiB, 14.7 against 8.0 µs of
    system CPU per message; the Cython servers align theirs for the same reason).
    """
    raw = bytearray(size + PAGE)
    addr = ctypes.addressof((ctypes.c_char * len(raw)).from_buffer(raw))
    start = -addr % PAGE
    return memoryview(raw)[start : start + size]


class StopServing(BaseException):
    """Raised by a stop-signal handler to unwind a blocking server's main thread."""


def _format_addr(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host="127.0.0.1", port=0, backlog=4096):
    """Return a listening TCP socket, or raise a one-line SockbenchError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SockbenchError(f"cannot resolve host {host!r}: {e.strerror}; pass an address such as 127.0.0.1 or ::1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        where = _format_addr(host, port)
        if e.errno == errno.EADDRINUSE:
            raise SockbenchError(f"address {where} is already in use; stop what holds it or pick another --port (0 picks a free one)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise SockbenchError(f"address {where} is not an address of this machine; use 127.0.0.1, ::1 or a local interface") from None
        if e.errno == errno.EACCES:
            raise SockbenchError(f"no permission to bind {where}; use a port above 1023") from None
        raise SockbenchError(f"cannot listen on {where}: {e.strerror}") from None
    return sock


def set_nodelay(sock):
    """Disable Nagle on an accepted socket: an echo must leave at once."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stop_event(loop):
    """An ``asyncio.Event`` that SIGTERM or SIGINT sets: the asyncio servers serve until it is set."""
    # deferred: the blocking, selectors and cython servers never load asyncio, and their
    # peak RSS (reported with every result) does not carry it
    import asyncio

    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


def _server_and_options(name, protocol="raw", max_message=None):
    """Look ``name`` up and check that it speaks ``protocol``; return its ``serve`` function and ``options``.

    ``options`` holds ``name``, ``protocol`` (raw, frame or json; see
    ``protocols``) and ``max_message`` (the largest message it accepts).
    Raises a one-line ``UsageError`` for an unknown name, a protocol the
    server does not speak, or a server that is not built here.
    """
    spec = registry.get(name)
    if protocol not in spec.protocols:
        raise UsageError(f"server {name!r} does not speak protocol {protocol!r}; it speaks: {', '.join(spec.protocols)}")
    serve = spec.load()
    return serve, {"name": name, "protocol": protocol, "max_message": max_message or DEFAULT_MAX_MESSAGE}


def _announcer(name, listener):
    """``announce()``: print the ready line for ``listener``, once, however often it is called."""
    bound_host, bound_port = listener.getsockname()[:2]
    announced = []

    def announce():
        if announced:
            return
        announced.append(True)
        line = {"event": "ready", "server": name, "host": bound_host, "port": bound_port, "pid": os.getpid()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    return announce


def run_server(name, host="127.0.0.1", port=0, protocol="raw", max_message=None):
    """The ``sockbench serve NAME`` contract: bind, announce, serve, exit 0 on a stop signal."""
    serve, options = _server_and_options(name, protocol, max_message)
    listener = listen(host, port)
    try:
        serve(listener, _announcer(name, listener), options)
    except StopServing:
        pass
    finally:
        listener.close()
    return 0
