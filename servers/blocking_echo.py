"""``blocking``: the classic echo server, made concurrent with one thread per connection.

Why it is built this way: this is the server every socket tutorial starts
from (``accept()``, then ``recv()``/``sendall()`` on a blocking socket), with
a thread per connection so that one slow client cannot hold up the others.
It is the baseline the other models are measured against.

* Memory is bounded by construction: a thread blocked in ``sendall()`` does
  not read more; each reads into a 64 KiB buffer of its own, mapped alone
  (``contract.read_buffer``) so that it goes back to the kernel when its
  thread ends (a malloc'd one stays resident: glibc returns heap memory only
  from a heap's top).  Stacks are ``THREAD_STACK`` (256 KiB of address space,
  a few KiB resident).
* A half-close is free: ``recv()`` returns ``b""`` only after everything
  before it was echoed.
* Stop signals are blocked in the workers, so SIGTERM/SIGINT reach the main
  thread's ``accept()`` (``StopServing``), which shuts every connection down.
  A signal that lands just before the main thread enters ``accept()`` (or
  ``recvfrom_into()``) runs its C handler there, and the call then blocks
  with the Python handler still pending: so the main thread's socket has a
  kernel receive timeout of ``STOP_POLL_S`` (``SO_RCVTIMEO``), after which
  the call returns EAGAIN and the handler runs.  Still one system call per
  accept or datagram, as in the tutorial; a poll on a wakeup fd would add
  one.  Accepted sockets inherit the timeout, so each is cleared.
* Each thread is its connection's exception boundary: an ``OSError`` ends it
  quietly, anything else with one stderr line; a malformed ``frame``/``json``
  message (a sans-I/O decoder per thread, ``protocols``) ends only it.
* ``accept()`` out of descriptors pauses for ``contract.ACCEPT_PAUSE_S`` with
  one line.  ``--idle-timeout``/``--max-buffered``: the main thread accepts
  with a ``sweep_s`` timeout and shuts idle connections down between accepts.
* Over TLS each thread does its own handshake (``stream_echo.accept_tls``), so
  a peer stuck halfway holds only its own thread.
* udp (``serve_datagram``, raw only): the tutorial's one-thread
  ``recvfrom_into``/``sendto`` loop; there is no connection to hand to a
  thread, and a failed ``sendto`` loses that datagram only.
"""

import contextlib
import signal
import socket
import struct
import threading
import time

from sockbench.servers.contract import (
    DATAGRAM_BUFFER,
    STOP_POLL_S,
    STOP_SIGNALS,
    AcceptErrors,
    StopServing,
    log_closing,
    read_buffer,
    set_nodelay,
    unexpected,
)
from sockbench.servers.protocols import make_decoder
from sockbench.servers.stream_echo import Connections, accept_tls, echo_blocking, send_close_notify
from sockbench.servers.tls import server_context

__all__ = ["serve", "serve_datagram"]

THREAD_STACK = 256 * 1024
#: each thread reads into its own buffer of this size (smaller than the shared
#: ``RECV_SIZE`` of the one-thread servers: there is one buffer per connection)
THREAD_RECV = 64 * 1024
JOIN_BUDGET_S = 1.0


def _echo(conn, peer, workers, options):
    decoder = make_decoder(options["protocol"], options["max_message"])
    view = read_buffer(THREAD_RECV)  # one per thread, reused: no allocation per read
    try:
        if workers.tls_context is not None:
            tsock = accept_tls(conn, workers.tls_context, options["tls"], workers.name, peer)
            if tsock is None:
                return
            workers.replace(conn, tsock)
            conn = tsock
        echo_blocking(conn.recv_into, conn.sendall, view, decoder, workers.limits, conn, workers.name, peer,
                      workers.closed_by_server)
        if workers.tls_context is not None:
            send_close_notify(conn)
    except OSError:
        pass  # reset by the peer, or shut down by the main thread: this connection only
    except Exception as e:  # the exception boundary: this connection only, one line
        log_closing(workers.name, peer, unexpected(e))
    finally:
        workers.closed(conn)
        conn.close()


