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
"""

import asyncio

from sockbench.servers.common import RECV_SIZE, STOP_SIGNALS, set_nodelay

__all__ = ["serve"]


async def _main(listener, announce):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    writers = set()
    tasks = set()

    async def handle(reader, writer):
        tasks.add(asyncio.current_task())
        writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            set_nodelay(sock)
        try:
            while True:
                data = await reader.read(RECV_SIZE)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
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
    asyncio.run(_main(listener, announce))
