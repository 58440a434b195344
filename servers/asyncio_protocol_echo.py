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
* With ``--protocol frame|json`` a second class, ``MessageProtocol``, feeds
  each chunk to a sans-I/O decoder (the tutorial's message class, see
  ``protocols``) and writes its answers; a malformed message closes that
  transport (after the answers before it are flushed).
"""

import asyncio

from sockbench.servers.contract import set_nodelay, stop_event
from sockbench.servers.protocols import log_protocol_error, make_decoder

__all__ = ["EchoProtocol", "MessageProtocol", "serve", "serve_on"]

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


class MessageProtocol(EchoProtocol):
    """EchoProtocol for ``frame`` and ``json``: answers complete messages, never partial ones."""

    __slots__ = ("decoder", "name")

    def __init__(self, conns, options):
        super().__init__(conns)
        self.decoder = make_decoder(options["protocol"], options["max_message"])
        self.name = options["name"]

    def data_received(self, data):
        decoder = self.decoder
        out = decoder.feed(data)
        if out:
            self.transport.write(out)
        if decoder.error:
            self._malformed()

    def eof_received(self):
        if self.decoder.eof():
            self._malformed()
        return False

    def _malformed(self):
        log_protocol_error(self.name, self.transport.get_extra_info("peername"), self.decoder.error)
        self.transport.close()


async def _main(listener, announce, options):
    loop = asyncio.get_running_loop()
    stop = stop_event(loop)
    conns = set()
    if options["protocol"] == "raw":
        factory = lambda: EchoProtocol(conns)  # noqa: E731
    else:
        factory = lambda: MessageProtocol(conns, options)  # noqa: E731
    server = await loop.create_server(factory, sock=listener)
    announce()
    await stop.wait()
    server.close()
    for transport in list(conns):
        transport.abort()
    await asyncio.sleep(0)  # let connection_lost callbacks run


def serve_on(loop_factory, listener, announce, options):
    """Run the protocol server on a loop made by ``loop_factory`` (None: asyncio's default)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(listener, announce, options))


def serve(listener, announce, options):
    serve_on(None, listener, announce, options)