class _Workers(Connections):
    """The open connections and the threads that serve them; the table is shared with those threads."""

    def __init__(self, options):
        super().__init__(options["name"], options.get("limits"))
        self._options = options
        self.tls_context = server_context(options["tls"]) if options.get("tls") is not None else None
        self._threads = []

    def start(self, conn, peer):
        """Serve ``conn`` on a new thread that never receives the stop signals."""
        self.opened(conn, peer)
        # The new thread inherits this mask: signals only ever reach the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            t = threading.Thread(target=_echo, args=(conn, peer, self, self._options), daemon=True)
            t.start()
        except BaseException:
            self.closed(conn)
            conn.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._threads.append(t)
        if len(self._threads) > 1024:
            self._threads = [t for t in self._threads if t.is_alive()]

    def shut_down(self):
        """Wake every thread blocked in recv/sendall, then give them ``JOIN_BUDGET_S`` in all to end."""
        super().shut_down()
        deadline = time.monotonic() + JOIN_BUDGET_S
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _raise_stop(signum, frame):
    raise StopServing(signum)


@contextlib.contextmanager
def _until_stopped():
    """SIGTERM/SIGINT raise ``StopServing`` in the main thread inside; it ends the block, and they are ignored after.

    Ignored, so that a second signal cannot cut short the shutdown that follows the block.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    try:
        yield
    except StopServing:
        pass
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _timeval(seconds):
    whole = int(seconds)
    return struct.pack("ll", whole, int(round((seconds - whole) * 1e6)))


#: ``SO_RCVTIMEO``'s "no timeout", made once: it is set on every accepted socket
_NO_TIMEOUT = _timeval(0)


def _receive_timeout(sock, seconds):
    """Set ``sock``'s kernel receive timeout (``SO_RCVTIMEO``): a blocking accept() or receive then returns EAGAIN
    after ``seconds`` with nothing, while the socket stays blocking for Python."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))


def _accept_loop(listener, workers, options):
    """Accept until a stop signal; pause on EMFILE and the like; close idle connections between accepts."""
    errors = AcceptErrors(options["name"])
    limits = options.get("limits")
    sweep_s = limits.sweep_s if limits is not None else None
    _receive_timeout(listener, min(sweep_s, STOP_POLL_S) if sweep_s else STOP_POLL_S)
    if sweep_s:
        next_sweep = time.monotonic() + sweep_s
    while True:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            pass  # the receive timeout: a stop signal is seen now, the idle sweep below runs when due
        except OSError as e:
            pause = errors.pause_for(e)
            if pause:
                time.sleep(pause)  # a stop signal interrupts it with StopServing
        else:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)  # inherited from the listener
                set_nodelay(conn)
                workers.start(conn, peer)
            except OSError as e:  # reset before it was set up, or no thread could start: that one only
                conn.close()
                pause = errors.pause_for(e)
                if pause:
                    time.sleep(pause)
            except Exception as e:
                conn.close()
                time.sleep(errors.pause_for(e))
        if sweep_s and time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + sweep_s
            workers.close_idle()


def serve(listener, announce, options):
    threading.stack_size(THREAD_STACK)
    workers = _Workers(options)
    try:
        with _until_stopped():
            announce()
            _accept_loop(listener, workers, options)
    finally:
        listener.close()
        workers.shut_down()


def serve_datagram(sock, announce, options):
    """Echo every datagram back to its sender on the main thread until a stop signal."""
    view = read_buffer(DATAGRAM_BUFFER)
    _receive_timeout(sock, STOP_POLL_S)
    try:
        with _until_stopped():
            announce()
            while True:
                try:
                    n, peer = sock.recvfrom_into(view)
                    sock.sendto(view[:n], peer)
                except OSError:
                    pass  # a pending ICMP error, or this datagram could not go back: that datagram only
    finally:
        sock.close()
