"""``cython``: an epoll echo server compiled with Cython, whose whole loop runs in C without the GIL.

Why it is built this way: every other row pays for Python on each message (a
bytes object, a method call, an event-loop callback).  This row shows what is
left when none of that happens: the server costs a few hundred instructions of
user space per message, and the rest is the kernel's read, write and TCP
delivery.  The core is ``sockbench.ext.epoll_echo`` (``ext/epoll_echo.pyx``);
this module only adapts it to the registry contract.

* **Level-triggered epoll**, one thread, the whole loop inside one
  ``with nogil:``.  Level-triggered is the simple, forgiving mode: a
  descriptor that still has work is reported again, so no read has to be
  drained to EAGAIN to stay correct.
* **accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)**, drained until EAGAIN, with
  TCP_NODELAY on every accepted TCP socket (a unix listener's have no Nagle;
  the loop asks the listener's family once, at start).  Out of descriptors (EMFILE, ENFILE)
  or memory the listener is unwatched, instead of spinning, until a
  connection closes or 0.1 s has passed, with one line on stderr (then at
  most one a second), as in every server.
* **Read, then write back at once** from one shared buffer, ``send`` with
  ``MSG_NOSIGNAL`` (a peer that went away is an EPIPE, never a SIGPIPE).
  Only the unsent tail is kept, in a ``malloc``'d buffer of that connection.
* **Bounded memory**: a connection with a tail waits for EPOLLOUT with EPOLLIN
  off, so a client that does not read holds at most one read (256 KiB) in the
  server, and the kernel's socket buffers push back on the client.
* **Half-close**: end of file is only read when nothing is pending, so the
  echo is flushed first, then the connection is closed.  A reset or any other
  error closes that connection only.
* **Per-connection state is a C struct** in a table indexed by the descriptor:
  no Python object per connection or per message, and 10,000 idle
  connections cost a few hundred KiB.
* **Stop**: SIGTERM/SIGINT run a C signal handler that writes an eventfd the
  loop watches; the loop returns, every connection is closed, the previous
  handlers come back, and ``serve`` returns so the process exits 0.
* **Errors**: the C core returns ``-errno``; the Python side raises
  ``OSError(errno, strerror)``, so a fatal error reads like any other.
* **RLIMIT_NOFILE**: the soft limit is raised to the hard limit at start.
* **Framed protocols**: ``--protocol frame|json`` are parsed in the same nogil
  loop, by the C code of ``ext/wire.h``, with no Python object per message:
  complete messages are answered from the buffer they were read into, a
  partial one waits in a buffer of its own.  The JSON header parser is
  strict (a flat object of string and int64 values) and decides exactly as
  the Python servers' ``protocols.parse_json_header`` (fuzzed against it in
  ``tests/unit/test_wire.py``); the answer header is byte for byte theirs.  A
  malformed message closes its connection only, after the answers before it,
  with one stderr line.  ``--max-message`` is at most 1 GiB here.
* **Limits**: ``--idle-timeout`` (at most ``MAX_IDLE_TIMEOUT_S``, 23 days, here:
  the clocks are 32-bit milliseconds) and ``--max-buffered`` run in the same
  loop, with the reasons worded by ``contract.Limits``; without them the loop
  never reads a clock.

Over TLS (``--tls``, ``raw``) the core is ``sockbench.ext.tls_echo``
(``ext/tls_echo.pyx``): the same loop with OpenSSL driven from it without the
GIL: non-blocking ``SSL_read_ex``/``SSL_write_ex`` on the socket itself,
read-ahead so that one ``read`` takes every record there is, all the records
of one readiness answered with one write, a short write's tail retried with
the same bytes, each connection's SSL* in the C table, handshakes swept for
the timeout only while some are in progress.  Built only where OpenSSL 3's
headers are found; ``sockbench servers`` says when it is not.

The datagram form (``serve_datagram``, ``--transport udp``) is
``sockbench.ext.udp_echo`` (``ext/udp_echo.pyx``): the same shape (one nogil
loop, level-triggered epoll, a stop eventfd, ``-errno`` then ``OSError``), but
batched, because a datagram costs one system call each way: ``recvmmsg``
takes up to 64 datagrams with their senders' addresses, and ``sendmmsg``
answers them all from where they lie.  A full send buffer keeps the unsent
rest of the batch and stops reading until it is out (bounded memory); a
datagram that cannot go back is lost alone.  ``raw`` only over udp: one
datagram is one message.
"""

from sockbench.errors import UsageError
from sockbench.ext import epoll_echo, udp_echo
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE
from sockbench.servers.tls import timeout_reason

__all__ = ["serve", "serve_datagram"]


def serve(listener, announce, options):
    name = options.get("name", "cython")
    max_message = options.get("max_message") or DEFAULT_MAX_MESSAGE
    if max_message > epoll_echo.MAX_MESSAGE_LIMIT:
        raise UsageError(f"server {name!r}: --max-message is at most {epoll_echo.MAX_MESSAGE_LIMIT} bytes here")
    limits = options.get("limits")
    idle_timeout = options.get("idle_timeout") or 0
    if idle_timeout > epoll_echo.MAX_IDLE_TIMEOUT_S:
        raise UsageError(f"server {name!r}: --idle-timeout is at most {epoll_echo.MAX_IDLE_TIMEOUT_S} s here")
    reasons = {}
    if limits is not None:
        reasons = {"idle_reason": limits.idle_reason if limits.idle_timeout else "",
                   "buffered_reason": limits.buffered_reason if limits.max_buffered else ""}
    tls = options.get("tls")
    if tls is not None:
        # deferred: the TLS core links OpenSSL and is built only where its headers were found (the registry checks)
        from sockbench.ext import tls_echo

        tls_echo.serve(listener.fileno(), announce, tls.cert, tls.key, version=tls.version, cipher=tls.cipher,
                       handshake_timeout=tls.handshake_timeout_s, name=name, idle_timeout=idle_timeout,
                       idle_reason=reasons.get("idle_reason") or "", timeout_reason=timeout_reason(tls.handshake_timeout_s))
        return
    epoll_echo.serve(listener.fileno(), announce,
                     protocol=options.get("protocol", "raw"), max_message=max_message, name=name,
                     idle_timeout=idle_timeout, max_buffered=options.get("max_buffered") or 0, **reasons)


def serve_datagram(sock, announce, options):
    udp_echo.serve(sock.fileno(), announce)
