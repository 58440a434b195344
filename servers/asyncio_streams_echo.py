"""``asyncio-streams``: StreamReader/StreamWriter, a coroutine per connection.

Why it is built this way: this is how the asyncio documentation teaches a
server (a coroutine per connection: ``await reader.read()``, ``writer.write()``,
``await writer.drain()``), so this row shows what that convenience costs over
the bare protocol API (``asyncio-protocol``).

* ``await writer.drain()`` after every write is the flow control: while the
  transport's buffer is above its high-water mark the coroutine waits, and a
  waiting coroutine does not read, so a client that does not read holds up its
  own connection and nothing else.  The StreamReader pauses the transport when
  its own buffer passes ``2 * limit``, bounding the read side too.
* End of file (``read()`` returns ``b""``) arrives only after every earlier
  byte was written, and ``writer.close()`` flushes them: a half-close flushes,
  then closes.
* On SIGTERM/SIGINT the loop stops accepting and aborts the open
  connections; their handlers end on their own.
* With ``--protocol frame|json`` the handler reads each message the streams
  way, ``await reader.readexactly(n)`` for every part (the length prefix, the
  JSON header, the content), which is how a streams user writes it; the
  validation and the answers are the shared ones in ``protocols``.
* Over TLS (``--tls``) the loop's TLS transport serves it (``aio``).  One
  thing it cannot do is the half-close: asyncio's TLS transport starts its
  own shutdown as soon as the peer's close_notify arrives and drops what is
  written after that, so the echo of what the StreamReader still holds then
  is lost (the registry records it; the conformance suite expects it).
* The connections are those of ``asyncio.start_server`` (a
  ``StreamReaderProtocol`` per connection, the handler as its callback), but
  accepted by ``aio.Acceptor``, with the one-line exception handler and the
  idle sweep of the other servers on an event loop.
* The handler is the connection's exception boundary: a reset ends it
  quietly, a malformed message or anything unexpected with one line.  It
  drops the caught exception's traceback: the traceback's frames hold the
  writer, whose transport and protocol hold the exception again, a cycle only
  the garbage collector frees, with the connection's buffers in it.
* ``--idle-timeout``: a complete message (with ``raw``, any read) restarts
  the connection's clock; the idle sweep aborts the transport, and the
  handler ends without a second line.  ``--max-buffered``: the parts of a
  message are read as they arrive (``read``, at most one read at a time) and
  counted; the connection whose message would take the total over the cap
  is closed.  Without it (the default), each part is one ``readexactly``.
"""

import asyncio
import struct

from sockbench.servers import aio
from sockbench.servers.contract import RECV_SIZE, log_closing, malformed, set_nodelay, unexpected
from sockbench.servers.protocols import ProtocolError, json_response, parse_json_header

__all__ = ["serve"]


_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class _OverLimit(Exception):
    """A message would take the bytes held for partial messages over ``--max-buffered``."""


class _Conn:
    """One connection as the limits see it: its writer, its peer, the bytes its message holds so far."""

    __slots__ = ("writer", "transport", "peer", "limits", "counted", "held", "closed_by_server")

    def __init__(self, writer, limits):
        self.writer = writer
        self.transport = writer.transport
        self.peer = writer.get_extra_info("peername")
        self.limits = limits
        self.counted = limits is not None and bool(limits.max_buffered)
        self.held = 0
        self.closed_by_server = False

    def count(self, nbytes):
        """Add ``nbytes`` to the message in progress; raise ``_OverLimit`` past the cap."""
        self.held += nbytes
        if not self.limits.hold(self, self.held):
            raise _OverLimit(self.limits.buffered_reason)

    def message_done(self):
        if self.limits is not None:
            self.limits.progress(self)
            if self.counted:
                self.held = 0
                self.limits.hold(self, 0)


async def _echo_raw(reader, writer, options, conn):
    while True:
        data = await reader.read(RECV_SIZE)
        if not data:
            return
        writer.write(data)
        if conn.limits is not None:
            conn.limits.progress(conn)
        await writer.drain()


