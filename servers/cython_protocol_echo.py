"""``cython-protocol``: a Cython-compiled ``asyncio.BufferedProtocol`` echo on uvloop.

Why it is built this way: the ``uvloop`` row runs a pure-Python protocol on a
compiled event loop, and the ``cython`` row replaces the loop altogether.
This row sits between them: the same loop as ``uvloop``, with the protocol
compiled (``sockbench.ext.protocol_echo``, a ``cdef class``).  The difference
from the ``uvloop`` row is what compiling the protocol buys inside an event
loop; the difference from ``cython`` is what the event loop itself costs.

* ``BufferedProtocol``: uvloop reads into one C buffer that the server lends
  to every connection (``get_buffer``), instead of allocating a ``bytes`` per
  read.  ``buffer_updated`` copies the bytes read into one ``bytes`` and writes
  it back at once; the copy is required, because uvloop keeps a reference to
  the unsent part of what it is given while the next read reuses the buffer.
* The same flow control as ``asyncio-protocol``: past a 64 KiB transport
  buffer the protocol stops reading until the buffer drains, so a client that
  does not read cannot grow the server's memory.
* Half-close: ``eof_received`` returns False; the transport flushes the echo,
  then closes.  TCP_NODELAY is set by uvloop on every TCP transport.
* Accepting (a pause with one line when descriptors run out, never libuv's
  resets), the one-line exception handler and the ``--idle-timeout`` sweep are
  ``aio``'s, as for the other servers on an event loop.
* Stop: SIGTERM/SIGINT through ``loop.add_signal_handler``; every transport is
  aborted and ``serve`` returns, so the process exits 0.
"""

import asyncio

import uvloop

from sockbench.ext.protocol_echo import EchoServer
from sockbench.servers import aio

__all__ = ["serve"]


async def _main(listener, announce, options):
    factory = EchoServer(limits=options.get("limits"))

    async def shut_down():
        factory.abort_all()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    await aio.serve_until_stopped(listener, announce, options, factory, shut_down)


def serve(listener, announce, options):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(listener, announce, options))
