"""``selectors``: one thread, non-blocking sockets, ``selectors.DefaultSelector``.

Why it is built this way: this is the reactor that asyncio is made of, with
nothing on top, so the difference between this row and the asyncio rows is
the cost of asyncio's abstractions.  The parts are those of CPython's
``asyncio/selector_events.py`` without the event loop: each registered socket
carries a handler whose ``read_ready()``/``write_ready()`` the loop calls.

* ``_Connection`` (as ``_SelectorSocketTransport``) reads with ``recv_into``
  into one shared buffer (``contract.read_buffer``), sends at once and keeps
  only the unsent tail.
* Output pending means ``EVENT_WRITE`` *instead of* ``EVENT_READ``: a client
  that does not read costs at most one ``RECV_SIZE``, and end of file is only
  seen with nothing pending, so a half-close flushes, then closes.
* ``BlockingIOError`` is "not now"; any other ``OSError``, or anything a
  handler raises (one stderr line), closes that connection only.
* ``_Acceptor`` drains the backlog and pauses on EMFILE and kin
  (``contract.AcceptErrors``) instead of spinning; ``_Waker`` is the
  ``signal.set_wakeup_fd`` socketpair; ``_Reactor`` owns the selector, its
  timeout the next timed duty.
* ``--protocol frame|json``: a sans-I/O decoder per connection (``protocols``);
  a malformed message closes it after the answers before it.
  ``--idle-timeout``/``--max-buffered`` (``contract.Limits``) are swept every ``sweep_s``.
* TLS: ``_TlsConnection``, the same reactor over a non-blocking ``ssl`` socket.
* udp (``serve_datagram``, raw only): ``_Datagrams`` reads up to
  ``DATAGRAM_BATCH`` per readiness (a flood cannot starve the stop signal) and
  answers each with ``sendto``; a full send buffer keeps that one datagram and
  waits for ``EVENT_WRITE``; any other error loses that datagram only.
"""

import selectors
import signal
import socket
import time

from sockbench.servers.contract import (
    ACCEPT_PAUSE_S,
    DATAGRAM_BUFFER,
    RECV_SIZE,
    STOP_SIGNALS,
    AcceptErrors,
    log_closing,
    malformed,
    read_buffer,
    set_nodelay,
    unexpected,
)
from sockbench.servers.protocols import make_decoder
from sockbench.servers.stream_echo import send_close_notify
from sockbench.servers.tls import handshake_failure, is_quiet, server_context, timeout_reason

