"""The datagram checks (``--transport udp``): each datagram back whole to its sender; loss and duplicates counted.

As sockperf counts them: a sequence number in every datagram tells a lost
echo (none within the timeout), a duplicate (a sequence seen twice), one out
of order (older than the newest seen) and a corrupt one (its bytes are not
the ones sent).  On loopback, at a pace that keeps a window of datagrams in
flight well inside the socket buffers, a correct server loses none, and
never duplicates or corrupts one.
"""

import os
import socket
import struct
import time

from sockbench.bench.check.base import Failed, check
from sockbench.bench.check.client import payload
from sockbench.servers.contract import MAX_DATAGRAM

__all__ = ["UDP_SIZES", "count_echoes"]

UDP_SIZES = (1, 2, 64, 1400, 1472, 1473, 8192, 65000, MAX_DATAGRAM)
RECV_TIMEOUT_S = 5.0
#: the loss check: datagrams sent, in windows of this many in flight
LOSS_COUNT, LOSS_WINDOW, LOSS_SIZE = 4000, 32, 64


def _flow(s, timeout=RECV_TIMEOUT_S):
    sock = socket.socket(s.endpoint.family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect(s.address)
    return sock


def _echo(sock, data, what):
    sock.send(data)
    try:
        got = sock.recv(MAX_DATAGRAM + 1)
    except socket.timeout:
        raise Failed(f"{what}: no echo within {sock.gettimeout():g} s") from None
    except ConnectionRefusedError:
        raise Failed(f"{what}: refused (ICMP port unreachable): nothing listens") from None
    if got != data:
        raise Failed(f"{what}: {len(data):,} B sent, {len(got):,} B came back" if len(got) != len(data)
                     else f"{what}: the bytes differ")


@check("udp-echo", "each datagram, 1 B to 65,507 B, comes back whole to its sender", transports=("udp",))
def udp_echo(s):
    with _flow(s) as sock:
        for size in UDP_SIZES:
            _echo(sock, payload(size, seed=size), f"{size:,} B")
    return f"{len(UDP_SIZES)} sizes"


@check("udp-empty", "an empty datagram comes back, empty, to its sender (asyncio's transports would drop it)",
       transports=("udp",))
def udp_empty(s):
    with _flow(s) as sock:
        for i in range(3):
            _echo(sock, b"", f"empty datagram {i + 1}")
        _echo(sock, b"and then the next", "the datagram after them")
    return "3 empty datagrams"


@check("udp-flows", "50 flows at once, 3 rounds: each gets its own datagrams back", transports=("udp",))
def udp_flows(s):
    flows = [_flow(s) for _ in range(50)]
    try:
        for round_ in range(3):
            sent = {}
            for i, sock in enumerate(flows):
                sent[i] = payload(100 + i, seed=1000 * round_ + i)
                sock.send(sent[i])
            for i, sock in enumerate(flows):
                try:
                    got = sock.recv(MAX_DATAGRAM + 1)
                except socket.timeout:
                    raise Failed(f"flow {i}, round {round_ + 1}: no echo within {RECV_TIMEOUT_S:g} s") from None
                if got != sent[i]:
                    raise Failed(f"flow {i}, round {round_ + 1}: got another flow's datagram, or a changed one")
    finally:
        for sock in flows:
            sock.close()


def count_echoes(sent_seqs, received, size):
    """``(lost, duplicates, out_of_order, corrupt)`` of a loss run's echoes (``received``: the datagrams, in order)."""
    seen, newest = set(), -1
    dup = ooo = corrupt = 0
    for data in received:
        if len(data) != size:
            corrupt += 1
            continue
        (seq,) = struct.unpack_from(">Q", data)
        if data != _numbered(seq, size) or seq not in sent_seqs:
            corrupt += 1
            continue
        if seq in seen:
            dup += 1
            continue
        if seq < newest:
            ooo += 1
        newest = max(newest, seq)
        seen.add(seq)
    return len(sent_seqs) - len(seen), dup, ooo, corrupt


def _numbered(seq, size):
    head = struct.pack(">Q", seq)
    return head + (head * (size // 8 + 1))[: size - 8]


@check("udp-loss", f"{LOSS_COUNT:,} numbered datagrams, {LOSS_WINDOW} in flight: none lost, duplicated, "
       "reordered or corrupt", transports=("udp",))
def udp_loss(s):
    received = []
    with _flow(s, timeout=0.5) as sock:
        seq = 0
        while seq < LOSS_COUNT:
            window = range(seq, min(LOSS_COUNT, seq + LOSS_WINDOW))
            for k in window:
                sock.send(_numbered(k, LOSS_SIZE))
            want = len(window)
            while want:
                try:
                    received.append(sock.recv(MAX_DATAGRAM + 1))
                except socket.timeout:
                    break
                except ConnectionRefusedError:
                    raise Failed("refused (ICMP port unreachable): the server is gone") from None
                want -= 1
            seq += len(window)
        end = time.monotonic() + 0.2  # late duplicates
        sock.settimeout(0.05)
        while time.monotonic() < end:
            try:
                received.append(sock.recv(MAX_DATAGRAM + 1))
            except (socket.timeout, ConnectionRefusedError):
                break
    lost, dup, ooo, corrupt = count_echoes(set(range(LOSS_COUNT)), received, LOSS_SIZE)
    line = f"{LOSS_COUNT:,} sent: {lost} lost, {dup} duplicated, {ooo} out of order, {corrupt} corrupt"
    if lost or dup or ooo or corrupt:
        raise Failed(line)
    return line


@check("udp-garbage", "peers that vanish, random bytes and the largest datagram do not take the server down",
       transports=("udp",))
def udp_garbage(s):
    for i in range(20):
        gone = socket.socket(s.endpoint.family, socket.SOCK_DGRAM)
        gone.sendto(os.urandom(1 + i * 100), s.address)
        gone.close()
    with _flow(s) as sock:
        _echo(sock, b"\x00" * 3, "3 zero bytes")
        _echo(sock, b"\xff" * MAX_DATAGRAM, "the largest datagram")
        _echo(sock, b"still here", "after the garbage")
    if not s.alive():
        raise Failed(f"the server exited (status {s.server.proc.returncode})")
