"""``socketserver``: the standard library's ``ThreadingTCPServer`` with a ``StreamRequestHandler``.

Why it is built this way: this is the framework the standard library teaches
(``handle()`` reading ``self.rfile``, writing ``self.wfile``, a thread per
request, ``serve_forever()``), so the row shows what the framework costs over
``blocking``, the same model by hand.

Used as documented: ``bind_and_activate=False`` with the contract's listener
(made non-blocking, so ``--workers`` sharing a Unix listener never block in
``accept``); ``daemon_threads``; ``shutdown()`` from a signal-started thread
(never the serving one, which deadlocks); ``service_actions()`` sweeps
``--idle-timeout``; ``handle()`` uses ``rfile.readinto1`` into a per-thread
``contract.read_buffer`` and ``wfile.write`` (``sendall``: bounded memory, and
a half-close is seen after every earlier byte was echoed), or the sans-I/O
decoder for ``--protocol frame|json``.

Added where the defaults fall short of the contract:

* ``get_request``: ``contract.AcceptErrors`` pauses on EMFILE and kin (the
  framework spins on a listener that stays readable).
* ``handle_error``: one line, not a traceback; each handler is its
  connection's exception boundary.
* ``process_request``: threads start with stop signals blocked, so they reach
  the main thread.
* ``setup``: Nagle off through ``contract.set_nodelay`` (the handler's own
  fails on a Unix socket); over TLS the handshake runs in the handler's thread
  (``stream_echo.accept_tls``), not in ``get_request`` as the ``ssl`` docs do,
  where one peer stuck halfway would block every accept.  ``finish`` sends close_notify.
"""

import signal
import socketserver
import sys
import threading

from sockbench.servers.contract import (
    STOP_POLL_S,
    STOP_SIGNALS,
    AcceptErrors,
    log_closing,
    read_buffer,
    set_nodelay,
    unexpected,
)
from sockbench.servers.protocols import make_decoder
from sockbench.servers.stream_echo import Connections, accept_tls, echo_blocking, send_close_notify
from sockbench.servers.tls import server_context

__all__ = ["serve"]

#: each handler thread reads into its own buffer of this size (as the ``blocking`` server's threads do)
THREAD_RECV = 64 * 1024
THREAD_STACK = 256 * 1024


class EchoHandler(socketserver.StreamRequestHandler):
    """One connection: read what has arrived, write the echo (or the protocol's answers), until EOF."""

    def setup(self):
        set_nodelay(self.request)
        ctx = self.server.tls_context
        if ctx is not None:  # in this handler's thread: a handshake stuck halfway holds this connection only
            tsock = accept_tls(self.request, ctx, self.server.options["tls"], self.server.options["name"],
                               self.client_address)
            if tsock is None:
                raise _HandshakeFailed()  # said already; the framework closes the connection
            self.request = tsock
        super().setup()
        self.server.conns.opened(self.request, self.client_address)

    def handle(self):
        server = self.server
        name = server.options["name"]
        limits = server.limits
        conn = self.request
        decoder = make_decoder(server.options["protocol"], server.options["max_message"])
        view = read_buffer(THREAD_RECV)
        try:
            echo_blocking(self.rfile.readinto1, self.wfile.write, view, decoder, limits, conn, name,
                          self.client_address, server.conns.closed_by_server)
        except OSError:
            pass  # reset by the peer, or shut down by the server: this connection only
        except Exception as e:  # the exception boundary: this connection only, one line
            log_closing(name, self.client_address, unexpected(e))
            e.__traceback__ = None

    def finish(self):
        try:
            super().finish()
            if self.server.tls_context is not None:
                send_close_notify(self.request)
        except OSError:
            pass  # the peer went away before the last flush
        finally:
            self.server.conns.closed(self.request)
            if self.server.tls_context is not None:
                self.request.close()  # the framework closes the plain socket it accepted, which TLS took over


class _HandshakeFailed(ConnectionError):
    """The TLS handshake of a connection failed (and its line was written): the framework drops it quietly."""


class EchoServer(socketserver.ThreadingTCPServer):
    """``ThreadingTCPServer`` on the contract's listener, with the open connections tracked for stopping."""

    daemon_threads = True

    def __init__(self, listener, options):
        super().__init__(listener.getsockname(), EchoHandler, bind_and_activate=False)
        self.socket.close()  # the unbound socket the constructor made: the contract's listener serves instead
        # non-blocking: with --workers on a shared Unix listener, select() wakes every worker for one
        # connection, and a blocking accept() in the others would wait past a stop signal
        listener.setblocking(False)
        self.socket = listener
        self.address_family = listener.family
        self.options = options
        self.limits = options.get("limits")
        self._errors = AcceptErrors(options["name"])
        self.conns = Connections(options["name"], self.limits)  # the handlers add and take out their own
        self.tls_context = server_context(options["tls"]) if options.get("tls") is not None else None
        self.stopping = threading.Event()  # set by a stop signal: cuts an accept pause short

    # --- the framework's hooks -------------------------------------------------------------------

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            pause = self._errors.pause_for(e)
            if pause:
                self.stopping.wait(pause)  # a stop ends the pause at once
            raise  # socketserver drops this one and goes back to select()

    def process_request(self, request, client_address):
        # the new thread inherits this mask: the stop signals only ever reach the main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            super().process_request(request, client_address)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # the connection went away while it was set up
        log_closing(self.options["name"], client_address, unexpected(exc))

    def service_actions(self):
        limits = self.limits
        if limits is not None and limits.idle_timeout:
            self.conns.close_idle()


def serve(listener, announce, options):
    threading.stack_size(THREAD_STACK)
    server = EchoServer(listener, options)
    limits = server.limits
    # how often serve_forever looks at its shutdown flag: the contract's bound on a stop, or the idle sweep's
    poll = min(STOP_POLL_S, limits.sweep_s) if limits is not None and limits.sweep_s else STOP_POLL_S

    def stop(signum, frame):
        server.stopping.set()
        # shutdown() waits for serve_forever to return: never from the thread that runs it
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    with server:
        announce()
        try:
            server.serve_forever(poll_interval=poll)
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            server.conns.shut_down()
