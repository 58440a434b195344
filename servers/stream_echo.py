"""The read-answer loop of one stream connection, for the servers that block (a thread or a greenlet) on each read.

``blocking``, ``socketserver`` and ``gevent`` serve a connection the same way:
read what has arrived into the connection's own buffer, send the echo (raw)
or the protocol's answers (frame, json), and close with one line on a
malformed message or a limit.  Only how they read and write differs (a socket,
a socketserver file, a gevent socket), so the loop takes those two calls and
runs them as it finds them: nothing is added per read, and the servers
measure what they did before.  The exception boundary stays with each
server, which knows what a failure means there.
"""

from sockbench.servers.contract import log_closing, malformed

__all__ = ["echo_blocking"]


def echo_blocking(recv_into, send, view, decoder, limits, conn, name, peer, closed_by_server):
    """Serve ``conn`` until end of file, a malformed message or a limit; raises what the I/O raises.

    ``recv_into(view)`` reads into ``view`` (0 at end of file); ``send(data)``
    writes all of ``data``.  ``decoder`` is ``protocols.make_decoder``'s (None:
    the raw echo); ``limits`` is ``contract.Limits`` or None.
    ``closed_by_server(conn)``: the server shut it down itself (and said why),
    so its end of file is not a peer's malformed last message.
    """
    while True:
        n = recv_into(view)
        if not n:
            if decoder is not None and decoder.eof() and not closed_by_server(conn):
                log_closing(name, peer, malformed(decoder.error))
            return
        if decoder is None:
            send(view[:n])
            if limits is not None:
                limits.progress(conn)
            continue
        data = decoder.feed(view[:n])
        if data:
            send(data)
        if decoder.error:
            log_closing(name, peer, malformed(decoder.error))
            return
        if limits is not None:
            if data:
                limits.progress(conn)
            if limits.max_buffered and not limits.hold(conn, decoder.buffered):
                log_closing(name, peer, limits.buffered_reason)
                return
