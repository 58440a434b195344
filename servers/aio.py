"""What the servers on an asyncio event loop share: how they accept, report errors, and close idle peers.

``asyncio-streams``, ``asyncio-protocol``, ``uvloop`` and ``cython-protocol``
differ in their protocol and their loop, never in the parts below, so that
their rows differ only in what they are meant to show.

* **Accepting** (``Acceptor``): the listener is watched with ``add_reader``
  and each accepted socket goes to ``loop.connect_accepted_socket`` (the
  loops' public API for sockets accepted outside them), not ``create_server``,
  whose accept paths fail badly out of descriptors: asyncio keeps calling
  ``accept()`` after EMFILE, logging a traceback and arming a retry timer
  each time, and libuv (uvloop) resets the connections waiting in the queue.
  Here ``contract.ACCEPT_PAUSE_S`` pauses accepting with one line (at most one
  a second), queued connections wait and open ones are served.  Accepting in
  Python costs what asyncio's own accept does; on uvloop it replaces libuv's
  C accept, which the connect-mode figures of ``uvloop`` and
  ``cython-protocol`` pay for.  The listener keeps ``contract.listen``'s backlog.
* **TLS** (``--tls``): ``connect_accepted_socket`` takes the server's
  ``ssl`` context and the handshake timeout, so each loop runs its own TLS
  layer (asyncio's ``sslproto``, uvloop's in Cython) as a user of
  ``create_server(ssl=...)`` gets it.  A handshake that fails or times out
  reaches the acceptor as the exception of that connection's setup, which
  words it as every server does (``servers.tls``); the loops themselves keep
  such an ``OSError`` quiet.
* **Errors** (``exception_handler``): the loop's exception handler writes one
  line (``contract.log_closing`` for a transport, which the loop then closes;
  ``contract.log`` otherwise), never a traceback.  With the try blocks of the
  servers' own code, that makes each connection its own exception boundary:
  a protocol callback that raises closes that transport (asyncio and uvloop
  both do) and reaches the handler, never the process.
* **Idle peers** (``IdleSweep``): with ``--idle-timeout``, every
  ``Limits.sweep_s`` the connections without a complete message for that
  long are closed: one line, then their ``transport`` is aborted (or the
  server's own ``close(conn, reason)`` does it).
"""

import asyncio

from sockbench.servers.contract import (
    AcceptErrors,
    log,
    log_closing,
    stop_event,
    unexpected,
)
from sockbench.servers.tls import handshake_failure, is_quiet, server_context, timeout_reason

__all__ = ["Acceptor", "IdleSweep", "exception_handler", "serve_until_stopped"]

#: connections taken per readiness of the listener before other callbacks run (asyncio's own is its backlog, 100)
ACCEPT_BATCH = 100