async def _read_head(reader, n, conn):
    """The first bytes of a message; None at a clean end of file (before its first byte)."""
    try:
        head = await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError("connection closed inside a message") from None
    if conn.counted:
        conn.count(n)
    return head


async def _read_rest(reader, n, conn):
    """The next ``n`` bytes of a message: one readexactly, or, under ``--max-buffered``, what arrives, counted."""
    if not conn.counted:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ProtocolError("connection closed inside a message") from None
    parts = []
    while n:
        part = await reader.read(min(n, RECV_SIZE))  # what has arrived: counted as it comes
        if not part:
            raise ProtocolError("connection closed inside a message")
        conn.count(len(part))
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


async def _echo_frames(reader, writer, options, conn):
    limit = options["max_message"]
    while True:
        head = await _read_head(reader, 4, conn)
        if head is None:
            return
        (n,) = _U32.unpack(head)
        if n > limit:
            raise ProtocolError(f"frame length {n} is over the limit of {limit} bytes")
        writer.write(head + await _read_rest(reader, n, conn))
        conn.message_done()
        await writer.drain()


async def _echo_json(reader, writer, options, conn):
    while True:
        head = await _read_head(reader, 2, conn)
        if head is None:
            return
        (hlen,) = _U16.unpack(head)
        if hlen == 0:
            raise ProtocolError("JSON header length is 0")
        header, length = parse_json_header(await _read_rest(reader, hlen, conn), options["max_message"])
        writer.write(json_response(header, await _read_rest(reader, length, conn)))
        conn.message_done()
        await writer.drain()


_HANDLERS = {"raw": _echo_raw, "frame": _echo_frames, "json": _echo_json}


async def _main(listener, announce, options):
    loop = asyncio.get_running_loop()
    name = options["name"]
    limits = options.get("limits")
    conns = set()
    tasks = set()
    echo = _HANDLERS[options["protocol"]]

    async def handle(reader, writer):
        tasks.add(asyncio.current_task())
        conn = _Conn(writer, limits)
        conns.add(conn)
        sock = writer.get_extra_info("socket")
        try:
            if sock is not None:
                set_nodelay(sock)
            if limits is not None:
                limits.opened(conn)
            await echo(reader, writer, options, conn)
        except Exception as e:  # the exception boundary: this connection only
            if not conn.closed_by_server:  # an idle close said why already
                if isinstance(e, ProtocolError):
                    log_closing(name, conn.peer, malformed(e))
                elif isinstance(e, _OverLimit):
                    log_closing(name, conn.peer, str(e))
                elif not isinstance(e, OSError):  # a reset by the peer ends it quietly
                    log_closing(name, conn.peer, unexpected(e))
            e.__traceback__ = None  # breaks the cycle through the handler's frames (see the module docstring)
        finally:
            conns.discard(conn)
            tasks.discard(asyncio.current_task())
            if limits is not None:
                limits.forget(conn)
            writer.close()

    def factory():
        # what asyncio.start_server builds for each connection
        reader = asyncio.StreamReader(limit=RECV_SIZE, loop=loop)
        return asyncio.StreamReaderProtocol(reader, handle, loop=loop)

    def close_idle(conn, reason):
        conn.closed_by_server = True
        log_closing(name, conn.peer, reason)
        conn.transport.abort()

    async def shut_down():
        # Aborted, every handler ends on its own (its read or drain fails); only a straggler is
        # cancelled: asyncio (3.11) reports a cancelled handler task as an error of its own.
        for conn in list(conns):
            conn.transport.abort()
        if tasks:
            await asyncio.wait(list(tasks), timeout=1.0)
        for task in list(tasks):
            task.cancel()

    await aio.serve_until_stopped(listener, announce, options, factory, shut_down, close_idle)


def serve(listener, announce, options):
    asyncio.run(_main(listener, announce, options))
