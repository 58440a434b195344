"""``cython``: an epoll echo server compiled with Cython, whose whole loop runs in C without the GIL.

Why it is built this way: every other row pays for Python on each message (a
bytes object, a method call, an event-loop callback).  This row shows what is
left when none of that happens: a few hundred instructions of user space per
message, and the kernel's read, write and delivery.  This module only adapts
the C cores to the registry contract; their headers say how each is built:

* stream (tcp, tcp6, unix): ``ext/epoll_echo.pyx``: level-triggered epoll in
  one ``with nogil:``, per-connection state in a C table indexed by the
  descriptor, read then send back from one shared buffer keeping only the
  unsent tail, no reading while a tail is pending (bounded memory, and the
  echo is flushed before a half-close), ``--protocol frame|json`` parsed by
  ``ext/wire.h`` exactly as ``protocols.parse_json_header`` decides.
* TLS (``--tls``, raw): ``ext/tls_echo.pyx``, the same loop driving OpenSSL on
  the socket; built only where OpenSSL 3's headers are found (``sockbench
  servers`` says when not).
* udp (raw only: one datagram is one message): ``ext/udp_echo.pyx``, batched
  with ``recvmmsg``/``sendmmsg`` since a datagram costs a system call each way.

As in every server: one bad peer closes only its own connection with one
stderr line, EMFILE pauses accepting instead of spinning, SIGTERM/SIGINT stop
the loop through an eventfd, ``-errno`` from C is raised as ``OSError``,
RLIMIT_NOFILE is raised to its hard limit, and ``--idle-timeout`` (at most
``MAX_IDLE_TIMEOUT_S``: the clocks are 32-bit milliseconds) and
``--max-buffered`` are worded by ``contract.Limits``.
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
