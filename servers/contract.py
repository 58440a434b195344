"""What every echo server shares: the listening socket, the ready line, the stop signals, the log lines.

Each server module implements only its own I/O model.  Binding, error
messages and the process contract (one JSON ready line on stdout, exit 0 on
SIGTERM/SIGINT) live here so that every server behaves the same from outside.

The faults a server meets are handled the same way in every model, and worded
here once, so that one bad or unlucky peer never costs more than its own
connection and one line on stderr:

* ``format_peer`` is the one spelling of a peer in a log line, ``HOST:PORT``
  (``[V6]:PORT``, ``a unix peer``); ``log_closing`` is the line for a connection the server
  closes (a malformed message, an unexpected error, a limit below).
* ``AcceptErrors``: accept() out of descriptors or memory (EMFILE, ENFILE,
  ENOBUFS, ENOMEM) pauses accepting for ``ACCEPT_PAUSE_S`` and says so in one
  line, then at most one a second while it lasts.  The waiting connections
  stay in the listen queue; the open ones are served meanwhile.
* ``listen`` uses one backlog for every server: the system's maximum
  (``net.core.somaxconn``) unless ``--backlog`` asks for less, so a burst of
  connects waits in the queue instead of in the client's 1 s SYN retry.
* ``Limits``: ``--idle-timeout`` and ``--max-buffered``, both off unless asked
  for.  A benchmark wants neither: an idle timeout would cut the connections a
  slow load leaves quiet, and a cap would turn big-message workloads into
  errors; they are there for a server that faces peers it does not control.
"""

import atexit
import errno
import faulthandler
import ipaddress
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time

from sockbench.endpoints import DEFAULT_HOSTS, Endpoint, check_transport, check_unix_path_length, format_hostport
from sockbench.errors import SockbenchError, UsageError
from sockbench.servers import registry
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE
from sockbench.servers.tls import check_files as check_tls_files
from sockbench.servers.tls import ensure_certificate

__all__ = [
    "RECV_SIZE",
    "MAX_DATAGRAM",
    "DATAGRAM_BUFFER",
    "STOP_SIGNALS",
    "ACCEPT_PAUSE_S",
    "read_buffer",
    "system_backlog",
    "listen",
    "remove_socket_file",
    "remove_orphaned_socket_files",
    "sweep_stale_folders",
    "format_peer",
    "log",
    "log_closing",
    "malformed",
    "unexpected",
    "AcceptErrors",
    "Limits",
    "set_nodelay",
    "stop_event",
    "run_server",
    "StopServing",
    "burner",
]

#: Bytes asked of one read.  Also the most a connection holds unsent in user
#: space: a server stops reading a connection while its echo is pending.
#: Read with ``recv_into`` into a buffer allocated once, never with
#: ``sock.recv(RECV_SIZE)``: glibc serves a 256 KiB request with mmap, so a
#: fresh bytes object per read costs an mmap, an mremap and a munmap (measured
#: here: the selectors server at 100 connections x 64 B spent 24 µs of system
#: CPU per message that way, against 6 µs with recv_into).
RECV_SIZE = 256 * 1024

#: the largest UDP payload over IPv4 (65,535 - 8 B UDP header - 20 B IP header): the largest
#: datagram a server echoes and a load sends (``--size`` over udp)
MAX_DATAGRAM = 65507
#: a datagram server's receive buffer (per datagram): every UDP payload fits, IPv6's 65,527 B too
DATAGRAM_BUFFER = 65536

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: the longest a stop signal may wait to be seen by a main thread that blocks in a system call: one that lands
#: just before the call runs its C handler there, and the Python handler waits until the call returns, so such a
#: call is bounded by this (``blocking``'s accept and receive, ``socketserver``'s poll, the ``--workers`` supervisor's
#: wait)
STOP_POLL_S = 0.2
#: a server sent this writes every thread's Python stack to stderr and serves on (``faulthandler``): what
#: ``ServerProcess.stop`` asks of a server that did not stop on SIGTERM, before it kills it
STACKS_SIGNAL = signal.SIGUSR2

#: how long accepting pauses after accept() ran out of descriptors or memory
ACCEPT_PAUSE_S = 0.1

_SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def read_buffer(size=RECV_SIZE):
    """A writable, page-aligned memoryview of ``size`` bytes to ``recv_into``, allocated once.

    An anonymous mapping of its own, not a malloc'd block, for two reasons:
    the kernel copies into a page-aligned buffer markedly faster than into one
    16 bytes past a 32-byte boundary, where malloc puts a large block (the
    Cython servers align theirs for the same reason); and it goes back to the
    kernel (munmap) with its last view, where glibc keeps a freed block of
    this size resident in its heap (the ``blocking`` server has one per thread).
    """
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


class StopServing(BaseException):
    """Raised by a stop-signal handler to unwind a blocking server's main thread."""


# --- log lines ----------------------------------------------------------------------------------

_log_lock = threading.Lock()  # the blocking server logs from many threads: one line at a time


def format_peer(addr):
    """A peer as every log line spells it: ``HOST:PORT``, ``[V6]:PORT`` for IPv6, ``a unix peer``.

    An AF_UNIX peer's address is a string: empty for the usual unnamed client
    socket, else its path (``unix:PATH``).
    """
    if isinstance(addr, (tuple, list)) and len(addr) >= 2:
        return format_hostport(addr[0], addr[1])
    if addr == "" or addr == b"":
        return "a unix peer"
    if isinstance(addr, (str, bytes)):
        return f"unix:{os.fsdecode(addr)}"
    return str(addr) if addr else "an unknown peer"


def log(server, text):
    """One line on stderr, ``sockbench serve NAME: TEXT``; a newline inside ``text`` never splits it."""
    line = f"sockbench serve {server}: {' '.join(str(text).splitlines())}\n"
    with _log_lock:
        sys.stderr.write(line)
        sys.stderr.flush()


def log_closing(server, peer, reason):
    """The one line for a connection the server closes: ``closing HOST:PORT: REASON``."""
    log(server, f"closing {format_peer(peer)}: {reason}")


def malformed(error):
    """``log_closing``'s reason for a malformed message (see ``protocols``)."""
    return f"malformed message: {error}"


def unexpected(exc):
    """``log_closing``'s reason for an exception no handler expected: its type and message, never a traceback."""
    text = str(exc)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"unexpected error: {type(exc).__name__}: {text}" if text else f"unexpected error: {type(exc).__name__}"


# --- accepting ----------------------------------------------------------------------------------

#: accept() failures that concern only the connection being taken: go on with the next one
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR, errno.EAGAIN})
_ACCEPT_HINTS = {
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.ENFILE: "the system's file table is full (fs.file-max)",
    errno.ENOBUFS: "the kernel is out of socket memory",
    errno.ENOMEM: "the kernel is out of memory",
}


class AcceptErrors:
    """What a server does when accepting fails: skip that connection, or pause accepting, saying so at most once a second."""

    def __init__(self, server):
        self.server = server
        self._next_line = 0.0
        self._unsaid = 0

    def pause_for(self, exc):
        """Seconds to stop accepting after ``exc``; 0: take the next connection now.

        ``exc`` is an ``OSError`` from accept(), or anything unexpected raised
        while a connection was taken.  A pause is logged: one line at once,
        then at most one a second while it lasts, with how often it happened
        in between.
        """
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_SKIP:
            return 0.0
        now = time.monotonic()
        if now < self._next_line:
            self._unsaid += 1
            return ACCEPT_PAUSE_S
        if isinstance(exc, OSError) and exc.errno is not None:
            why = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
            hint = _ACCEPT_HINTS.get(exc.errno)
            if hint:
                why += f"; {hint}"
        else:
            why = unexpected(exc)
        again = f" ({self._unsaid} more times since the last line)" if self._unsaid else ""
        log(self.server, f"cannot accept connections: {why}; accepting pauses while it lasts, "
                         f"open connections are still served{again}")
        self._next_line = now + 1.0
        self._unsaid = 0
        return ACCEPT_PAUSE_S


# --- --idle-timeout and --max-buffered ----------------------------------------------------------