class Acceptor:
    """Accept on ``listener`` and hand every connection to ``loop.connect_accepted_socket(protocol_factory, sock)``."""

    def __init__(self, loop, listener, protocol_factory, name, tls=None):
        self._loop = loop
        self._listener = listener
        self._fd = listener.fileno()
        self._factory = protocol_factory
        self._name = name
        self._tls = tls  # a servers.tls.TlsConfig, or None
        self._tls_args = {}
        if tls is not None:
            self._tls_args = {"ssl": server_context(tls), "ssl_handshake_timeout": tls.handshake_timeout_s}
        self._errors = AcceptErrors(name)
        self._connecting = {}  # task of connect_accepted_socket -> (socket, peer), until it is done
        self._resume = None  # the TimerHandle that ends a pause
        self._closed = False

    def start(self):
        self._listener.setblocking(False)
        self._loop.add_reader(self._fd, self._accept)

    def _accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except Exception as e:  # OSError (EMFILE, ENFILE, ...) or anything unexpected
                pause = self._errors.pause_for(e)
                if pause:
                    self._pause(pause)
                    return
                continue  # that one connection went away before it was taken
            # the loops make the socket non-blocking themselves
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, sock, **self._tls_args))
            self._connecting[task] = (sock, peer)
            task.add_done_callback(self._connected)

    def _connected(self, task):
        sock, peer = self._connecting.pop(task)
        if task.cancelled():
            sock.close()
            return
        exc = task.exception()
        if exc is not None:  # e.g. reset before its transport was set up: that connection only
            sock.close()
            if self._tls is not None:
                reason = self._tls_failure(exc)
                if reason:
                    log_closing(self._name, peer, reason)
            elif not isinstance(exc, OSError):
                log_closing(self._name, peer, unexpected(exc))

    def _tls_failure(self, exc):
        """The line for a connection whose TLS handshake failed (None: the peer went away)."""
        # both loops abort a handshake past ssl_handshake_timeout with this error and words
        if isinstance(exc, ConnectionAbortedError) and "handshake is taking longer" in str(exc):
            return timeout_reason(self._tls.handshake_timeout_s)
        if isinstance(exc, OSError):
            return None if is_quiet(exc) else handshake_failure(exc)
        return unexpected(exc)

    def _pause(self, seconds):
        """Stop watching the listener for ``seconds``; connections that arrive meanwhile wait in its queue."""
        self._loop.remove_reader(self._fd)
        self._resume = self._loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self):
        self._resume = None
        if not self._closed:
            self._loop.add_reader(self._fd, self._accept)

    def close(self):
        """Stop accepting; connections still being set up are cancelled (and closed)."""
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self._loop.remove_reader(self._fd)
        for task in list(self._connecting):
            task.cancel()


class IdleSweep:
    """With ``--idle-timeout``: every ``limits.sweep_s``, close each connection idle too long.

    A connection is what the server gave ``limits``: an object with a
    ``transport`` (its protocol), closed with one line and ``abort()``; or
    anything, when the server passes ``close(conn, reason)`` to do it.
    """

    def __init__(self, loop, limits, name, close=None):
        self._loop = loop
        self._limits = limits
        self._name = name
        self._close = close or self._abort
        self._handle = None
        if limits is not None and limits.idle_timeout:
            self._handle = loop.call_later(limits.sweep_s, self._sweep)

    def _abort(self, conn, reason):
        transport = conn.transport
        if transport is None:
            return
        if not transport.is_closing():  # a closing one (a malformed message) said why already
            log_closing(self._name, transport.get_extra_info("peername"), reason)
        transport.abort()

    def _sweep(self):
        limits = self._limits
        for conn in limits.idle():
            try:
                self._close(conn, limits.idle_reason)
            except Exception as e:  # one connection's trouble never stops the sweep
                log(self._name, unexpected(e))
        self._handle = self._loop.call_later(limits.sweep_s, self._sweep)

    def cancel(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def exception_handler(name):
    """A loop exception handler that writes one line per report, never a traceback."""

    def handle(loop, context):
        exc = context.get("exception")
        message = context.get("message") or "unexpected error in the event loop"
        reason = unexpected(exc) if exc is not None else message
        transport = context.get("transport")
        if transport is not None:
            try:
                peer = transport.get_extra_info("peername")
            except Exception:
                peer = None
            log_closing(name, peer, reason)  # the loop closes that transport after reporting it
        else:
            log(name, f"{message}: {reason}" if exc is not None else reason)

    return handle


async def serve_until_stopped(listener, announce, options, protocol_factory, shut_down, close_idle=None):
    """Accept with ``protocol_factory`` until SIGTERM/SIGINT, then ``await shut_down()`` (close every connection).

    ``close_idle(conn, reason)``, if given, closes a connection the idle sweep found (see ``IdleSweep``).
    """
    loop = asyncio.get_running_loop()
    name = options["name"]
    loop.set_exception_handler(exception_handler(name))
    stop = stop_event(loop)
    acceptor = Acceptor(loop, listener, protocol_factory, name, options.get("tls"))
    sweep = IdleSweep(loop, options.get("limits"), name, close_idle)
    acceptor.start()
    announce()
    try:
        await stop.wait()
    finally:
        acceptor.close()
        sweep.cancel()
        await shut_down()
