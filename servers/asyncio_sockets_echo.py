"""``asyncio-sockets``: asyncio's low-level socket API, ``sock_accept``, ``sock_recv_into``, ``sock_sendall``.

Why it is built this way: between the bare reactor (``selectors``) and the
transports (``asyncio-protocol``) asyncio offers coroutines on non-blocking
sockets, with no transport and no protocol: the loop's ``sock_*`` methods,
the API vmbench measures as "asyncio sockets".  Each connection is a task
that reads and writes the way a blocking server would, so the row shows what
a coroutine per connection and a future per readiness cost over callbacks:
each ``sock_recv_into`` that has to wait registers the socket with the
selector and unregisters it once the future is done (two ``epoll_ctl`` calls
per message, besides the future and the task switch), where a transport
stays registered.

* ``sock_recv_into`` reads into a page-aligned buffer of the connection's own
  (``contract.read_buffer``; a shared one would be overwritten by the next
  task while this one's echo still waits in ``sock_sendall``).
* ``await loop.sock_sendall`` before the next read is the flow control: a
  client that does not read stalls its own task, which reads nothing more, so
  memory stays bounded; ``sock_sendall`` tries to send at once and waits for
  writability only for the tail.  A half-close (``sock_recv_into`` returns 0)
  is therefore seen only after every earlier byte was echoed.
* Accepting is a task that awaits ``sock_accept``; out of descriptors or
  memory (EMFILE, ENFILE, ...) it pauses for ``contract.ACCEPT_PAUSE_S`` with
  one line (``contract.AcceptErrors``); the waiting connections stay queued.
* Each connection's task is its exception boundary: a reset ends it quietly,
  a malformed message or anything unexpected with one line, and the caught
  exception drops its traceback (which would hold the task's frame, and the
  frame the buffer, in a cycle only the garbage collector frees).  The loop's
  exception handler is the one-line one of the other asyncio servers
  (``aio.exception_handler``), and ``--idle-timeout`` uses their idle sweep
  (``aio.IdleSweep``), which cancels the idle connection's task.
* With ``--protocol frame|json`` each task feeds the shared sans-I/O decoder
  (``protocols``) and sends its answers.
* SIGTERM/SIGINT (``contract.stop_event``): stop accepting, cancel every
  connection's task (each closes its socket), wait for them, return.
"""

import asyncio

from sockbench.servers import aio
from sockbench.servers.contract import (
    AcceptErrors,
    log_closing,
    malformed,
    read_buffer,
    set_nodelay,
    stop_event,
    unexpected,
)
from sockbench.servers.protocols import make_decoder

__all__ = ["serve"]

#: each connection reads into its own buffer of this size (it cannot share one: see the module docstring)
CONN_RECV = 64 * 1024
#: how long a stop waits for the cancelled connection tasks
STOP_WAIT_S = 1.0


class _Conn:
    """One connection: its socket, peer and task, as the idle sweep and the limits see it."""

    __slots__ = ("sock", "peer", "task", "closed_by_server", "__weakref__")

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.task = None
        self.closed_by_server = False


async def _echo(loop, conn, options):
    sock = conn.sock
    name = options["name"]
    limits = options.get("limits")
    decoder = make_decoder(options["protocol"], options["max_message"])
    view = read_buffer(CONN_RECV)
    recv_into, sendall = loop.sock_recv_into, loop.sock_sendall
    while True:
        n = await recv_into(sock, view)
        if not n:
            if decoder is not None and decoder.eof():
                log_closing(name, conn.peer, malformed(decoder.error))
            return
        if decoder is None:
            await sendall(sock, view[:n])
            if limits is not None:
                limits.progress(conn)
            continue
        data = decoder.feed(view[:n])
        if data:
            await sendall(sock, data)
        if decoder.error:
            log_closing(name, conn.peer, malformed(decoder.error))
            return
        if limits is not None:
            if data:
                limits.progress(conn)
            if limits.max_buffered and not limits.hold(conn, decoder.buffered):
                log_closing(name, conn.peer, limits.buffered_reason)
                return


async def _serve_connection(loop, conn, options, conns):
    name = options["name"]
    limits = options.get("limits")
    try:
        set_nodelay(conn.sock)
        if limits is not None:
            limits.opened(conn)
        await _echo(loop, conn, options)
    except asyncio.CancelledError:
        pass  # a stop, or the idle sweep (which said why already)
    except OSError as e:  # reset by the peer: this connection only, quietly
        e.__traceback__ = None
    except Exception as e:  # the exception boundary: this connection only, one line
        if not conn.closed_by_server:
            log_closing(name, conn.peer, unexpected(e))
        e.__traceback__ = None
    finally:
        conns.discard(conn)
        if limits is not None:
            limits.forget(conn)
        conn.sock.close()


async def _accept(loop, listener, options, conns):
    errors = AcceptErrors(options["name"])
    while True:
        try:
            sock, peer = await loop.sock_accept(listener)
        except Exception as e:  # OSError (EMFILE, ENFILE, ...) or anything unexpected
            pause = errors.pause_for(e)
            if pause:
                await asyncio.sleep(pause)
            continue
        sock.setblocking(False)
        conn = _Conn(sock, peer)
        conns.add(conn)
        conn.task = loop.create_task(_serve_connection(loop, conn, options, conns))


async def _main(listener, announce, options):
    loop = asyncio.get_running_loop()
    name = options["name"]
    loop.set_exception_handler(aio.exception_handler(name))
    listener.setblocking(False)
    conns = set()
    stop = stop_event(loop)

    def close_idle(conn, reason):
        conn.closed_by_server = True
        log_closing(name, conn.peer, reason)
        conn.task.cancel()

    sweep = aio.IdleSweep(loop, options.get("limits"), name, close_idle)
    acceptor = loop.create_task(_accept(loop, listener, options, conns))
    announce()
    try:
        await stop.wait()
    finally:
        acceptor.cancel()
        sweep.cancel()
        tasks = [conn.task for conn in list(conns)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        listener.close()


def serve(listener, announce, options):
    asyncio.run(_main(listener, announce, options))