class Limits:
    """``--idle-timeout`` and ``--max-buffered`` for one server: per-connection clocks and one shared byte count.

    A connection is any hashable object of the server's (its socket, its
    protocol).  ``progress(conn)`` restarts its clock: a complete message
    arrived (with ``raw``, any byte, since every read is echoed whole).
    ``idle()`` returns, and forgets, the connections whose clock ran past
    ``idle_timeout``: the server closes them with ``log_closing(...,
    IDLE_REASON)`` and checks again every ``sweep_s``.  ``hold(conn, n)``
    records that ``conn`` holds ``n`` bytes of partial messages; it returns
    False, and forgets ``conn``, when that would take the total over
    ``max_buffered``: the server closes that connection.  ``forget(conn)`` when
    a connection closes.  Safe to use from several threads.
    """

    def __init__(self, idle_timeout=None, max_buffered=None):
        self.idle_timeout = idle_timeout or None
        self.max_buffered = max_buffered or None
        #: how often a server looks for idle connections: a connection is closed
        #: between ``idle_timeout`` and ``idle_timeout + sweep_s`` after its last message
        self.sweep_s = min(1.0, self.idle_timeout / 4) if self.idle_timeout else None
        self._last = {}
        self._held = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def idle_reason(self):
        return f"no complete message for {self.idle_timeout:g} s (--idle-timeout)"

    @property
    def buffered_reason(self):
        return f"partial messages would hold more than {self.max_buffered} bytes in all (--max-buffered)"

    def progress(self, conn):
        if self.idle_timeout:
            self._last[conn] = time.monotonic()

    opened = progress

    def hold(self, conn, nbytes):
        with self._lock:
            old = self._held.pop(conn, 0)
            total = self._total - old + nbytes
            if total > self.max_buffered:
                self._total -= old
                return False
            if nbytes:
                self._held[conn] = nbytes
            self._total = total
            return True

    def held(self):
        """Bytes of partial messages held now, over every connection."""
        return self._total

    def forget(self, conn):
        self._last.pop(conn, None)
        if self.max_buffered:
            with self._lock:
                self._total -= self._held.pop(conn, 0)

    def idle(self):
        if not self.idle_timeout:
            return []
        limit = time.monotonic() - self.idle_timeout
        with self._lock:
            gone = [conn for conn, last in self._last.copy().items() if last <= limit]
        for conn in gone:
            self.forget(conn)
        return gone


# --- the listening socket -----------------------------------------------------------------------


