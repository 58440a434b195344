"""``gevent``: ``gevent.server.StreamServer``, a greenlet per connection on libev.

Why it is built this way: gevent's answer to "many connections" is blocking
code on green threads, and ``StreamServer(listener, handle)`` is how its
documentation serves TCP: ``handle(socket, address)`` runs in a greenlet of
its own and reads and writes as a blocking server would, while the hub
(libev) switches greenlets when a socket would block.  The row shows the cost
of that model against real threads (``blocking``) and coroutines (the
asyncio rows).

* No monkey-patching.  The sockets ``StreamServer`` hands to ``handle`` are
  gevent's already, and nothing else in this process blocks; patching would
  swap the whole standard library (the contract's locks, ``time.sleep``) for
  nothing here.  The module is imported only by the gevent server process
  (the registry imports a server when it serves), so no other process is ever
  touched by gevent.
* The listener is the contract's (``StreamServer`` takes a bound, listening
  socket), made non-blocking: with ``--workers`` on a shared Unix listener a
  wake-up may find the connection taken by another process.
* ``handle`` reads with ``recv_into`` into a page-aligned buffer of its own
  (``contract.read_buffer``) and answers with ``sendall``, which yields until
  the echo is sent: a greenlet waiting there reads nothing more, so memory
  stays bounded, and a half-close is seen only after every earlier byte was
  echoed.  With ``--protocol frame|json`` it feeds the shared sans-I/O
  decoder (``protocols``).
* ``handle`` is its connection's exception boundary: a reset ends it quietly,
  anything else with one line (gevent would print the greenlet's traceback).
* Accepting (``do_read``): gevent's own path reports a failing ``accept()``
  with a traceback from the hub and backs off; here ``contract.AcceptErrors``
  decides: skip that connection, or stop accepting for
  ``contract.ACCEPT_PAUSE_S`` on a libev timer, with one line at most once a
  second.
* SIGTERM/SIGINT (``gevent.signal_handler``) set an event the main greenlet
  waits on; then ``stop()`` closes the listener and every open connection is
  shut down, which ends its handler.
* Over TLS (``--tls``) the greenlet shakes hands first (``stream_echo.accept_tls``
  with a context of ``gevent.ssl``, whose sockets yield to the hub), rather
  than through ``StreamServer``'s own ``ssl_context``: there a failed
  handshake escapes the handler and the hub prints its traceback.
* ``--idle-timeout``: a greenlet sweeps every ``Limits.sweep_s`` and shuts
  idle connections down with one line.
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
