"""``blocking``: the classic echo server, made concurrent with one thread per connection.

Why it is built this way: this is the server every socket tutorial starts
from, ``socket() / bind() / listen() / accept()`` and then ``recv()`` /
``sendall()`` on a blocking socket, with a thread per accepted connection so
that one slow client cannot stall the others.  It is the baseline the other
models are measured against.

Properties that matter for the benchmark:

* Memory is bounded by construction: a thread that is blocked in
  ``sendall()`` (its client is not reading) does not read more.  Each thread
  reads with ``recv_into`` into a page-aligned 64 KiB buffer of its own,
  allocated once.
* A half-close is handled for free: ``recv()`` returns ``b""`` only after
  everything before it was echoed, then the connection is closed.
* Stop signals are blocked in the worker threads, so SIGTERM/SIGINT always
  reach the main thread, interrupt its ``accept()`` (the handler raises
  ``StopServing``), and the main thread shuts every connection down.
* Threads get a small stack (256 KiB) so that hundreds of connections do not
  cost hundreds of megabytes of address space.
* With ``--protocol frame|json`` each thread owns a sans-I/O decoder (the
  tutorial's message class, see ``protocols``): recv, feed, sendall the
  answers.  A malformed message ends that thread's connection only.
"""

import signal
import socket
import threading
import time

from sockbench.servers.contract import STOP_SIGNALS, StopServing, read_buffer, set_nodelay
from sockbench.servers.protocols import log_protocol_error, make_decoder

__all__ = ["serve"]

THREAD_STACK = 256 * 1024
#: each thread reads into its own buffer of this size (smaller than the shared
#: ``RECV_SIZE`` of the one-thread servers: there is one buffer per connection)
THREAD_RECV = 64 * 1024
JOIN_BUDGET_S = 1.0


def _echo(conn, peer, workers, options):
    decoder = make_decoder(options["protocol"], options["max_message"])
    view = read_buffer(THREAD_RECV)  # one per thread, reused: no allocation per read
    try:
        while True:
            n = conn.recv_into(view)
            data = view[:n]
            if not n:
                if decoder is not None and decoder.eof():
                    log_protocol_error(options["name"], peer, decoder.error)
                break
            if decoder is not None:
                data = decoder.feed(data)
                if data:
                    conn.sendall(data)
                if decoder.error:
                    log_protocol_error(options["name"], peer, decoder.error)
                    break
                continue
            conn.sendall(data)
    except OSError:
        pass  # reset by the peer, or shut down by the main thread: this connection only
    finally:
        workers.discard(conn)
        conn.close()


class _Workers:
    """The open connections and the threads that serve them, shared with those threads under one lock."""

    def __init__(self, options):
        self._options = options
        self._conns = set()
        self._lock = threading.Lock()
        self._threads = []

    def start(self, conn, peer):
        """Serve ``conn`` on a new thread that never receives the stop signals."""
        with self._lock:
            self._conns.add(conn)
        # The new thread inherits this mask: signals only ever reach the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            t = threading.Thread(target=_echo, args=(conn, peer, self, self._options), daemon=True)
            t.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._threads.append(t)
        if len(self._threads) > 1024:
            self._threads = [t for t in self._threads if t.is_alive()]

    def discard(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def shut_down(self):
        """Wake every thread blocked in recv/sendall, then give them ``JOIN_BUDGET_S`` in all to end."""
        with self._lock:
            live = list(self._conns)
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + JOIN_BUDGET_S
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _raise_stop(signum, frame):
    raise StopServing(signum)


def serve(listener, announce, options):
    threading.stack_size(THREAD_STACK)
    workers = _Workers(options)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    announce()
    try:
        while True:
            conn, peer = listener.accept()
            set_nodelay(conn)
            workers.start(conn, peer)
    except StopServing:
        pass
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        listener.close()
        workers.shut_down()
