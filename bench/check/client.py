"""Small, careful echo clients for the checks (and the conformance tests, which import them).

Everything here is bounded in time: every socket has a timeout, and every
loop a deadline, so a misbehaving server fails a check instead of hanging it.
A check fails by raising ``Failed`` (an ``AssertionError``, so pytest shows it
as any failed assertion) with what was seen.  Over TLS (``sockbench check
--tls``) a connection is a ``TlsConn``, which reads like a blocking socket and
half-closes with close_notify, so every stream check runs unchanged.
"""

import ctypes
import errno
import os
import random
import resource
import selectors
import socket
import ssl
import threading
import time

__all__ = [
    "Failed",
    "TIMEOUT_S",
    "payload",
    "connect",
    "tls_over",
    "TlsConn",
    "read_exact",
    "read_to_eof",
    "exchange",
    "send_without_reading",
    "echo_concurrently",
    "StreamPattern",
    "server_socket_option",
    "many_connections_echo",
    "echo_on",
    "open_connections",
    "connect_burst",
    "raise_nofile",
]

TIMEOUT_S = 10.0


class Failed(AssertionError):
    """A check saw the server misbehave; the message says what was seen."""


def payload(size, seed):
    """Random, reproducible bytes: a different stream per seed."""
    return random.Random(seed).randbytes(size)


def connect(addr, timeout=TIMEOUT_S, tls=None):
    """A connected blocking socket to ``addr``: ``(host, port)`` (IPv4 or IPv6) or a unix socket's path.

    ``tls``: a client ``SSLContext``: the connection is then a ``TlsConn`` over that socket, its handshake done.
    """
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(addr)
        except BaseException:
            s.close()
            raise
    else:
        host, port = addr[:2]
        s = socket.create_connection((host, port), timeout=timeout)
    return s if tls is None else tls_over(s, tls)


def tls_over(sock, tls):
    """``sock`` (connected) as a ``TlsConn``, its handshake done; on failure ``sock`` is closed and the error raised."""
    try:
        return TlsConn(sock, tls)
    except BaseException:
        sock.close()
        raise


