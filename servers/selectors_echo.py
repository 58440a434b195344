"""``selectors``: one thread, non-blocking sockets, ``selectors.DefaultSelector``.

Why it is built this way: this is the reactor that asyncio is made of, with
nothing else on top, so the difference between this row and the asyncio rows
is the cost of asyncio's abstractions.

* Read with ``recv_into`` into one page-aligned buffer shared by every
  connection (no allocation per read; see ``common.read_buffer``), try to send at once, and
  copy out only the tail that the kernel did not take (CPython's
  ``selector_events`` also tries to send before it buffers).
* A connection with output pending is registered for ``EVENT_WRITE`` *instead
  of* ``EVENT_READ``: it is not read again until its echo is flushed, so a
  client that does not read cannot make the server buffer without bound (at
  most one ``recv()`` worth, ``RECV_SIZE``, per connection).
* Because reading stops while output is pending, end of file is only ever seen
  when nothing is pending: a half-close therefore flushes, then closes.
* The error ladder around every ``recv``/``send``: ``BlockingIOError`` means
  "not now"; any other ``OSError`` closes that one connection.
* Stop signals wake ``select()`` through ``signal.set_wakeup_fd`` on a
  socketpair that is registered like any other socket.
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
_LISTENER = object()
_WAKEUP = object()


class _Conn:
    __slots__ = ("sock", "peer", "pending", "decoder", "closing")

    def __init__(self, sock, peer, decoder):
        self.sock = sock
        self.peer = peer
        self.pending = None  # memoryview of the unsent tail, or None
        self.decoder = decoder  # None for raw echo
        self.closing = False  # close once ``pending`` is flushed (after a malformed message)


def serve(listener, announce, options):
    sel = selectors.DefaultSelector()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    stopping = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    listener.setblocking(False)
    sel.register(listener, EVENT_READ, _LISTENER)
    sel.register(wake_r, EVENT_READ, _WAKEUP)
    conns = set()
    protocol, max_message, name = options["protocol"], options["max_message"], options["name"]
    rview = read_buffer(RECV_SIZE)

    def close(conn):
        conns.discard(conn)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def accept_all():
        while True:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE or an aborted handshake: keep serving the others
            sock.setblocking(False)
            set_nodelay(sock)
            conn = _Conn(sock, peer, make_decoder(protocol, max_message))
            conns.add(conn)
            sel.register(sock, EVENT_READ, conn)

    def on_read(conn):
        sock = conn.sock
        try:
            n = sock.recv_into(rview)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(conn)
            return
        decoder = conn.decoder
        data = rview[:n]
        if not n:
            if decoder is not None and decoder.eof():
                log_protocol_error(name, conn.peer, decoder.error)
            close(conn)  # nothing is pending when we read: the half-close is complete
            return
        if decoder is not None:
            data = decoder.feed(data)
            if decoder.error:
                log_protocol_error(name, conn.peer, decoder.error)
                conn.closing = True
            if not data:
                if conn.closing:
                    close(conn)
                return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            close(conn)
            return
        if sent < len(data):
            conn.pending = memoryview(bytes(data[sent:]))  # a copy: the read buffer is reused
            sel.modify(sock, EVENT_WRITE, conn)
        elif conn.closing:
            close(conn)

    def on_write(conn):
        try:
            sent = conn.sock.send(conn.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(conn)
            return
        rest = conn.pending[sent:]
        if rest:
            conn.pending = rest
        elif conn.closing:
            close(conn)
        else:
            conn.pending = None
            sel.modify(conn.sock, EVENT_READ, conn)

    announce()
    try:
        while not stopping:
            for key, mask in sel.select():
                data = key.data
                if data is _LISTENER:
                    accept_all()
                elif data is _WAKEUP:
                    try:
                        wake_r.recv(4096)
                    except OSError:
                        pass
                elif mask & EVENT_WRITE:
                    on_write(data)
                else:
                    on_read(data)
    finally:
        for conn in list(conns):
            close(conn)
        sel.close()
        listener.close()
        signal.set_wakeup_fd(old_wakeup)
        wake_r.close()
        wake_w.close()
