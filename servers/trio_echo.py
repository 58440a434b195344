"""``trio``: ``trio.serve_listeners`` with a task per connection, structured concurrency.

Why it is built this way: trio is the other widely used async library, and
its documentation serves TCP with ``serve_tcp(handler, port)``: a task per
connection in a nursery, ``await stream.receive_some()`` then ``await
stream.send_all()``.  This server is that, one level down: the contract binds
every server's socket itself, so its socket is wrapped
(``trio.socket.from_stdlib_socket`` in a ``trio.SocketListener``) and served
by ``serve_listeners``, as ``serve_tcp`` would.

* ``send_all`` before the next ``receive_some`` is the flow control: a client
  that does not read holds up its own task, memory stays bounded, and a
  half-close is seen after every earlier byte was echoed.  ``--protocol
  frame|json`` feeds the shared sans-I/O decoder (``protocols``).
* ``SocketStream`` sets ``TCP_NOTSENT_LOWAT`` to 16 KiB, which deadlocks an
  echo whose client writes 4 MiB before reading (a conformance check); each
  stream gets the system default back (``_unset_notsent_lowat``), as the
  other servers have it.
* Each handler is its connection's exception boundary (a reset quietly,
  anything else with one line); it must be, since an exception out of a
  handler cancels the nursery, the whole server.
* Accepting: ``_PacedListener`` lets ``contract.AcceptErrors`` decide (skip, or
  pause ``ACCEPT_PAUSE_S`` with one line) where ``serve_listeners`` would log
  a traceback and retry every 0.1 s.
* SIGTERM/SIGINT: ``trio.open_signal_receiver``; the first cancels the nursery.
* TLS: ``trio.SSLStream`` as trio's docs do, the handshake under
  ``trio.move_on_after``; ``aclose`` sends close_notify.
* ``--idle-timeout``: a task sweeps every ``Limits.sweep_s`` and cancels idle
  connections' scopes, with one line each.
"""

import socket

import trio

from sockbench.servers.contract import (
    STOP_SIGNALS,
    AcceptErrors,
    log_closing,
    malformed,
    set_nodelay,
    unexpected,
)
from sockbench.servers.protocols import make_decoder
from sockbench.servers.tls import handshake_failure, is_quiet, server_context, timeout_reason

__all__ = ["serve"]

#: the most one ``receive_some`` asks for (trio's own default)
CONN_RECV = 64 * 1024


class _PacedListener(trio.abc.Listener):
    """A ``trio.SocketListener`` whose accept pauses on EMFILE and the like, saying so in one line."""

    def __init__(self, inner, name):
        self._inner = inner
        self._errors = AcceptErrors(name)

    async def accept(self):
        while True:
            try:
                return await self._inner.accept()
            except OSError as e:
                pause = self._errors.pause_for(e)
                if pause:
                    await trio.sleep(pause)

    async def aclose(self):
        await self._inner.aclose()


class _Conn:
    """One connection as the limits see it: its peer and the cancel scope that ends it."""

    __slots__ = ("peer", "scope", "closed_by_server", "__weakref__")

    def __init__(self, peer, scope):
        self.peer = peer
        self.scope = scope
        self.closed_by_server = False


async def _echo(stream, conn, options):
    name = options["name"]
    limits = options.get("limits")
    decoder = make_decoder(options["protocol"], options["max_message"])
    receive_some, send_all = stream.receive_some, stream.send_all
    while True:
        data = await receive_some(CONN_RECV)
        if not data:
            if decoder is not None and decoder.eof():
                log_closing(name, conn.peer, malformed(decoder.error))
            return
        if decoder is None:
            await send_all(data)
            if limits is not None:
                limits.progress(conn)
            continue
        data = decoder.feed(data)
        if data:
            await send_all(data)
        if decoder.error:
            log_closing(name, conn.peer, malformed(decoder.error))
            return
        if limits is not None:
            if data:
                limits.progress(conn)
            if limits.max_buffered and not limits.hold(conn, decoder.buffered):
                log_closing(name, conn.peer, limits.buffered_reason)
                return


def _unset_notsent_lowat(sock):
    """Give the connection the system's ``TCP_NOTSENT_LOWAT`` back (0 means: the sysctl's, unlimited by default)."""
    if sock.family != socket.AF_UNIX and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0)


async def _handshake(stream, ctx, tls, name, peer):
    """``trio.SSLStream`` over ``stream`` once its handshake completed in time, or None (one line unless the peer left)."""
    tstream = trio.SSLStream(stream, ctx, server_side=True)
    with trio.move_on_after(tls.handshake_timeout_s) as timer:
        try:
            await tstream.do_handshake()
        except trio.BrokenResourceError as e:
            cause = e.__cause__
            if cause is not None and not is_quiet(cause):
                log_closing(name, peer, handshake_failure(cause))
            e.__traceback__ = None
            return None
    if timer.cancelled_caught:
        log_closing(name, peer, timeout_reason(tls.handshake_timeout_s))
        return None
    return tstream


async def _sweep(limits, name):
    while True:
        await trio.sleep(limits.sweep_s)
        for conn in limits.idle():
            conn.closed_by_server = True
            log_closing(name, conn.peer, limits.idle_reason)
            conn.scope.cancel()


async def _main(listener, announce, options):
    name = options["name"]
    limits = options.get("limits")

    tls = options.get("tls")
    ctx = server_context(tls) if tls is not None else None

    async def handler(stream):
        # serve_listeners closes the stream when this returns
        with trio.CancelScope() as scope:
            conn = None
            try:
                set_nodelay(stream.socket)
                _unset_notsent_lowat(stream.socket)
                conn = _Conn(stream.socket.getpeername(), scope)
                if limits is not None:
                    limits.opened(conn)
                if ctx is not None:
                    stream = await _handshake(stream, ctx, tls, name, conn.peer)
                    if stream is None:
                        return
                await _echo(stream, conn, options)
                if ctx is not None:
                    await stream.aclose()  # close_notify, without waiting for the peer's
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                e.__traceback__ = None  # reset by the peer: this connection only, quietly
            except Exception as e:  # the exception boundary: this connection only, one line
                if conn is None or not conn.closed_by_server:
                    log_closing(name, conn.peer if conn else None, unexpected(e))
                e.__traceback__ = None
            finally:
                if limits is not None and conn is not None:
                    limits.forget(conn)

    sock = trio.socket.from_stdlib_socket(listener)
    listeners = [_PacedListener(trio.SocketListener(sock), name)]
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            if limits is not None and limits.idle_timeout:
                nursery.start_soon(_sweep, limits, name)
            await nursery.start(trio.serve_listeners, handler, listeners)
            announce()
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def serve(listener, announce, options):
    trio.run(_main, listener, announce, options)