class TlsConn:
    """A TLS client connection whose calls read like a blocking socket's, for the stream checks over TLS.

    ``sendall``, ``send``, ``recv``, ``settimeout``, ``setblocking``, ``setsockopt``,
    ``getsockname``, ``fileno``, ``close`` and the context manager, as a socket's;
    ``shutdown(SHUT_WR)`` is TLS's half-close: close_notify, after which reading
    goes on until the server's (``ssl.SSLSocket`` cannot do that).  The TLS is an
    ``ssl.SSLObject`` over memory BIOs on the plain socket, so a writer thread and
    a reader thread may use one connection at once (the checks do): each TLS call
    holds a lock, the socket's I/O is outside it, and records go out whole and in
    order under a second lock.  A TLS end of file without close_notify reads as
    end of file, as ``suppress_ragged_eofs`` has it.
    """

    CHUNK = 256 * 1024  # plaintext encrypted at once by sendall

    def __init__(self, sock, ctx):
        self._ssl = ssl
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False)
        self._lock = threading.Lock()
        self._wlock = threading.Lock()
        self._pending = b""  # ciphertext a non-blocking send left unsent
        self._plain = bytearray()  # plaintext decrypted, not yet returned by recv
        self._eof = False
        self._handshake()

    def _handshake(self):
        while True:
            with self._lock:
                try:
                    self._obj.do_handshake()
                    done = True
                    self._drain()  # what came after the server's Finished (its session tickets, maybe data)
                except self._ssl.SSLWantReadError:
                    done = False
                out = self._out.read()
            if out:
                self.sock.sendall(out)
            if done:
                return
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection during the TLS handshake")
            with self._lock:
                self._in.write(data)

    def version(self):
        return self._obj.version()

    def cipher(self):
        return self._obj.cipher()

    # --- writing -------------------------------------------------------------------------------
    def _encrypt(self, data):
        with self._lock:
            self._obj.write(data)
            return self._out.read()

    def sendall(self, data):
        view = memoryview(data).cast("B")
        with self._wlock:
            if self._pending:
                self.sock.sendall(self._pending)
                self._pending = b""
            for i in range(0, len(view), self.CHUNK):
                self.sock.sendall(self._encrypt(view[i:i + self.CHUNK]))

    def send(self, data):
        """Encrypt up to ``CHUNK`` bytes of ``data``; blocking, send them whole; non-blocking, what the socket takes
        (the rest of their ciphertext waits for the next write).  Returns the plaintext bytes taken."""
        view = memoryview(data).cast("B")[:self.CHUNK]
        with self._wlock:
            out = self._pending + self._encrypt(view)
            self._pending = b""
            if self.sock.gettimeout() == 0.0:
                try:
                    n = self.sock.send(out)
                except BlockingIOError:
                    n = 0
                self._pending = out[n:]
            else:
                self.sock.sendall(out)
        return len(view)

    def shutdown(self, how):
        """``SHUT_WR`` (or ``SHUT_RDWR``): close_notify, TLS's half-close; reading goes on until the server's."""
        with self._wlock:
            with self._lock:
                try:
                    self._obj.unwrap()
                except self._ssl.SSLWantReadError:
                    pass  # ours is written; the server's comes after its last data
                out = self._pending + self._out.read()
                self._pending = b""
            self.sock.sendall(out)
        if how == socket.SHUT_RDWR:
            self.sock.shutdown(how)

    # --- reading -------------------------------------------------------------------------------
    def _drain(self):
        """Under the lock: decrypt every whole record the incoming BIO holds into ``_plain``.

        So that no record waits in the BIO between two holders of the lock: a half-close's ``unwrap`` (whose
        second ``SSL_shutdown`` reads) would take one for data after close_notify, a fatal error in OpenSSL 3.
        """
        while True:
            try:
                chunk = self._obj.read(65536)
            except self._ssl.SSLWantReadError:
                return
            except (self._ssl.SSLZeroReturnError, self._ssl.SSLEOFError):
                self._eof = True  # close_notify, or the peer's end of file
                return
            if not chunk:
                self._eof = True
                return
            self._plain += chunk

    def recv(self, n):
        while True:
            with self._lock:
                if self._plain:
                    out = bytes(self._plain[:n])
                    del self._plain[:n]
                    return out
                if self._eof:
                    return b""
            data = self.sock.recv(65536)
            with self._lock:
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
                self._drain()
                out = self._out.read()
            if out and self._wlock.acquire(blocking=False):  # what reading made TLS write (rare); never wait on a writer
                try:
                    self.sock.sendall(out)
                except OSError:
                    pass  # the server is gone already: what it would have read does not matter
                finally:
                    self._wlock.release()

    # --- the socket's own ----------------------------------------------------------------------
    def settimeout(self, t):
        self.sock.settimeout(t)

    def setblocking(self, flag):
        self.sock.setblocking(flag)

    def gettimeout(self):
        return self.sock.gettimeout()

    def setsockopt(self, *args):
        self.sock.setsockopt(*args)

    def getsockname(self):
        return self.sock.getsockname()

    @property
    def family(self):
        return self.sock.family

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise Failed(f"no answer within {sock.gettimeout():g} s after {len(buf):,} of {n:,} bytes") from None
        except ConnectionResetError:
            raise Failed(f"connection reset after {len(buf):,} of {n:,} bytes") from None
        if not chunk:
            raise Failed(f"EOF after {len(buf):,} of {n:,} bytes")
        buf += chunk
    return bytes(buf)


def read_to_eof(sock, limit):
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            raise Failed(f"the server did not close within {sock.gettimeout():g} s ({len(buf):,} bytes read)") from None
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise Failed(f"more than {limit:,} bytes before EOF")


