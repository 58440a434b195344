"""``selectors``: one thread, non-blocking sockets, ``selectors.DefaultSelector``.

Why it is built this way: this is the reactor that asyncio is made of, with
nothing else on top, so the difference between this row and the asyncio rows
is the cost of asyncio's abstractions.

The parts are those of CPython's ``asyncio/selector_events.py``, without the
event loop: every registered socket carries a handler object as its selector
data, and the loop calls its ``read_ready()`` or ``write_ready()``.

* ``_Connection`` is one accepted socket, in the manner of
  ``_SelectorSocketTransport``.  ``read_ready`` reads with ``recv_into`` into
  one page-aligned buffer shared by every connection (no allocation per read;
  see ``contract.read_buffer``), then tries to send at once and copies out
  only the tail that the kernel did not take.
* A connection with output pending is registered for ``EVENT_WRITE``
  *instead of* ``EVENT_READ``: write interest exists only while output is
  pending, and reading is paused until the echo is flushed, so a client that
  does not read cannot make the server buffer without bound (at most one
  ``recv()`` worth, ``RECV_SIZE``, per connection).
* Because reading stops while output is pending, end of file is only ever
  seen when nothing is pending: a half-close therefore flushes, then closes.
* The error ladder around every ``recv``/``send``: ``BlockingIOError`` means
  "not now", return and wait for the selector; ``ConnectionError`` or any
  other ``OSError`` closes that one connection, and the others go on.
* ``_Acceptor`` drains the listener's backlog; ``_Waker`` is the read end of a
  socketpair that ``signal.set_wakeup_fd`` writes, so a stop signal wakes
  ``select()``.  ``_Reactor`` owns the selector: set up, loop, tear down.
* With ``--protocol frame|json`` each connection owns a sans-I/O decoder (the
  tutorial's message class, see ``protocols``): what is read is fed to it, and
  its answers take the place of the echo.  A malformed message closes that
  connection only, once the answers that came before it are flushed.
"""

import selectors
import signal
import socket

from sockbench.servers.contract import RECV_SIZE, STOP_SIGNALS, read_buffer, set_nodelay
from sockbench.servers.protocols import log_protocol_error, make_decoder

__all__ = ["serve"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class _Connection:
    """One accepted, non-blocking socket: echo what is read, keep only what the kernel did not take."""

    __slots__ = ("_sock", "_peer", "_selector", "_conns", "_rview", "_decoder", "_name", "_pending", "_closing")

    def __init__(self, sock, peer, reactor):
        self._sock = sock
        self._peer = peer
        self._selector = reactor.selector
        self._conns = reactor.conns
        self._rview = reactor.rview  # the read buffer every connection shares
        self._decoder = make_decoder(reactor.protocol, reactor.max_message)  # None for raw echo
        self._name = reactor.name
        self._pending = None  # memoryview of the unsent tail, or None
        self._closing = False  # close once ``_pending`` is flushed (after a malformed message)

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
            log_protocol_error(self._name, self._peer, decoder.error)
            self._closing = True
        return out

    def _eof_received(self):
        # Reading pauses while output is pending, so nothing is pending here: the half-close is complete.
        decoder = self._decoder
        if decoder is not None and decoder.eof():
            log_protocol_error(self._name, self._peer, decoder.error)
        self.close()

    def close(self):
        self._conns.discard(self)
        try:
            self._selector.unregister(self._sock)
        except (KeyError, ValueError):
            pass
        self._sock.close()


class _Acceptor:
    """The listening socket: accept every connection that is waiting."""

    __slots__ = ("_listener", "_reactor")

    def __init__(self, listener, reactor):
        self._listener = listener
        self._reactor = reactor

    def read_ready(self):
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE or an aborted handshake: keep serving the others
            self._reactor.add(sock, peer)


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


class _Reactor:
    """The selector, the shared read buffer and the live connections: set up, loop until a stop signal, tear down."""

    def __init__(self, listener, options):
        self.protocol = options["protocol"]
        self.max_message = options["max_message"]
        self.name = options["name"]
        self.rview = read_buffer(RECV_SIZE)
        self.conns = set()
        self.selector = selectors.DefaultSelector()
        self._listener = listener
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # Left installed after teardown: a second signal while the process exits changes nothing.
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        listener.setblocking(False)
        self.selector.register(listener, EVENT_READ, _Acceptor(listener, self))
        self.selector.register(self._wake_r, EVENT_READ, _Waker(self._wake_r))

    def add(self, sock, peer):
        """Serve a freshly accepted socket: non-blocking, TCP_NODELAY, registered for reading."""
        sock.setblocking(False)
        set_nodelay(sock)
        conn = _Connection(sock, peer, self)
        self.conns.add(conn)
        self.selector.register(sock, EVENT_READ, conn)

    def _on_stop_signal(self, signum, frame):
        self._stopping = True

    def run(self):
        select = self.selector.select
        while not self._stopping:
            for key, mask in select():
                # a connection waits for reading or for writing, never both
                if mask & EVENT_WRITE:
                    key.data.write_ready()
                else:
                    key.data.read_ready()

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
