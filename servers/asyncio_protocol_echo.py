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
  transport (after the answers before it are flushed), with one line.
* Accepting, the one-line exception handler (a callback that raises closes
  its own transport, nothing else) and the idle sweep are ``aio``'s, shared
  with the other servers on an event loop.
* ``--burn-us X`` (hidden, for tests of ``sockbench ab``): after each chunk
  it answers, the protocol does a fixed piece of extra work calibrated at
  start to take X µs (``contract.burner``): a server made slower by a known
  amount of CPU per message (per read: one message at depth 1), the way a
  real regression adds work.
* ``--idle-timeout`` / ``--max-buffered`` (``contract.Limits``, off unless
  asked for): a chunk that completes a message (with ``raw``, any chunk)
  restarts the connection's clock; the decoder's partial message is counted
  after every chunk, and the connection that would take the total over the
  cap is closed, after the answers before it.

udp (``serve_datagram``, raw only) is ``DatagramEchoProtocol`` on the bound
socket (``create_datagram_endpoint(sock=...)``), also run by uvloop:
``datagram_received`` answers with ``sendto`` at once.  A datagram transport
cannot pause reading, so between ``pause_writing()`` and ``resume_writing()``
arriving datagrams are dropped, as a full socket buffer would drop them;
``error_received`` concerns one datagram and is ignored; an empty datagram is
echoed by the socket itself, since both loops' ``sendto`` drop an empty payload.
"""

import asyncio

from sockbench.servers import aio
from sockbench.servers.contract import burner, log_closing, malformed, set_nodelay, stop_event
from sockbench.servers.protocols import make_decoder

__all__ = ["EchoProtocol", "MessageProtocol", "DatagramEchoProtocol", "serve", "serve_on", "serve_datagram",
           "serve_datagram_on", "BURNS"]

HIGH_WATER = 64 * 1024
#: this server takes ``--burn-us`` (``contract.burner``)
BURNS = True


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport", "conns", "name", "limits", "burn")

    def __init__(self, conns, options):
        self.conns = conns
        self.name = options["name"]
        self.limits = options.get("limits")  # None unless --idle-timeout or --max-buffered
        self.burn = options.get("burn")  # None unless --burn-us
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.conns.add(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_nodelay(sock)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.limits is not None:
            self.limits.opened(self)

    def data_received(self, data):
        self.transport.write(data)
        if self.limits is not None:
            self.limits.progress(self)
        if self.burn is not None:
            self.burn()

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False  # let the transport close itself once the echo is flushed

    def connection_lost(self, exc):
        self.conns.discard(self.transport)
        if self.limits is not None:
            self.limits.forget(self)


class MessageProtocol(EchoProtocol):
    """EchoProtocol for ``frame`` and ``json``: answers complete messages, never partial ones."""

    __slots__ = ("decoder",)

    def __init__(self, conns, options):
        super().__init__(conns, options)
        self.decoder = make_decoder(options["protocol"], options["max_message"])

    def data_received(self, data):
        decoder = self.decoder
        out = decoder.feed(data)
        if out:
            self.transport.write(out)
            if self.burn is not None:
                self.burn()
        if decoder.error:
            self._close_after_answers(malformed(decoder.error))
        elif self.limits is not None:
            limits = self.limits
            if out:
                limits.progress(self)
            if limits.max_buffered and not limits.hold(self, decoder.buffered):
                self._close_after_answers(limits.buffered_reason)

    def eof_received(self):
        if self.decoder.eof():
            self._close_after_answers(malformed(self.decoder.error))
        return False

    def _close_after_answers(self, reason):
        log_closing(self.name, self.transport.get_extra_info("peername"), reason)
        self.transport.close()


async def _main(listener, announce, options):
    conns = set()
    cls = EchoProtocol if options["protocol"] == "raw" else MessageProtocol

    async def shut_down():
        for transport in list(conns):
            transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    await aio.serve_until_stopped(listener, announce, options, lambda: cls(conns, options), shut_down)


def serve_on(loop_factory, listener, announce, options):
    """Run the protocol server on a loop made by ``loop_factory`` (None: asyncio's default)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(listener, announce, options))


def serve(listener, announce, options):
    serve_on(None, listener, announce, options)


class DatagramEchoProtocol(asyncio.DatagramProtocol):
    """Echo each datagram to its sender; drop what arrives while the transport's buffer is above its high-water mark."""

    __slots__ = ("sock", "transport", "paused", "dropped")

    def __init__(self, sock):
        self.sock = sock
        self.transport = None
        self.paused = False
        self.dropped = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def datagram_received(self, data, addr):
        if self.paused:
            self.dropped += 1
            return
        if not data:
            self._echo_empty(addr)
            return
        self.transport.sendto(data, addr)

    def _echo_empty(self, addr):
        """The transport's ``sendto`` drops an empty payload: the socket sends it (the kernel takes it, or refuses it)."""
        try:
            self.sock.sendto(b"", addr)
        except OSError:
            self.dropped += 1  # a full send buffer, or a pending ICMP error: as for any datagram the kernel refuses

    def error_received(self, exc):
        pass  # a pending ICMP error about one datagram: that datagram only

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False


async def _main_datagram(sock, announce, options):
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(aio.exception_handler(options["name"]))
    stop = stop_event(loop)
    transport, _ = await loop.create_datagram_endpoint(lambda: DatagramEchoProtocol(sock), sock=sock)
    announce()
    try:
        await stop.wait()
    finally:
        transport.abort()
        await asyncio.sleep(0)  # let connection_lost run


def serve_datagram_on(loop_factory, sock, announce, options):
    """Run the datagram server on a loop made by ``loop_factory`` (None: asyncio's default)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main_datagram(sock, announce, options))


def serve_datagram(sock, announce, options):
    serve_datagram_on(None, sock, announce, options)