def exchange(addr, stream, timeout=10.0, tls=None):
    """Send ``stream``, half-close, read to EOF (or a reset).  Returns the bytes answered.

    A server may close (or reset) before it has read everything, as it does on
    a malformed message: a broken pipe while sending is not an error here.
    """
    with connect(addr, timeout=timeout, tls=tls) as s:
        got = bytearray()
        try:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on a malformed message before we finished writing
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise
            # its reset came after the last write and before the half-close: the same case
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise Failed(f"the server neither answered to the end nor closed within {timeout:g} s "
                         f"({len(got):,} bytes read)") from None
        return bytes(got)


def send_without_reading(sock, data):
    """Hand the kernel what it takes of ``data`` now, without blocking; leaves ``sock`` non-blocking.

    The echo of it stays unread, so the server has output pending for this connection.
    """
    sock.setblocking(False)
    try:
        sock.send(data)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass


def echo_concurrently(sock, data):
    """Send ``data`` from a thread while reading the echo here; return what came back."""
    errors = []

    def send():
        try:
            sock.sendall(data)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        got = read_exact(sock, len(data))
    except Failed as e:
        t.join(1)
        raise Failed(f"{e}{f' (sending failed: {errors[0]})' if errors else ''}") from None
    t.join(TIMEOUT_S)
    if errors:
        raise Failed(f"sending failed: {errors[0]}")
    return got