def system_backlog():
    """The largest listen backlog the kernel grants (``net.core.somaxconn``); ``socket.SOMAXCONN`` if unreadable."""
    try:
        with open(_SOMAXCONN_PATH) as f:
            return max(1, int(f.read().strip()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


def listen(transport="tcp", host=None, port=0, path=None, backlog=None, reuse_port=False):
    """Return a bound socket for ``transport``, or raise a one-line SockbenchError.

    tcp, tcp6 and unix: a listening SOCK_STREAM socket; udp: a bound
    SOCK_DGRAM socket.  ``host`` None is the transport's loopback
    (``endpoints.DEFAULT_HOSTS``).  ``backlog`` None is the system's maximum
    (``system_backlog()``); the kernel caps any larger one there.  For unix,
    see ``_bind_unix``: the socket file (and the private directory made for
    it) is removed by ``remove_socket_file`` or, at the latest, when this
    process exits.  ``reuse_port``: set ``SO_REUSEPORT`` before binding (``--workers``, see ``workers``).
    """
    check_transport(transport)
    if backlog is None:
        backlog = system_backlog()
    if transport == "unix":
        if host is not None or port:
            raise UsageError("--host and --port apply to tcp, tcp6 and udp; a unix socket takes --path")
        return _bind_unix(path, backlog)
    if path is not None:
        raise UsageError(f"--path applies to --transport unix, not {transport}")
    host = DEFAULT_HOSTS[transport] if host is None else host
    endpoint = Endpoint(transport, host, port)
    if transport == "tcp6" and not _is_v6_host(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass  # a host name: resolved in AF_INET6 below
        else:
            raise UsageError(f"--host {host} is an IPv4 address; tcp6 binds an IPv6 one, such as ::1 (the default)")
    try:
        # tcp and udp take the family from the host (tcp with an IPv6 host is served, and announced, as tcp6)
        infos = socket.getaddrinfo(host, port, endpoint.family if transport == "tcp6" else socket.AF_UNSPEC,
                                   endpoint.socktype, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SockbenchError(f"cannot resolve host {host!r} for {transport}: {e.strerror}; "
                             f"pass an address such as {DEFAULT_HOSTS[transport]}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, endpoint.socktype)
    try:
        if endpoint.stream:
            # not for udp: there SO_REUSEADDR lets a second socket bind the same port and split the datagrams
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if endpoint.stream:
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        where = format_peer((host, port))
        if e.errno == errno.EADDRINUSE:
            raise SockbenchError(f"address {where} is already in use; stop what holds it or pick another --port (0 picks a free one)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise SockbenchError(f"address {where} is not an address of this machine; use 127.0.0.1, ::1 or a local interface") from None
        if e.errno == errno.EACCES:
            raise SockbenchError(f"no permission to bind {where}; use a port above 1023") from None
        raise SockbenchError(f"cannot listen on {where}: {e.strerror}") from None
    return sock


def _is_v6_host(host):
    return ":" in host


#: path -> (the private directory made for it or None, the pid that bound it): what
#: ``remove_socket_file`` and the exit hook remove
_socket_files = {}

#: the private directories of unix sockets: ``tempfile.mkdtemp``'s prefix
PRIVATE_PREFIX = "sockbench-"
#: the socket file in a private directory
PRIVATE_SOCKET = "echo.sock"
#: a private socket nobody listens on, this much older than now, was left by a server that was killed
STALE_AFTER_S = 10.0


def _bind_unix(path, backlog):
    """A listening AF_UNIX socket at ``path``, or in a fresh private directory (mode 0700) when it is None.

    A file already at ``path`` is replaced only when it is a socket that no one
    listens on (a stale one left by a killed server); a live socket, any other
    file, a missing directory and a path longer than ``UNIX_PATH_MAX`` bytes
    are one-line errors.
    """
    private = None
    if path is None:
        sweep_stale_folders()
        # mkdtemp makes the directory 0700: no other user can connect to, or replace, the socket
        private = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
        path = os.path.join(private, PRIVATE_SOCKET)
    else:
        path = os.path.abspath(path)
        check_unix_path_length(path)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise UsageError(f"--path {path}: directory {folder} does not exist")
        _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if private:
            shutil.rmtree(private, ignore_errors=True)
        raise SockbenchError(f"cannot listen on unix:{path}: {e.strerror}") from None
    if not _socket_files:
        atexit.register(_remove_all_socket_files)
    _socket_files[path] = (private, os.getpid())
    return sock


def _clear_stale(path):
    """Remove a socket file at ``path`` that no one listens on; refuse anything else that is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"--path {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--path {path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its server is gone
        return
    except OSError as e:
        raise UsageError(f"--path {path}: cannot tell whether the socket there is in use: {e.strerror}") from None
    finally:
        probe.close()
    raise UsageError(f"--path {path} is in use: a server listens there; stop it or choose another path")


def sweep_stale_folders(tmp=None, now=None):
    """Remove the private socket folders (this user's) that servers killed before they could left behind.

    A folder qualifies when it holds nothing but its socket, the socket is
    older than ``STALE_AFTER_S`` (so one being bound right now is never
    taken) and a connect to it is refused (nobody listens; a live server with
    a full backlog answers EAGAIN instead).  Returns the folders removed.
    """
    tmp = tmp or tempfile.gettempdir()
    now = time.time() if now is None else now
    removed = []
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(PRIVATE_PREFIX)]
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(tmp, name)
        sock_path = os.path.join(folder, PRIVATE_SOCKET)
        try:
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or os.listdir(folder) != [PRIVATE_SOCKET]:
                continue
            sst = os.lstat(sock_path)
        except OSError:
            continue
        if not stat.S_ISSOCK(sst.st_mode) or now - sst.st_mtime < STALE_AFTER_S or not _refused(sock_path):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _refused(path):
    """True when a connect to the unix socket ``path`` is refused: nobody listens there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def remove_orphaned_socket_files():
    """Remove every unix socket file (and private folder) ``listen`` made, whichever process bound it.

    For a ``--workers`` worker whose supervisor, which bound the socket, was
    killed: its workers, stopping with it, take the folder with them.
    """
    for path, (private, _) in list(_socket_files.items()):
        _socket_files[path] = (private, os.getpid())
        remove_socket_file(path)


def remove_socket_file(sock_or_path):
    """Remove a unix socket file that ``listen`` made here (and its private directory); anything else is left alone.

    Only the process that bound it removes it: a forked worker that exits must
    not take the socket away from the others.
    """
    path = sock_or_path if isinstance(sock_or_path, str) else _sockname_path(sock_or_path)
    owner = _socket_files.get(path)
    if owner is None or owner[1] != os.getpid():
        return
    del _socket_files[path]
    private = owner[0]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if private:
        shutil.rmtree(private, ignore_errors=True)


def _sockname_path(sock):
    try:
        if sock.family != socket.AF_UNIX:
            return None
        name = sock.getsockname()
    except OSError:
        return None
    return name if isinstance(name, str) else os.fsdecode(name)


def _remove_all_socket_files():
    for path in list(_socket_files):
        remove_socket_file(path)


def set_nodelay(sock):
    """Disable Nagle on an accepted socket: an echo must leave at once.  A no-op where there is no Nagle (AF_UNIX)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stop_event(loop):
    """An ``asyncio.Event`` that SIGTERM or SIGINT sets: the asyncio servers serve until it is set."""
    # deferred: the blocking, selectors and cython servers never load asyncio, and their
    # peak RSS (reported with every result) does not carry it
    import asyncio

    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


def _spin(n):
    for _ in range(n):
        pass


def burner(burn_us, clock=time.perf_counter_ns):
    """``burn()``: a fixed piece of work that takes ``burn_us`` µs on this CPU (``--burn-us``, a test option).

    A loop of n turns, with n calibrated now from the time of 0 and of many turns (a call's own cost, then
    the cost of a turn), so that the work per call, not a clock, is what is fixed: a regression adds work.
    """
    def best(n, tries=7):
        out = []
        for _ in range(tries):
            t0 = clock()
            _spin(n)
            out.append(clock() - t0)
        return min(out)

    big = 200_000
    fixed = best(0)
    per_turn = max(1e-3, (best(big) - fixed) / big)
    n = max(0, round((burn_us * 1000.0 - fixed) / per_turn))

    def burn():
        _spin(n)

    burn.turns = n
    return burn


def _server_and_options(name, protocol="raw", max_message=None, idle_timeout=None, max_buffered=None, transport="tcp",
                        tls=None, burn_us=None):
    """Look ``name`` up and check that it speaks ``protocol`` over ``transport``; return its serve function and ``options``.

    The function is the module's ``serve`` for a stream transport and its
    ``serve_datagram`` for udp (``registry.ServerSpec.load``).  ``options``
    holds ``name``, ``transport``, ``protocol`` (raw, frame or json; see
    ``protocols``), ``max_message`` (the largest message it accepts),
    ``idle_timeout`` and ``max_buffered`` (None when off), ``limits``: a
    ``Limits`` for them, or None when both are off, and ``tls``: ``tls``, a
    checked ``servers.tls.TlsConfig`` with its certificate and key, or None.
    Raises a one-line ``UsageError`` for an unknown name, a protocol or
    transport the server does not speak (over TLS too), ``--max-buffered``
    with ``raw`` (which holds no partial messages), a bad certificate or key,
    or a server that is not built here.
    """
    spec = registry.get(name)
    check_transport(transport)
    if protocol not in spec.protocols:
        raise UsageError(f"server {name!r} does not speak protocol {protocol!r}; it speaks: {', '.join(spec.protocols)}")
    if max_buffered and protocol == "raw":
        raise UsageError("--max-buffered applies to --protocol frame and json; raw holds no partial messages")
    if transport == "udp" and protocol != "raw":
        # a datagram is one message already: a frame or json header inside it would add nothing
        raise UsageError(f"--protocol {protocol} does not apply over udp: one datagram is one message; use --protocol raw")
    if transport == "udp" and idle_timeout:
        raise UsageError("--idle-timeout applies to the stream transports; udp has no connection to close")
    serve = spec.load(transport)
    if burn_us and not getattr(sys.modules.get(spec.module), "BURNS", False):
        raise UsageError(f"--burn-us is a test option of asyncio-protocol and uvloop; server {name!r} has none")
    if tls is not None:
        spec.check_tls(protocol, transport)
        tls.check()
        if tls.cert is not None or tls.key is not None:
            check_tls_files(tls.cert, tls.key)
    limits = Limits(idle_timeout, max_buffered) if (idle_timeout or max_buffered) else None
    return serve, {
        "name": name,
        "transport": transport,
        "protocol": protocol,
        "max_message": max_message or DEFAULT_MAX_MESSAGE,
        "idle_timeout": idle_timeout or None,
        "max_buffered": max_buffered or None,
        "limits": limits,
        "burn": burner(burn_us) if burn_us else None,
        "tls": tls,
    }


def _announcer(name, transport, listener, backlog, extra=None):
    """``announce()``: print the ready line for ``listener``, once, however often it is called.

    ``{"event": "ready", "server", "transport", "host", "port" | "path", "pid", "backlog"}``;
    ``backlog`` for the stream transports only; ``extra`` fields added last
    (``--workers``: ``pid`` the first worker's, ``pids`` every worker's).
    """
    endpoint = Endpoint.from_sockname(transport, listener.getsockname())
    announced = []

    def announce():
        if announced:
            return
        announced.append(True)
        line = {"event": "ready", "server": name, **endpoint.ready_fields(), "pid": os.getpid()}
        if endpoint.stream:
            line["backlog"] = backlog
        line.update(extra or {})
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    return announce


def _effective_backlog(name, backlog):
    """The backlog the kernel will use: ``backlog``, or the system's maximum when it is None or above it (said in one line)."""
    most = system_backlog()
    if backlog is None:
        return most
    if backlog > most:
        log(name, f"warning: --backlog {backlog} is above the system's maximum (net.core.somaxconn = {most}); the kernel uses {most}")
        return most
    return backlog


def _warn_if_every_interface(name, listener):
    """One warning line when the listener is bound to the unspecified address (0.0.0.0 or ::)."""
    if listener.family == socket.AF_UNIX:
        return
    host, port = listener.getsockname()[:2]
    try:
        everywhere = ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return
    if everywhere:
        log(name, f"warning: listening on {format_peer((host, port))}, every interface: this echo server is reachable "
                  f"from the network; bind 127.0.0.1 or ::1 to keep it on this machine")


def _with_certificate(options):
    """``options`` whose TLS has a certificate: without ``--cert``/``--key``, a self-signed pair made for this
    process in a private directory (mode 0700), removed when it exits.  Returns that directory, or None."""
    tls = options.get("tls")
    if tls is None or tls.cert is not None:
        return None
    folder = tempfile.mkdtemp(prefix="sockbench-tls-")
    atexit.register(shutil.rmtree, folder, True)
    options["tls"] = tls.with_files(*ensure_certificate(folder))
    return folder


def run_server(name, transport="tcp", host=None, port=0, path=None, protocol="raw", max_message=None, backlog=None,
               idle_timeout=None, max_buffered=None, workers=None, tls=None, burn_us=None):
    """The ``sockbench serve NAME`` contract: bind, announce, serve, exit 0 on a stop signal.

    A unix socket's file (and its private directory) is removed on the way out.
    ``workers`` N (``--workers``): N processes of the server, see ``workers``.
    ``tls`` (``--tls``): a ``servers.tls.TlsConfig``; the ready line adds ``"tls"``.
    """
    serve, options = _server_and_options(name, protocol, max_message, idle_timeout, max_buffered, transport, tls,
                                         burn_us)
    faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True)  # a signal handler in C: no GIL needed
    _with_certificate(options)
    backlog = _effective_backlog(name, backlog)
    options["backlog"] = backlog
    extra = {"tls": options["tls"].ready_fields()} if options["tls"] is not None else None
    if workers is not None:
        return _run_workers(name, workers, transport, host, port, path, backlog, serve, options, extra)
    listener = listen(transport, host, port, path, backlog)
    if transport == "tcp" and listener.family == socket.AF_INET6:
        transport = options["transport"] = "tcp6"  # --host ::1: the ready line says what it is
    socket_path = _sockname_path(listener)  # now: a server may close the listener itself
    try:
        _warn_if_every_interface(name, listener)
        serve(listener, _announcer(name, transport, listener, backlog, extra), options)
    except StopServing:
        pass
    finally:
        listener.close()
        if socket_path:
            remove_socket_file(socket_path)
    return 0


def _run_workers(name, n, transport, host, port, path, backlog, serve, options, extra=None):
    """``run_server`` with ``--workers N``: the same listen and ready line, served by N processes."""
    # deferred: a real cycle (workers builds on this module's stop signals and log lines)
    from sockbench.servers.workers import check_workers, serve_workers

    check_workers(n)
    socket_path = None

    def tracked_listen(*args, **kwargs):
        nonlocal socket_path
        sock = listen(*args, **kwargs)
        socket_path = socket_path or _sockname_path(sock)
        if transport == "tcp" and sock.family == socket.AF_INET6:
            options["transport"] = "tcp6"  # before the workers are forked: they serve what the ready line says
        return sock

    def announcer(listener, more):
        _warn_if_every_interface(name, listener)
        return _announcer(name, options.get("transport", transport), listener, backlog, {**(extra or {}), **more})

    try:
        return serve_workers(n, name, tracked_listen, transport, host, port, path, backlog, serve, options, announcer)
    finally:
        if socket_path:
            remove_socket_file(socket_path)
