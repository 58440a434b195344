"""``asyncio-streams``: ``asyncio.start_server`` with StreamReader/StreamWriter.

Why it is built this way: this is how the asyncio documentation teaches a
server (a coroutine per connection: ``await reader.read()``, ``writer.write()``,
``await writer.drain()``), so this row shows what that convenience costs over
the bare protocol API (``asyncio-protocol``).

* ``await writer.drain()`` after every write is the flow control: while the
  transport's buffer is above its high-water mark the coroutine waits, and a
  waiting coroutine does not read, so a client that does not read stalls its
  own connection and nothing else.  The StreamReader pauses the transport when
  its own buffer passes ``2 * limit``, bounding the read side too.
* End of file (``read()`` returns ``b""``) arrives only after every earlier
  byte was written, and ``writer.close()`` flushes them: a half-close flushes,
  then closes.
* On SIGTERM/SIGINT the loop stops accepting, aborts the open connections and
  cancels their handlers.
* With ``--protocol frame|json`` the handler reads each message the streams
  way, ``await reader.readexactly(n)`` for every part (the length prefix, the
  JSON header, the content), which is how a streams user writes it; the
  validation and the answers are the shared ones in ``protocols``.
"""

import asyncio
import struct

from sockbench.servers.contract import RECV_SIZE, set_nodelay, stop_event
from sockbench.servers.protocols import ProtocolError, json_response, log_protocol_error, parse_json_header

__all__ = ["serve"]


_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


async def _echo_raw(reader, writer, options):
    while True:
        data = await reader.read(RECV_SIZE)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def _read_part(reader, n, first):
    """readexactly, where EOF before the first byte of a message is a clean end (None)."""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        if first and not e.partial:
            return None
        raise ProtocolError("connection closed inside a message") from None


async def _echo_frames(reader, writer, options):
    limit = options["max_message"]
    while True:
        head = await _read_part(reader, 4, first=True)
        if head is None:
            return
        (n,) = _U32.unpack(head)
        if n > limit:
            raise ProtocolError(f"frame length {n} is over the limit of {limit} bytes")
        writer.write(head + await _read_part(reader, n, first=False))
        await writer.drain()


async def _echo_json(reader, writer, options):
    while True:
        head = await _read_part(reader, 2, first=True)
        if head is None:
            return
        (hlen,) = _U16.unpack(head)
        if hlen == 0:
            raise ProtocolError("JSON header length is 0")
        header, length = parse_json_header(await _read_part(reader, hlen, first=False), options["max_message"])
        writer.write(json_response(header, await _read_part(reader, length, first=False)))
        await writer.drain()


_HANDLERS = {"raw": _echo_raw, "frame": _echo_frames, "json": _echo_json}


async def _main(listener, announce, options):
    stop = stop_event(asyncio.get_running_loop())
    writers = set()
    tasks = set()
    echo = _HANDLERS[options["protocol"]]

    async def handle(reader, writer):
        tasks.add(asyncio.current_task())
        writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            set_nodelay(sock)
        try:
            await echo(reader, writer, options)
        except ProtocolError as e:
            log_protocol_error(options["name"], writer.get_extra_info("peername"), e)
        except OSError:
            pass  # reset by the peer: only this connection ends
        finally:
            writers.discard(writer)
            tasks.discard(asyncio.current_task())
            writer.close()

    server = await asyncio.start_server(handle, sock=listener, limit=RECV_SIZE)
    announce()
    async with server:
        await stop.wait()
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=1.0)


def serve(listener, announce, options):
    asyncio.run(_main(listener, announce, options))
