"""``asyncio-protocol``: an ``asyncio.Protocol`` echo with real write flow control.

Why it is built this way: callbacks, no coroutine per connection, no stream
buffering; this is asyncio at its leanest, and the same class runs on uvloop
(``uvloop_echo``), so those two rows differ only in the event loop.

* ``data_received`` writes the chunk straight back; the transport tries to send
  at once and buffers only what the kernel did not take.
* Flow control is explicit: when the transport's write buffer passes its
  high-water mark the loop calls ``pause_writing()`` and the protocol pauses
  *reading* on that connection; ``resume_writing()`` resumes it.  A client that
  does not read therefore holds at most about one high-water mark plus one
  read in the server.
* ``eof_received`` returns False, so a half-closed connection is closed by the
  transport once its buffer is flushed: pending echo first, then the close.
"""

import asyncio

from sockbench.servers.common import STOP_SIGNALS, set_nodelay

__all__ = ["EchoProtocol", "serve", "serve_on"]

HIGH_WATER = 64 * 1024


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport", "conns")

    def __init__(self, conns):
        self.conns = conns
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.conns.add(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_nodelay(sock)
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False  # let the transport close itself once the echo is flushed

    def connection_lost(self, exc):
        self.conns.discard(self.transport)


async def _main(listener, announce):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    conns = set()
    server = await loop.create_server(lambda: EchoProtocol(conns), sock=listener)
    announce()
    await stop.wait()
    server.close()
    for transport in list(conns):
        transport.abort()
    await asyncio.sleep(0)  # let connection_lost callbacks run


def serve_on(loop_factory, listener, announce):
    """Run the protocol server on a loop made by ``loop_factory`` (None: asyncio's default)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(listener, announce))


def serve(listener, announce, options):
    serve_on(None, listener, announce)
