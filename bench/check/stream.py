"""The stream checks (tcp, tcp6, unix, raw): the echo contract as a client sees it, no pid needed.

Each check is what the serve contract promises (``shared/design.md``): byte
for byte and in order, whatever the message size and however many
connections; a half-close flushes what is pending, then the server closes;
memory stays bounded (a server stops reading a connection whose echo is
unsent), which a client sees as its writes blocking with nothing lost; one
peer that resets, idles or floods costs nobody else.  Sizes and counts are
chosen so that one server and transport takes seconds, not minutes.
"""

import socket
import struct
import threading
import time

from sockbench.bench.check.base import STREAM, Failed, NotApplicable, check
from sockbench.errors import SockbenchError
from sockbench.procfs import read_rss_bytes
from sockbench.bench.check.client import (
    StreamPattern, connect, connect_burst, echo_concurrently, echo_on, many_connections_echo, open_connections, payload,
    raise_nofile, tls_over,
    read_exact, read_to_eof, send_without_reading,
)

__all__ = ["ECHO_SIZES", "SLOW_READER_TOTAL", "first_difference", "write_then_read_size", "rss"]

MiB = 1 << 20
#: the echo check's sizes: around the MSS, 64 KiB, the servers' 256 KiB read, up to 16 MiB
ECHO_SIZES = (1, 2, 100, 1460, 4096, 65535, 65537, 256 * 1024 + 3, MiB, 4 * MiB, 16 * MiB)
#: what the slow reader writes without reading: several times what the kernel can hold on loopback
SLOW_READER_TOTAL = 128 * MiB
#: the slow reader's memory bound (when the pid is known): a server may grow by this much, no more
SLOW_READER_RSS = 48 * MiB
MANY = 200
IDLE = 1000
FLOOD = 500


def first_difference(got, want):
    """The first offset where two byte strings differ (their common length when one is a prefix of the other)."""
    n = min(len(got), len(want))
    step = 4096
    for i in range(0, n, step):
        if got[i : i + step] != want[i : i + step]:
            for j in range(i, min(i + step, n)):
                if got[j] != want[j]:
                    return j
    return n


def _echo_or_fail(sock, data, what):
    got = echo_concurrently(sock, data)
    if got != data:
        raise Failed(f"{what}: the echo differs from byte {first_difference(got, data):,}")


@check("echo", "echo byte for byte: 1 B to 16 MiB on one connection", transports=STREAM)
def echo_sizes(s):
    with connect(s.address, tls=s.tls) as sock:
        for i, size in enumerate(ECHO_SIZES):
            _echo_or_fail(sock, payload(size, seed=i), f"{size:,} B")
    return f"{len(ECHO_SIZES)} sizes, {sum(ECHO_SIZES) / MiB:.1f} MiB in all"


@check("many-connections", f"{MANY} connections at once, 16 KiB each, every echo whole and its own", transports=STREAM)
def many_connections(s):
    raise_nofile(MANY + 64)
    bad = many_connections_echo(s.address, tls=s.tls, count=MANY, size=16 * 1024 + 7)
    if bad:
        raise Failed(f"{len(bad)} of {MANY} connections got a wrong or missing echo (first: {bad[:5]})")