class StreamPattern:
    """An endless, non-repeating-within-a-window byte stream, checked chunk by chunk at C speed."""

    PERIOD = 65521  # prime, so chunk boundaries never line up with the period

    def __init__(self, seed):
        base = payload(self.PERIOD, seed)
        self._twice = memoryview(base * (2 + (1 << 20) // self.PERIOD + 1))

    def chunk(self, offset, n):
        start = offset % self.PERIOD
        assert n <= len(self._twice) - start
        return self._twice[start : start + n]


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_OPEN = 434
_SYS_PIDFD_GETFD = 438


def server_socket_option(pids, client_sock, level, option):
    """Read a socket option on the *server's* end of ``client_sock``, from outside the server.

    ``pids``: the server's process (or processes: a server that forks one per
    connection).  Uses pidfd_getfd(2) to borrow each of their TCP sockets and
    picks the one whose peer is our client.  Returns None where the kernel
    does not allow it or the socket is not found.
    """
    want = client_sock.getsockname()[:2]
    for pid in ([pids] if isinstance(pids, int) else pids):
        pidfd = _libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
        if pidfd < 0:
            continue
        try:
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                try:
                    if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                        continue
                except OSError:
                    continue
                fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
                if fd < 0:
                    return None
                s = socket.socket(fileno=fd)
                try:
                    if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                        continue
                    try:
                        peer = s.getpeername()[:2]
                    except OSError:
                        continue
                    if peer == want:
                        return s.getsockopt(level, option)
                finally:
                    s.close()
        finally:
            os.close(pidfd)
    return None


def open_connections(addr, count, within_s=TIMEOUT_S, tls=None):
    """``count`` connected sockets to ``addr``, opened one after another within ``within_s`` in all.

    A server that accepts slowly (a listen backlog of 5 overflows, and each
    dropped handshake waits for the SYN retry) fails here with what it
    managed, instead of taking minutes.  On failure every socket is closed.
    """
    socks = []
    end = time.monotonic() + within_s
    try:
        for i in range(count):
            left = end - time.monotonic()
            if left <= 0:
                raise Failed(f"only {i:,} of {count:,} connections opened within {within_s:g} s (the server accepts "
                             f"slowly: a short listen backlog?)")
            try:
                socks.append(connect(addr, timeout=min(TIMEOUT_S, left), tls=tls))
            except socket.timeout:
                raise Failed(f"only {i:,} of {count:,} connections opened within {within_s:g} s (the server "
                             f"accepts slowly: a short listen backlog?)") from None
            except OSError as e:
                raise Failed(f"connection {i + 1:,} of {count:,} failed: {e.strerror or e}") from None
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def many_connections_echo(addr, count, size, deadline_s=TIMEOUT_S, open_within_s=TIMEOUT_S, tls=None):
    """Open ``count`` connections (within ``open_within_s``), each echoing its own ``size`` random bytes, all at once.

    Non-blocking, one selector, bounded by ``deadline_s`` (over TLS, a thread
    per connection: ``echo_on``).  Returns the list of connection indexes
    whose echo was wrong or incomplete.
    """
    socks = open_connections(addr, count, open_within_s, tls=tls)
    try:
        return echo_on(socks, size, deadline_s)
    finally:
        for s in socks:
            s.close()


def echo_on(socks, size, deadline_s=TIMEOUT_S):
    """Echo ``size`` random bytes (a different stream each) on every socket of ``socks`` at once.

    Returns the indexes whose echo was wrong or incomplete within ``deadline_s``.
    The sockets are left non-blocking; the caller closes them.  ``TlsConn``s
    (which a selector cannot drive: a record may wait inside TLS) echo each in
    a thread of its own.
    """
    if socks and isinstance(socks[0], TlsConn):
        return _echo_on_tls(socks, size, deadline_s)
    sel = selectors.DefaultSelector()
    state = {}
    try:
        for i, s in enumerate(socks):
            s.setblocking(False)
            data = payload(size, seed=1000 + i)
            state[s] = {"i": i, "out": memoryview(data), "want": data, "got": bytearray()}
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, state[s])
        end = time.monotonic() + deadline_s
        pending = len(socks)
        while pending and time.monotonic() < end:
            for key, mask in sel.select(0.5):
                st = key.data
                s = key.fileobj
                if mask & selectors.EVENT_WRITE and st["out"]:
                    try:
                        n = s.send(st["out"])
                        st["out"] = st["out"][n:]
                    except BlockingIOError:
                        pass
                    except OSError:
                        st["out"] = st["out"][:0]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(s)
                        pending -= 1
                        continue
                    st["got"] += chunk
                    if len(st["got"]) >= size:
                        sel.unregister(s)
                        pending -= 1
        return [st["i"] for st in state.values() if bytes(st["got"]) != st["want"]]
    finally:
        sel.close()


def _echo_on_tls(conns, size, deadline_s):
    bad = []

    def one(i, c):
        data = payload(size, seed=1000 + i)
        try:
            if echo_concurrently(c, data) != data:
                bad.append(i)
        except (OSError, AssertionError):
            bad.append(i)

    threads = [threading.Thread(target=one, args=(i, c), daemon=True) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for i, t in enumerate(threads):
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():
            bad.append(i)
    return sorted(set(bad))


def connect_burst(addr, count, within_s):
    """Start ``count`` non-blocking connects at once; return ``(sockets, completed)`` after at most ``within_s``.

    ``addr`` is ``(host, port)`` or a unix socket's path.  A connect completes
    when the kernel finishes the handshake, which needs room in the server's
    listen queue, not the server itself: a SYN that finds the queue full is
    dropped, and that connect waits for the 1 s SYN retry.  The caller closes
    the sockets.
    """
    if isinstance(addr, str):
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    socks = []
    sel = selectors.DefaultSelector()
    completed = 0
    again = 0  # AF_UNIX: a full listen queue refuses a non-blocking connect at once (EAGAIN); tried again below
    end = time.monotonic() + within_s

    def start():
        nonlocal completed
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err == 0:
            completed += 1
            socks.append(s)
        elif err == errno.EINPROGRESS:
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        else:
            s.close()
            return False
        return True

    try:
        for _ in range(count):
            if not start():
                again += 1
        while (sel.get_map() or again) and time.monotonic() < end:
            for key, _ in sel.select(min(0.01, max(0.0, end - time.monotonic())) if again else
                                     max(0.0, end - time.monotonic())):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    completed += 1
            for _ in range(again):
                if start():
                    again -= 1
                else:
                    break
    finally:
        sel.close()
    return socks, completed


def raise_nofile(need):
    """Raise this process's soft RLIMIT_NOFILE to ``need`` (within the hard limit); return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
