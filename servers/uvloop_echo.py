"""``uvloop``: the ``asyncio-protocol`` echo server, unchanged, on uvloop's event loop.

Why it is built this way: uvloop replaces asyncio's Python event loop with one
written in Cython on libuv.  Running the very same ``EchoProtocol`` class on
it isolates the cost of the loop itself: the difference between this row and
``asyncio-protocol`` is uvloop's contribution, nothing else.
"""

import uvloop

from sockbench.servers.asyncio_protocol_echo import serve_on

__all__ = ["serve"]


def serve(listener, announce, options):
    serve_on(uvloop.new_event_loop, listener, announce, options)
