"""The read-answer loop of one stream connection, for the servers that block (a thread or a greenlet) on each read.

``blocking``, ``socketserver`` and ``gevent`` serve a connection the same way:
read what has arrived into the connection's own buffer, send the echo (raw)
or the protocol's answers (frame, json), and close with one line on a
malformed message or a limit.  Only how they read and write differs (a socket,
a socketserver file, a gevent socket), so the loop takes those two calls and
runs them as it finds them: nothing is added per read, and the servers
measure what they did before.  The exception boundary stays with each
server, which knows what a failure means there.

Over TLS (``--tls``) the three shake hands the same way too: ``accept_tls``
in the connection's own thread or greenlet (never the accepting one: a peer
that stops halfway holds its own connection only), within the handshake
timeout, one line when it fails; the echo loop then runs on the TLS socket
unchanged, and the connection ends with TLS's own close (``send_close_notify``).

The three also keep the same table of open connections (``Connections``):
each serving thread or greenlet adds its socket and takes it out again, while
another (the accept loop, socketserver's hook, a sweeping greenlet) shuts
idle connections down or, at a stop, all of them; the table remembers which
it shut itself, so that their handlers do not say so a second time.  It sits
beside the loop because it is the loop's other half: ``closed_by_server`` is
what the loop asks at end of file.  One lock guards it, since the threads of
``blocking`` and ``socketserver`` use it at once; for gevent's greenlets (one
thread, nothing yields while it is held) it is never contended.
"""

import socket
import threading

from sockbench.servers.contract import log_closing, malformed
from sockbench.servers.tls import handshake_failure, is_quiet, timeout_reason

__all__ = ["Connections", "echo_blocking", "accept_tls", "send_close_notify"]


def accept_tls(conn, ctx, tls, name, peer):
    """The server side of a TLS handshake on a blocking ``conn``: the TLS socket, or None when it failed.

    The handshake has ``tls.handshake_timeout_s``; a timeout or a failure is
    one line (``servers.tls`` words it), a peer that went away none.  ``conn``
    is taken over either way (``wrap_socket`` detaches it; the TLS socket is
    closed when the handshake fails).  ``ctx`` is the server's ``SSLContext``
    (gevent's, for gevent).
    """
    conn.settimeout(tls.handshake_timeout_s)
    try:
        tsock = ctx.wrap_socket(conn, server_side=True)
    except TimeoutError:
        log_closing(name, peer, timeout_reason(tls.handshake_timeout_s))
        return None
    except OSError as e:
        if not is_quiet(e):
            log_closing(name, peer, handshake_failure(e))
        e.__traceback__ = None
        return None
    tsock.settimeout(None)
    return tsock


def send_close_notify(tsock):
    """End a TLS connection as TLS does: send close_notify, without waiting for the peer's (it may never come)."""
    try:
        tsock.setblocking(False)  # unwrap() would wait for the peer's close_notify; want-read ends it instead
        tsock.unwrap()
    except (OSError, ValueError):
        pass


def echo_blocking(recv_into, send, view, decoder, limits, conn, name, peer, closed_by_server):
    """Serve ``conn`` until end of file, a malformed message or a limit; raises what the I/O raises.

    ``recv_into(view)`` reads into ``view`` (0 at end of file); ``send(data)``
    writes all of ``data``.  ``decoder`` is ``protocols.make_decoder``'s (None:
    the raw echo); ``limits`` is ``contract.Limits`` or None.
    ``closed_by_server(conn)``: the server shut it down itself (and said why),
    so its end of file is not a peer's malformed last message.
    """
    while True:
        n = recv_into(view)
        if not n:
            if decoder is not None and decoder.eof() and not closed_by_server(conn):
                log_closing(name, peer, malformed(decoder.error))
            return
        if decoder is None:
            send(view[:n])
            if limits is not None:
                limits.progress(conn)
            continue
        data = decoder.feed(view[:n])
        if data:
            send(data)
        if decoder.error:
            log_closing(name, peer, malformed(decoder.error))
            return
        if limits is not None:
            if data:
                limits.progress(conn)
            if limits.max_buffered and not limits.hold(conn, decoder.buffered):
                log_closing(name, peer, limits.buffered_reason)
                return


class Connections:
    """The open connections of one server (socket -> peer), with ``contract.Limits`` kept in step.

    ``opened`` when a connection is set up, ``closed`` when its handler ends
    (before the socket is closed); ``close_for`` / ``close_idle`` /
    ``shut_down`` shut connections down from elsewhere, which ends their
    handlers.  ``name`` is the server's, for the log lines; ``limits`` is
    ``contract.Limits`` or None.
    """

    def __init__(self, name, limits):
        self.name = name
        self.limits = limits
        self._open = {}  # socket -> peer
        self._shut = set()  # sockets the server shut down (an idle timeout): their handlers log nothing more
        self._lock = threading.Lock()

    def opened(self, conn, peer):
        with self._lock:
            self._open[conn] = peer
        if self.limits is not None:
            self.limits.opened(conn)

    def replace(self, old, new):
        """``old`` is now ``new`` (a TLS socket that took its descriptor over): shut down and tracked as ``new``."""
        with self._lock:
            peer = self._open.pop(old, None)
            if peer is not None:
                self._open[new] = peer
            if old in self._shut:
                self._shut.discard(old)
                self._shut.add(new)
        if self.limits is not None:
            self.limits.forget(old)
            self.limits.opened(new)

    def closed(self, conn):
        if self.limits is not None:
            self.limits.forget(conn)
        with self._lock:
            self._open.pop(conn, None)
            self._shut.discard(conn)

    def closed_by_server(self, conn):
        return conn in self._shut

    def close_for(self, conn, reason):
        """Shut ``conn`` down (its handler then ends), with one line saying why."""
        with self._lock:
            peer = self._open.get(conn)
            if peer is None:
                return  # its handler ended meanwhile
            self._shut.add(conn)
        log_closing(self.name, peer, reason)
        _shutdown(conn)

    def close_idle(self):
        """Shut down the connections past ``--idle-timeout`` (``limits.idle()``), one line each."""
        limits = self.limits
        for conn in limits.idle():
            self.close_for(conn, limits.idle_reason)

    def shut_down(self):
        """Shut every open connection down: each handler blocked in a read or a send wakes and ends."""
        with self._lock:
            live = list(self._open)
        for conn in live:
            _shutdown(conn)


def _shutdown(conn):
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