def write_then_read_size(transport):
    """What a client may write before reading: 1 MiB over TCP; over unix, what the two send buffers hold.

    An AF_UNIX stream has no receive buffer: what is in flight is charged to
    the sender's send buffer, so beyond both send buffers any bounded-memory
    echo (and the kernel) must stop taking bytes.
    """
    if transport != "unix":
        return MiB
    try:
        with open("/proc/sys/net/core/wmem_default") as f:
            wmem = int(f.read())
    except (OSError, ValueError):
        wmem = 212992
    return max(4096, wmem // 2)


@check("write-then-read", "a message written whole before a byte is read comes back whole (no deadlock)",
       transports=STREAM)
def write_then_read(s):
    size = write_then_read_size(s.transport)
    data = payload(size, seed=size)
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        try:
            sock.sendall(data)
        except socket.timeout:
            raise Failed(f"the server stopped reading before {size:,} bytes were taken (deadlock)") from None
        got = read_exact(sock, size)
    if got != data:
        raise Failed(f"the echo of {size:,} B differs from byte {first_difference(got, data):,}")
    return f"{size:,} B"


@check("half-close", "a half-close flushes everything pending, then the server closes", transports=STREAM)
def half_close(s):
    data = payload(3 * MiB + 11, seed=42)
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        errors = []

        def send():
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            got = read_to_eof(sock, limit=len(data))
        except ConnectionResetError:
            raise Failed("the server reset the connection after the client's half-close") from None
        sender.join(10)
    if got != data:
        raise Failed(f"got {len(got):,} of {len(data):,} bytes before the server closed"
                     + (f" (differing from byte {first_difference(got, data):,})" if data[: len(got)] != got else ""))
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        try:
            got = read_to_eof(sock, limit=100)
        except ConnectionResetError:
            raise Failed("a small message then a half-close: the server reset the connection") from None
    if got != b"last words":
        raise Failed(f"a small message then a half-close: got {got[:40]!r} before the server closed")
    return "3 MiB and 10 B, each followed by a half-close"


@check("pipelining", "10,000 small writes back to back, each not waiting for its echo: all echoed in order",
       transports=STREAM)
def pipelining(s):
    chunks = [payload(1 + (i * 37) % 200, seed=i) for i in range(10_000)]
    want = b"".join(chunks)
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        errors = []

        def send():
            try:
                for c in chunks:
                    sock.sendall(c)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = read_exact(sock, len(want))
        t.join(10)
    if errors:
        raise Failed(f"sending failed: {errors[0]}")
    if got != want:
        raise Failed(f"the echo differs from byte {first_difference(got, want):,} of {len(want):,}")
    return f"{len(chunks):,} writes, {len(want):,} B"


def rss(pids):
    """The summed RSS of ``pids`` (a server and its children), or None when it cannot be read."""
    total = 0
    for pid in pids:
        try:
            total += read_rss_bytes(pid)
        except (OSError, SockbenchError, ValueError):  # a child per connection may be gone between listing and reading it
            continue
    return total or None


@check("slow-reader", f"a client writes {SLOW_READER_TOTAL // MiB} MiB and reads nothing: the server stops reading "
       "(memory bounded), then everything comes back in order", transports=STREAM)
def slow_reader(s):
    total, chunk = SLOW_READER_TOTAL, MiB
    pattern = StreamPattern(seed=7)
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        _echo_or_fail(sock, b"warm", "the first bytes")
        base = rss(s.pids) if s.started else None
        sent = [0]

        def writer():
            try:
                while sent[0] < total:
                    sent[0] += sock.send(pattern.chunk(sent[0], min(chunk, total - sent[0])))
            except OSError:
                pass

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        # wait until the writer blocks (the server stopped reading) or everything went out
        last, still_since = -1, time.monotonic()
        end = time.monotonic() + 30
        while time.monotonic() < end and sent[0] < total:
            time.sleep(0.05)
            if sent[0] != last:
                last, still_since = sent[0], time.monotonic()
            elif time.monotonic() - still_since > 0.5:
                break
        blocked_at = sent[0]
        grown = rss(s.pids) - base if base is not None else None
        if blocked_at >= total:
            raise Failed(f"{total // MiB} MiB went out unread: the server kept reading and buffered it"
                         + (f" (RSS +{grown / MiB:.0f} MiB)" if grown is not None else ""))
        if grown is not None and grown > SLOW_READER_RSS:
            raise Failed(f"RSS grew by {grown / MiB:.1f} MiB with {blocked_at / MiB:.1f} MiB unread "
                         f"(at most {SLOW_READER_RSS // MiB} MiB)")
        got = 0
        end = time.monotonic() + 30
        while got < total:
            if time.monotonic() > end:
                raise Failed(f"the echo stopped at {got:,} of {total:,} bytes (30 s)")
            try:
                data = sock.recv(MiB)
            except socket.timeout:
                raise Failed(f"the echo stopped at {got:,} of {total:,} bytes") from None
            if not data:
                raise Failed(f"EOF after {got:,} of {total:,} bytes")
            if data != pattern.chunk(got, len(data)):
                raise Failed(f"wrong bytes at offset {got + first_difference(data, bytes(pattern.chunk(got, len(data)))):,}")
            got += len(data)
        t.join(10)
    memory = (f", RSS +{grown / MiB:.1f} MiB" if grown is not None
              else ", memory not measured (no pid: sockbench did not start the server)")
    return f"writes blocked after {blocked_at / MiB:.1f} MiB{memory}; {total // MiB} MiB back in order"


def _reset(sock):
    """Close with a reset (SO_LINGER 0), as a crashed peer's kernel does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@check("abrupt-peers", "peers that reset with echo pending, vanish mid-message or connect and leave disturb nobody",
       transports=STREAM)
def abrupt_peers(s):
    with connect(s.address, tls=s.tls, timeout=10) as steady:
        _echo_or_fail(steady, payload(100_000, seed=1), "the steady connection, before")
        rude = []
        for i in range(20):
            r = connect(s.address, tls=s.tls, timeout=10)
            send_without_reading(r, payload(MiB, seed=100 + i))
            rude.append(r)
        time.sleep(0.1)
        for r in rude:
            _reset(r)
        for i in range(20):  # gone before a byte, and gone inside a write
            r = connect(s.address, tls=s.tls, timeout=10)
            if i % 2:
                r.send(payload(1000, seed=i))
            _reset(r) if i % 4 < 2 else r.close()
        time.sleep(0.1)
        if not s.alive():
            raise Failed(f"the server exited after peers reset (status {s.server.proc.returncode})")
        _echo_or_fail(steady, payload(MiB, seed=3), "the steady connection, after")
    with connect(s.address, tls=s.tls, timeout=10) as fresh:
        _echo_or_fail(fresh, b"still here", "a new connection, after")
    return "20 resets with 1 MiB unread, 20 peers gone at once or mid-write"


@check("idle-connections", f"{IDLE:,} idle connections: a busy one is still served, and so are they",
       transports=STREAM)
def idle_connections(s):
    soft = raise_nofile(IDLE + 128)
    if soft < IDLE + 64:
        raise NotApplicable(f"this process may open {soft} descriptors, under the {IDLE + 64} the check needs "
                            f"(raise ulimit -n)")
    idle = open_connections(s.address, IDLE, within_s=20, tls=s.tls)
    try:
        with connect(s.address, tls=s.tls, timeout=10) as busy:
            for k in range(20):
                _echo_or_fail(busy, payload(4096, seed=k), f"the busy connection (message {k + 1})")
        sample = idle[:: IDLE // 10]
        for sock in sample:
            sock.settimeout(10)
        bad = echo_on(sample, 64, deadline_s=10)
        if bad:
            raise Failed(f"{len(bad)} of {len(sample)} idle connections sampled got no echo after idling")
    finally:
        for sock in idle:
            sock.close()
    return f"{IDLE:,} open at once"


@check("connect-flood", f"{FLOOD} connects at once: every one accepted and echoed", transports=STREAM)
def connect_flood(s):
    raise_nofile(FLOOD + 128)
    socks, completed = connect_burst(s.address, FLOOD, within_s=5.0)
    try:
        if completed < FLOOD:
            raise Failed(f"{FLOOD - completed} of {FLOOD} connects did not complete within 5 s")
        if s.tls is not None:  # then every one's handshake, one after another, before the echoes
            for i, sock in enumerate(socks):
                sock.setblocking(True)
                sock.settimeout(10)
                socks[i] = tls_over(sock, s.tls)
        bad = echo_on(socks, 64, deadline_s=15)
        if bad:
            raise Failed(f"{len(bad)} of {FLOOD} flooded connections got a wrong or missing echo")
    finally:
        for sock in socks:
            sock.close()
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        _echo_or_fail(sock, b"after the flood", "a new connection, after")
