"""``uvloop``: the ``asyncio-protocol`` echo server, unchanged, on uvloop's event loop.

Why it is built this way: uvloop replaces asyncio's Python event loop with one
written in Cython on libuv.  Running the very same ``EchoProtocol`` class on
it isolates the cost of the loop itself: the difference between this row and
``asyncio-protocol`` is uvloop's contribution, nothing else.  The datagram
form (``--transport udp``) is likewise ``asyncio-protocol``'s
``DatagramEchoProtocol`` on uvloop's UDP transport.
"""

import uvloop

from sockbench.servers.asyncio_protocol_echo import BURNS, serve_datagram_on, serve_on

__all__ = ["serve", "serve_datagram", "BURNS"]


def serve(listener, announce, options):
    serve_on(uvloop.new_event_loop, listener, announce, options)


def serve_datagram(sock, announce, options):
    serve_datagram_on(uvloop.new_event_loop, sock, announce, options)
