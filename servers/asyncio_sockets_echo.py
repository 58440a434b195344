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
  client that does not read holds up its own task, which reads nothing more, so
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
* Over TLS (``--tls``) the socket API has no TLS of its own, so the row does
  what a user of it does: an ``ssl.SSLObject`` over memory BIOs
  (``_TlsSock``), its ciphertext read and written with the same
  ``sock_recv_into``/``sock_sendall``; the handshake runs in the
  connection's task under ``asyncio.timeout``.
* SIGTERM/SIGINT (``contract.stop_event``): stop accepting, cancel every
  connection's task (each closes its socket), wait for them, return.
"""

import asyncio
import ssl

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
from sockbench.servers.tls import handshake_failure, is_quiet, server_context, timeout_reason

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


class _TlsSock:
    """TLS over the loop's ``sock_*`` coroutines: ciphertext through ``sock_recv_into``/``sock_sendall``, the TLS
    itself in an ``ssl.SSLObject`` over two memory BIOs (the ``ssl`` docs' way to do TLS over any I/O).

    ``recv_into(sock, view)`` and ``sendall(sock, data)`` have the loop's
    signatures, so the echo loop runs on it unchanged.
    """

    __slots__ = ("_loop", "_sock", "_obj", "_in", "_out", "_raw")

    def __init__(self, loop, sock, ctx):
        self._loop = loop
        self._sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._raw = read_buffer(CONN_RECV)  # the ciphertext, read here, then written into the incoming BIO

    async def _fill(self):
        n = await self._loop.sock_recv_into(self._sock, self._raw)
        if n:
            self._in.write(self._raw[:n])
        else:
            self._in.write_eof()

    async def _flush(self):
        if self._out.pending:
            await self._loop.sock_sendall(self._sock, self._out.read())

    async def handshake(self):
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def recv_into(self, _sock, view):
        while True:
            try:
                return self._obj.read(len(view), view)
            except ssl.SSLWantReadError:
                await self._flush()  # what reading made TLS write (a post-handshake message)
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0  # close_notify, or the peer's end of file

    async def sendall(self, _sock, data):
        self._obj.write(data)
        await self._flush()

    def close_notify(self):
        """Send close_notify now if the socket takes it, without waiting for the peer's."""
        try:
            self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # want-read: ours is written, the peer's will not be waited for
        try:
            self._sock.send(self._out.read())
        except OSError:
            pass


async def _handshake(loop, conn, options, ctx):
    """The TLS side of ``conn`` once its handshake completed in time, or None (said in one line unless the peer left)."""
    tls = options["tls"]
    tsock = _TlsSock(loop, conn.sock, ctx)
    try:
        async with asyncio.timeout(tls.handshake_timeout_s):
            await tsock.handshake()
    except TimeoutError:
        log_closing(options["name"], conn.peer, timeout_reason(tls.handshake_timeout_s))
        return None
    except OSError as e:
        if not is_quiet(e):
            log_closing(options["name"], conn.peer, handshake_failure(e))
        e.__traceback__ = None
        return None
    return tsock


async def _echo(loop, conn, options, tsock=None):
    sock = conn.sock
    name = options["name"]
    limits = options.get("limits")
    decoder = make_decoder(options["protocol"], options["max_message"])
    view = read_buffer(CONN_RECV)
    recv_into, sendall = (loop.sock_recv_into, loop.sock_sendall) if tsock is None else (tsock.recv_into, tsock.sendall)
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


async def _serve_connection(loop, conn, options, conns, ctx=None):
    name = options["name"]
    limits = options.get("limits")
    try:
        set_nodelay(conn.sock)
        if limits is not None:
            limits.opened(conn)
        tsock = None
        if ctx is not None:
            tsock = await _handshake(loop, conn, options, ctx)
            if tsock is None:
                return
        await _echo(loop, conn, options, tsock)
        if tsock is not None:
            tsock.close_notify()
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
    ctx = server_context(options["tls"]) if options.get("tls") is not None else None
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
        conn.task = loop.create_task(_serve_connection(loop, conn, options, conns, ctx))


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