__all__ = ["serve", "serve_datagram"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

#: the ``ssl`` module, once a TLS server loads it (``_load_ssl``)
ssl = None


def _load_ssl():
    global ssl
    import ssl  # deferred: a server without --tls never loads ssl (its peak RSS is part of every result)


class _Connection:
    """One accepted, non-blocking socket: echo what is read, keep only what the kernel did not take."""

    __slots__ = ("_sock", "_peer", "_selector", "_conns", "_rview", "_decoder", "_name", "_limits", "_pending", "_closing")

    def __init__(self, sock, peer, reactor):
        self._sock = sock
        self._peer = peer
        self._selector = reactor.selector
        self._conns = reactor.conns
        self._rview = reactor.rview  # the read buffer every connection shares
        self._decoder = make_decoder(reactor.protocol, reactor.max_message)  # None for raw echo
        self._name = reactor.name
        self._limits = reactor.limits  # None unless --idle-timeout or --max-buffered
        self._pending = None  # memoryview of the unsent tail, or None
        self._closing = False  # close once ``_pending`` is flushed (after a malformed message)
        if self._limits is not None:
            self._limits.opened(self)

    def read_ready(self):
        try:
            n = self._sock.recv_into(self._rview)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ConnectionResetError and every other error: this connection only
            self.close()
            return
        if not n:
            self._eof_received()
            return
        data = self._rview[:n]
        if self._decoder is not None:
            data = self._answers(data)
            if not data:
                if self._closing:
                    self.close()
                return
        elif self._limits is not None:
            self._limits.progress(self)
        self._write(data)

    def write_ready(self):
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # BrokenPipeError, ConnectionResetError, ...: this connection only
            self.close()
            return
        rest = self._pending[sent:]
        if rest:
            self._pending = rest
        elif self._closing:
            self.close()
        else:
            self._pending = None
            self._selector.modify(self._sock, EVENT_READ, self)  # flushed: read again

    def _write(self, data):
        """Try to send now; if the kernel takes less, keep the tail and wait for writability."""
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._pending = memoryview(bytes(data[sent:]))  # a copy: the read buffer is reused
            self._selector.modify(self._sock, EVENT_WRITE, self)  # reading pauses until it is flushed
        elif self._closing:
            self.close()

    def _answers(self, data):
        """Feed ``data`` to the decoder and return its answers; a malformed message marks the connection closing."""
        decoder = self._decoder
        out = decoder.feed(data)
        if decoder.error:
            log_closing(self._name, self._peer, malformed(decoder.error))
            self._closing = True
        elif self._limits is not None:
            limits = self._limits
            if out:
                limits.progress(self)
            if limits.max_buffered and not limits.hold(self, decoder.buffered):
                log_closing(self._name, self._peer, limits.buffered_reason)
                self._closing = True  # the answers before it still go out
        return out

    def _eof_received(self):
        # Reading pauses while output is pending, so nothing is pending here: the half-close is complete.
        decoder = self._decoder
        if decoder is not None and decoder.eof():
            log_closing(self._name, self._peer, malformed(decoder.error))
        self.close()

    def close_for(self, reason):
        """Close with one line saying why (an idle timeout); a closing connection said why already."""
        if not self._closing:
            log_closing(self._name, self._peer, reason)
        self.close()

    def fail(self, exc):
        """The connection's exception boundary: one line, close it, the server goes on."""
        self.close_for(unexpected(exc))

    def close(self):
        self._conns.discard(self)
        if self._limits is not None:
            self._limits.forget(self)
        try:
            self._selector.unregister(self._sock)
        except (KeyError, ValueError):
            pass
        self._sock.close()


class _TlsConnection(_Connection):
    """``_Connection`` over TLS: a non-blocking ``ssl`` socket, whose every call may want the other direction.

    As CPython's ``ssl`` docs describe for non-blocking sockets: the
    handshake is driven by ``do_handshake()`` from the selector,
    ``SSLWantReadError``/``SSLWantWriteError`` say which readiness to wait for
    (a write may want a read, and a read a write), a write that could not
    complete is retried with the same bytes, and records the ``ssl`` object
    already holds (``pending()``) are read without waiting for the selector,
    which cannot see them.  A handshake not complete within the timeout is
    closed by the reactor (``_Reactor.handshakes``).  close_notify ends it.
    """

    __slots__ = ("_handshaking",)

    def __init__(self, sock, peer, reactor):
        super().__init__(sock, peer, reactor)
        self._handshaking = True

    def _handshake(self):
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(self._sock, EVENT_READ, self)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(self._sock, EVENT_WRITE, self)
            return
        except OSError as e:
            if not is_quiet(e):
                log_closing(self._name, self._peer, handshake_failure(e))
            self.close()
            return
        self._handshaking = False
        self._conns.handshake_done(self)
        self._selector.modify(self._sock, EVENT_READ, self)

    def read_ready(self):
        if self._handshaking:
            self._handshake()
            return
        if self._pending is not None:  # a write that wanted to read first
            self.write_ready()
            return
        sock = self._sock
        while True:
            try:
                n = sock.recv_into(self._rview)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:  # a post-handshake message to answer first
                self._selector.modify(sock, EVENT_WRITE, self)
                return
            except OSError:
                self.close()
                return
            if not n:
                self._eof_received()  # close_notify (or the peer's end of file)
                return
            data = self._rview[:n]
            if self._decoder is not None:
                data = self._answers(data)
                if not data:
                    if self._closing:
                        self.close()
                        return
                    if sock.pending():
                        continue
                    return
            elif self._limits is not None:
                self._limits.progress(self)
            self._write(data)
            if self._pending is not None or self._sock.fileno() < 0 or not sock.pending():
                return

    def write_ready(self):
        if self._handshaking:
            self._handshake()
            return
        sock = self._sock
        if self._pending is None:  # a read that wanted to write first
            self._selector.modify(sock, EVENT_READ, self)
            self.read_ready()
            return
        try:
            sent = sock.send(self._pending)
        except ssl.SSLWantWriteError:
            return
        except ssl.SSLWantReadError:
            self._selector.modify(sock, EVENT_READ, self)
            return
        except OSError:
            self.close()
            return
        rest = self._pending[sent:]
        if rest:
            self._pending = rest
        elif self._closing:
            self.close()
        else:
            self._pending = None
            self._selector.modify(sock, EVENT_READ, self)
            if sock.pending():
                self.read_ready()

    def _write(self, data):
        """Try to send now; an ``ssl`` write that cannot complete is retried later with the same bytes."""
        want = EVENT_WRITE
        try:
            sent = self._sock.send(data)
        except ssl.SSLWantWriteError:
            sent = 0
        except ssl.SSLWantReadError:
            sent, want = 0, EVENT_READ
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._pending = memoryview(bytes(data[sent:]))  # a copy: the read buffer is reused
            self._selector.modify(self._sock, want, self)  # reading pauses until it is flushed
        elif self._closing:
            self.close()

    def close(self):
        if not self._handshaking and self._sock.fileno() >= 0:
            send_close_notify(self._sock)
        self._conns.handshake_done(self)
        super().close()


class _Acceptor:
    """The listening socket: accept every connection that is waiting, or pause when accept() cannot."""

    __slots__ = ("_listener", "_reactor", "_errors")

    def __init__(self, listener, reactor):
        self._listener = listener
        self._reactor = reactor
        self._errors = AcceptErrors(reactor.name)

    def read_ready(self):
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                pause = self._errors.pause_for(e)
                if pause:
                    self._reactor.pause_accepting(pause)  # e.g. EMFILE: the listener would stay readable
                    return
                continue  # that one connection went away before it was taken
            self._reactor.add(sock, peer)

    def fail(self, exc):
        # anything unexpected while taking a connection: pause rather than spin on it
        self._reactor.pause_accepting(self._errors.pause_for(exc) or ACCEPT_PAUSE_S)


class _Waker:
    """The read end of the socketpair that ``signal.set_wakeup_fd`` writes: it only wakes ``select()``."""

    __slots__ = ("_sock",)

    def __init__(self, sock):
        self._sock = sock

    def read_ready(self):
        try:
            self._sock.recv(4096)
        except OSError:
            pass

    def fail(self, exc):
        pass


class _Conns(set):
    """The live connections; over TLS also those still shaking hands, with the time their handshake must end by."""

    def __init__(self):
        super().__init__()
        self.handshakes = {}

    def handshake_done(self, conn):
        self.handshakes.pop(conn, None)


class _Reactor:
    """The selector, the shared read buffer and the live connections: set up, loop until a stop signal, tear down."""

    def __init__(self, listener, options):
        self.protocol = options["protocol"]
        self.max_message = options["max_message"]
        self.name = options["name"]
        self.limits = options.get("limits")
        self.rview = read_buffer(RECV_SIZE)
        self.conns = _Conns()
        self.tls = options.get("tls")
        self.tls_context = None
        if self.tls is not None:
            _load_ssl()
            self.tls_context = server_context(self.tls)
        self.selector = selectors.DefaultSelector()
        self._listener = listener
        self._acceptor = _Acceptor(listener, self)
        self._resume_at = None  # monotonic time at which a paused listener is watched again
        self._sweep_at = None if self.limits is None or not self.limits.idle_timeout else time.monotonic() + self.limits.sweep_s
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # Left installed after teardown: a second signal while the process exits changes nothing.
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        listener.setblocking(False)
        self.selector.register(listener, EVENT_READ, self._acceptor)
        self.selector.register(self._wake_r, EVENT_READ, _Waker(self._wake_r))

    def add(self, sock, peer):
        """Serve a freshly accepted socket: non-blocking, TCP_NODELAY, registered for reading."""
        try:
            sock.setblocking(False)
            set_nodelay(sock)
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:  # e.g. reset before it was set up: that one connection only
            sock.close()
            return
        if self.tls_context is not None:
            conn = _TlsConnection(sock, peer, self)
            self.conns.handshakes[conn] = time.monotonic() + self.tls.handshake_timeout_s
        else:
            conn = _Connection(sock, peer, self)
        self.conns.add(conn)
        self.selector.register(sock, EVENT_READ, conn)

    def pause_accepting(self, seconds):
        """Stop watching the listener for ``seconds``; the connections that arrive meanwhile wait in its queue."""
        if self._resume_at is None:
            self.selector.unregister(self._listener)
        self._resume_at = time.monotonic() + seconds

    def _on_stop_signal(self, signum, frame):
        self._stopping = True

    def _timeout(self):
        """Seconds until the next timed duty (resume accepting, sweep idle connections, a handshake's end), or None."""
        due = [t for t in (self._resume_at, self._sweep_at) if t is not None]
        if self.conns.handshakes:
            due.append(min(self.conns.handshakes.values()))
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _timed_duties(self):
        now = time.monotonic()
        late = [conn for conn, t in self.conns.handshakes.items() if t <= now]
        for conn in late:
            conn.close_for(timeout_reason(self.tls.handshake_timeout_s))
        if self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            self.selector.register(self._listener, EVENT_READ, self._acceptor)
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_at = now + self.limits.sweep_s
            for conn in self.limits.idle():
                conn.close_for(self.limits.idle_reason)

    def run(self):
        select = self.selector.select
        timed = self._sweep_at is not None or self.tls is not None
        while not self._stopping:
            for key, mask in select(self._timeout() if timed or self._resume_at is not None else None):
                handler = key.data
                try:
                    # a connection waits for reading or for writing, never both
                    if mask & EVENT_WRITE:
                        handler.write_ready()
                    else:
                        handler.read_ready()
                except Exception as e:  # the exception boundary: that connection only
                    handler.fail(e)
            if timed or self._resume_at is not None:
                self._timed_duties()

    def close(self):
        for conn in list(self.conns):
            conn.close()
        self.selector.close()
        self._listener.close()
        signal.set_wakeup_fd(self._old_wakeup)
        self._wake_r.close()
        self._wake_w.close()


def serve(listener, announce, options):
    reactor = _Reactor(listener, options)
    try:
        announce()
        reactor.run()
    finally:
        reactor.close()


#: datagrams echoed per readiness of the socket before the selector (and the stop signal) is looked at again
DATAGRAM_BATCH = 64


class _Datagrams:
    """The datagram socket: echo each datagram to its sender; keep one whose echo the kernel did not take."""

    __slots__ = ("_sock", "_selector", "_view", "_pending")

    def __init__(self, sock, selector):
        self._sock = sock
        self._selector = selector
        self._view = read_buffer(DATAGRAM_BUFFER)
        self._pending = None  # (bytes, peer) waiting for EVENT_WRITE

    def read_ready(self):
        sock, view = self._sock, self._view
        for _ in range(DATAGRAM_BATCH):
            try:
                n, peer = sock.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # a pending ICMP error reported here: consumed, go on
            try:
                sock.sendto(view[:n], peer)
            except (BlockingIOError, InterruptedError):
                self._pending = (bytes(view[:n]), peer)
                self._selector.modify(sock, EVENT_WRITE, self)
                return
            except OSError:
                pass  # this datagram could not go back (unreachable sender, ENOBUFS): it alone is lost

    def write_ready(self):
        data, peer = self._pending
        try:
            self._sock.sendto(data, peer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._pending = None
        self._selector.modify(self._sock, EVENT_READ, self)


def serve_datagram(sock, announce, options):
    """Echo datagrams on ``sock`` from a selector loop until a stop signal."""
    selector = selectors.DefaultSelector()
    wake_r, wake_w = socket.socketpair()
    stopping = []
    old_wakeup = None
    try:
        for s in (sock, wake_r, wake_w):
            s.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, frame: stopping.append(signum))
        selector.register(sock, EVENT_READ, _Datagrams(sock, selector))
        selector.register(wake_r, EVENT_READ, _Waker(wake_r))
        announce()
        while not stopping:
            for key, mask in selector.select():
                if mask & EVENT_WRITE:
                    key.data.write_ready()
                else:
                    key.data.read_ready()
    finally:
        selector.close()
        if old_wakeup is not None:
            signal.set_wakeup_fd(old_wakeup)
        wake_r.close()
        wake_w.close()
        sock.close()
