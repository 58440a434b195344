"""Small, careful echo clients for the conformance suite.

Everything here is bounded in time: every socket has a timeout, and every
loop a deadline, so a misbehaving server fails a test instead of hanging it.
"""

import ctypes
import errno
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time

__all__ = [
    "payload",
    "connect",
    "read_exact",
    "read_to_eof",
    "exchange",
    "send_without_reading",
    "echo_concurrently",
    "StreamPattern",
    "server_socket_option",
    "many_connections_echo",
    "sockbench_cli",
    "one_line_error",
    "connect_burst",
    "listen_overflows",
    "stderr_lines",
]

TIMEOUT_S = 20.0


def payload(size, seed):
    """Random, reproducible bytes: a different stream per seed."""
    return random.Random(seed).randbytes(size)


def connect(addr, timeout=TIMEOUT_S):
    host, port = addr
    s = socket.create_connection((host, port), timeout=timeout)
    return s


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_to_eof(sock, limit):
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError(f"more than {limit} bytes before EOF")


def exchange(addr, stream, timeout=10.0):
    """Send ``stream``, half-close, read to EOF (or a reset).  Returns the bytes answered.

    A server may close (or reset) before it has read everything, as it does on
    a malformed message: a broken pipe while sending is not an error here.
    """
    with connect(addr, timeout=timeout) as s:
        got = bytearray()
        try:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on a malformed message before we finished writing
        except OSError as e:  # its reset arrived between our last write and the shutdown: the same close
            if e.errno != errno.ENOTCONN:
                raise
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        return bytes(got)


def send_without_reading(sock, data):
    """Hand the kernel what it takes of ``data`` now, without blocking; leaves ``sock`` non-blocking.

    The echo of it stays unread, so the server has output pending for this connection.
    """
    sock.setblocking(False)
    try:
        sock.send(data)
    except BlockingIOError:
        pass


def echo_concurrently(sock, data):
    """Send ``data`` from a thread while reading the echo here; return what came back."""
    errors = []

    def send():
        try:
            sock.sendall(data)
        except OSError as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = read_exact(sock, len(data))
    t.join(TIMEOUT_S)
    assert not errors, errors
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


def server_socket_option(pid, client_sock, level, option):
    """Read a socket option on the *server's* end of ``client_sock``, from outside the server.

    Uses pidfd_getfd(2) to borrow each of the server's TCP sockets and picks the
    one whose peer is our client.  Returns None where the kernel does not allow it.
    """
    pidfd = _libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        return None
    want = client_sock.getsockname()[:2]
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
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


def many_connections_echo(addr, count, size, deadline_s=TIMEOUT_S):
    """Open ``count`` connections, each echoing its own ``size`` random bytes, all at once.

    Non-blocking, one selector, bounded by ``deadline_s``.  Returns the list of
    connection indexes whose echo was wrong or incomplete.
    """
    sel = selectors.DefaultSelector()
    state = {}
    socks = []
    try:
        for i in range(count):
            s = connect(addr)
            s.setblocking(False)
            socks.append(s)
            data = payload(size, seed=1000 + i)
            state[s] = {"i": i, "out": memoryview(data), "want": data, "got": bytearray()}
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, state[s])
        end = time.monotonic() + deadline_s
        pending = count
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
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(1 << 16)
                    except BlockingIOError:
                        continue
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
        for s in socks:
            s.close()


def sockbench_cli(*args, timeout=20):
    """Run ``python -m sockbench ARGS`` to completion; returns the ``CompletedProcess`` (text)."""
    return subprocess.run([sys.executable, "-m", "sockbench", *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(result):
    """Check that a command failed with exactly one line on stderr, no traceback and nothing on stdout; return the line."""
    assert result.returncode != 0, f"exit status 0; stderr: {result.stderr!r}"
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), f"not one line: {result.stderr!r}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", f"stdout: {result.stdout[:200]!r}"
    return result.stderr[:-1]


def connect_burst(addr, count, within_s):
    """Start ``count`` non-blocking connects at once; return ``(sockets, completed)`` after at most ``within_s``.

    A connect completes when the kernel finishes the handshake, which needs
    room in the server's listen queue, not the server itself: a SYN that finds
    the queue full is dropped, and that connect waits for the 1 s SYN retry.
    The caller closes the sockets.
    """
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    socks = []
    sel = selectors.DefaultSelector()
    completed = 0
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            err = s.connect_ex(addr)
            if err == 0:
                completed += 1
            else:
                sel.register(s, selectors.EVENT_WRITE)
        end = time.monotonic() + within_s
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(max(0.0, end - time.monotonic())):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    completed += 1
    finally:
        sel.close()
    return socks, completed


def listen_overflows():
    """The kernel's TcpExt ListenOverflows counter (every listener of this network namespace), or None."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def stderr_lines(server, at_least=0, within_s=2.0):
    """The server's stderr lines, waiting up to ``within_s`` for there to be ``at_least`` of them."""
    end = time.monotonic() + within_s
    while True:
        lines = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
        if len(lines) >= at_least or time.monotonic() > end:
            return lines
        time.sleep(0.02)
