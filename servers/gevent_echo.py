"""``gevent``: ``gevent.server.StreamServer``, a greenlet per connection on libev.

Why it is built this way: gevent's answer to many connections is blocking
code on green threads, and ``StreamServer(listener, handle)`` is how its
documentation serves TCP, so the row shows that model's cost against real
threads (``blocking``) and coroutines (the asyncio rows).

* No monkey-patching: ``StreamServer``'s sockets are gevent's already and
  nothing else here blocks; the module is imported only by the gevent server
  process, so no other process is touched by gevent.
* The listener is the contract's, made non-blocking (with ``--workers`` on a
  shared Unix listener another process may take the connection).
* ``handle`` reads into its own ``contract.read_buffer`` and answers with
  ``sendall``, which yields until sent: memory bounded, half-close after the
  echo; ``--protocol frame|json`` feeds the shared decoder (``protocols``).
* ``handle`` is its connection's exception boundary (gevent would print the
  greenlet's traceback).
* Accepting (``do_read``): ``contract.AcceptErrors`` decides (skip, or pause
  ``ACCEPT_PAUSE_S`` on a libev timer, one line) where gevent would print a
  traceback from the hub and back off.
* SIGTERM/SIGINT (``gevent.signal_handler``) set an event; ``stop()`` closes
  the listener and every connection is shut down.
* TLS: the greenlet does the handshake itself (``stream_echo.accept_tls``
  with ``gevent.ssl``), not ``StreamServer``'s ``ssl_context``, where a failed
  handshake escapes the handler as a traceback.
* ``--idle-timeout``: a greenlet sweeps every ``Limits.sweep_s``.
"""

import signal

import gevent
import gevent.event
import gevent.server

from sockbench.servers.contract import (
    STOP_SIGNALS,
    AcceptErrors,
    log,
    log_closing,
    read_buffer,
    set_nodelay,
    unexpected,
)
from sockbench.servers.protocols import make_decoder
from sockbench.servers.stream_echo import Connections, accept_tls, echo_blocking, send_close_notify
from sockbench.servers.tls import server_context

__all__ = ["serve"]

#: each greenlet reads into its own buffer of this size (as the ``blocking`` server's threads do)
CONN_RECV = 64 * 1024
#: what ``StreamServer.stop`` may wait (it waits only for a pool's handlers; this server has none)
STOP_WAIT_S = 1.0


class EchoServer(gevent.server.StreamServer):
    """``StreamServer`` whose accept pauses on EMFILE and the like, saying so in one line."""

    def __init__(self, listener, handle, options):
        listener.setblocking(False)
        super().__init__(listener, handle)
        self._errors = AcceptErrors(options["name"])
        self._resume = None

    def do_read(self):
        try:
            return super().do_read()
        except OSError as e:
            pause = self._errors.pause_for(e)
            if pause:
                self.stop_accepting()
                self._resume = self.loop.timer(pause)
                self._resume.start(self._start_accepting_if_started)
            return None  # that connection is gone (or accepting pauses): nothing to handle

    def close(self):
        if self._resume is not None:
            self._resume.stop()
            self._resume.close()
            self._resume = None
        super().close()


def _sweep(conns):
    """Every ``Limits.sweep_s``, shut the idle connections down, one line each."""
    limits = conns.limits
    while True:
        gevent.sleep(limits.sweep_s)
        for conn in limits.idle():
            try:
                conns.close_for(conn, limits.idle_reason)
            except Exception as e:  # one connection's trouble never stops the sweep
                log(conns.name, unexpected(e))


def _echo(conn, peer, options, conns):
    decoder = make_decoder(options["protocol"], options["max_message"])
    view = read_buffer(CONN_RECV)
    echo_blocking(conn.recv_into, conn.sendall, view, decoder, conns.limits, conn, conns.name, peer,
                  conns.closed_by_server)


def serve(listener, announce, options):
    name = options["name"]
    limits = options.get("limits")
    conns = Connections(name, limits)

    tls_context = None
    if options.get("tls") is not None:
        # deferred: gevent's ssl module, loaded by a TLS server only
        from gevent import ssl as gevent_ssl

        tls_context = server_context(options["tls"], gevent_ssl.SSLContext)

    def handle(conn, peer):
        conns.opened(conn, peer)
        try:
            set_nodelay(conn)
            if tls_context is not None:
                tsock = accept_tls(conn, tls_context, options["tls"], name, peer)
                if tsock is None:
                    return
                conns.replace(conn, tsock)
                conn = tsock
            _echo(conn, peer, options, conns)
            if tls_context is not None:
                send_close_notify(conn)
        except OSError as e:  # reset by the peer, or shut down by the server: this connection only
            e.__traceback__ = None
        except Exception as e:  # the exception boundary: this connection only, one line
            if not conns.closed_by_server(conn):
                log_closing(name, peer, unexpected(e))
            e.__traceback__ = None
        finally:
            conns.closed(conn)
            conn.close()

    server = EchoServer(listener, handle, options)
    stop = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, stop.set) for sig in STOP_SIGNALS]
    sweeper = gevent.spawn(_sweep, conns) if limits is not None and limits.idle_timeout else None
    server.start()
    announce()
    try:
        stop.wait()
    finally:
        for h in handlers:
            h.cancel()
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if sweeper is not None:
            sweeper.kill()
        server.stop(timeout=STOP_WAIT_S)  # stops accepting, closes the listener
        conns.shut_down()
        gevent.sleep(0)  # the handlers see their connections end and close them
