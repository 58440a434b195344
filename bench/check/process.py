"""The checks that look at the server's process: its sockets, descriptors, memory and stop.

They run only when sockbench started the server (``needs_pid``): for a
running ``HOST:PORT`` the pid behind the port is not ours to trust.  A server
that forks per connection is read as its whole live process tree
(``ServerProcess.pids``).  ``stop`` stops the server, so it runs last.
"""

import os
import signal
import socket
import struct
import time

from sockbench.bench.check.base import STREAM, Failed, NotApplicable, check
from sockbench.bench.check.client import (
    connect, echo_concurrently, many_connections_echo, open_connections, payload, raise_nofile, read_exact,
    send_without_reading, server_socket_option,
)
from sockbench.bench.check.stream import rss
from sockbench.servers.protocols import PROTOCOLS
from sockbench.servers.process import STOP_GRACE_S

__all__ = ["fd_count"]

MiB = 1 << 20
#: after connections close, how long descriptors get to come back, and by how many they may stay above
FD_WAIT_S = 15.0
FD_SLACK = 2


def fd_count(pids):
    """Open descriptors over ``pids``; a process gone meanwhile counts none."""
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return n


def _wait_fds(s, at_most, timeout=FD_WAIT_S):
    end = time.monotonic() + timeout
    while True:
        now = fd_count(s.pids)
        if now <= at_most:
            return now
        if time.monotonic() > end:
            raise Failed(f"the server still holds {now} descriptors {timeout:g} s after its connections closed "
                         f"(it held {at_most - FD_SLACK} before)")
        time.sleep(0.05)


@check("nodelay", "accepted sockets have TCP_NODELAY (an echo leaves at once)", transports=("tcp", "tcp6"),
       protocols=PROTOCOLS, needs_pid=True)
def nodelay(s):
    with connect(s.address, tls=s.tls, timeout=10) as sock:
        sock.settimeout(10)
        value = None
        if s.protocol == "raw":
            if echo_concurrently(sock, b"x") != b"x":  # the server has accepted by now
                raise Failed("no echo")
        else:
            time.sleep(0.2)
        for _ in range(20):  # a server that forks per connection: its child may take a moment to appear
            value = server_socket_option(s.pids, sock, socket.IPPROTO_TCP, socket.TCP_NODELAY)
            if value is not None:
                break
            time.sleep(0.05)
    if value is None:
        raise NotApplicable("cannot read the server's socket (pidfd_getfd(2) is not permitted here)")
    if not value:
        raise Failed("TCP_NODELAY is off on the accepted socket: small echoes wait for Nagle's algorithm")


@check("descriptors", "1,000 connections come and go: descriptors and memory return", transports=STREAM,
       needs_pid=True)
def descriptors(s):
    raise_nofile(1100)
    base_fds, base_rss = fd_count(s.pids), rss(s.pids)
    bad = many_connections_echo(s.address, tls=s.tls, count=1000, size=4096)
    if bad:
        raise Failed(f"{len(bad)} of 1,000 connections got a wrong or missing echo")
    _wait_fds(s, base_fds + FD_SLACK)
    time.sleep(0.3)
    grown = (rss(s.pids) or 0) - (base_rss or 0)
    if grown > 32 * MiB:
        raise Failed(f"RSS {grown / MiB:.1f} MiB above where it was before 1,000 connections came and went")
    return f"descriptors back to {base_fds}, RSS {grown / MiB:+.1f} MiB"


def _rude_round(s, n=100, seconds=0.3):
    """``n`` connections that write until the server stops reading, read nothing, then reset."""
    socks = open_connections(s.address, n, within_s=10, tls=s.tls)
    data = b"x" * MiB
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for sock in socks:
                send_without_reading(sock, data)
            time.sleep(0.02)
    finally:
        for sock in socks:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()


@check("abrupt-peers-memory", "rounds of 100 peers that reset with echoes unread leave no memory or descriptors",
       transports=STREAM, needs_pid=True)
def abrupt_peers_memory(s):
    raise_nofile(256)
    base_fds = fd_count(s.pids)
    sizes = []
    for _ in range(4):
        _rude_round(s)
        _wait_fds(s, base_fds + FD_SLACK)
        time.sleep(0.2)
        if not s.alive():
            raise Failed(f"the server exited (status {s.server.proc.returncode})")
        sizes.append(rss(s.pids) or 0)
    grown = sizes[-1] - sizes[1]  # the first rounds take the allocator to its high-water mark
    if grown > 64 * MiB:
        raise Failed(f"RSS after each round: {[r // MiB for r in sizes]} MiB: the connections' memory stays")
    return f"RSS after each round {', '.join(str(r // MiB) for r in sizes)} MiB"


@check("stop", f"SIGTERM with 50 connections open, some mid-transfer: exit within {STOP_GRACE_S:g} s, "
       "connections closed", protocols=PROTOCOLS, needs_pid=True, stops=True)
def stop(s):
    server = s.server
    socks = []
    stream = s.transport != "udp"
    try:
        if stream:
            socks = open_connections(s.address, 50, within_s=20, tls=s.tls)
            if s.protocol == "raw":
                for i, sock in enumerate(socks):
                    if i % 3 == 0:
                        send_without_reading(sock, payload(2 * MiB, seed=i))
                    else:
                        sock.sendall(b"hello")
                for i, sock in enumerate(socks):
                    if i % 3:
                        if read_exact(sock, 5) != b"hello":
                            raise Failed("no echo before the stop")
        t0 = time.monotonic()
        if server.command is not None:
            os.killpg(server.proc.pid, signal.SIGTERM)  # what sockbench does to stop it: its whole group
        else:
            os.kill(server.pid, signal.SIGTERM)
        while server.alive() and time.monotonic() - t0 < STOP_GRACE_S:
            time.sleep(0.01)
        took = time.monotonic() - t0
        if server.alive():
            server.stop()  # SIGKILL, said below
            raise Failed(f"still running {STOP_GRACE_S:g} s after SIGTERM: killed with SIGKILL")
        rc = server.proc.returncode
        if stream:
            idle = socks[1]
            idle.settimeout(2.0)
            try:
                if idle.recv(1) != b"":
                    raise Failed("a connection still answered after the server exited")
            except (ConnectionResetError, socket.timeout):
                pass
        if rc == 0:
            return f"exit 0 after {took:.2f} s"
        if server.command is not None and rc in (-signal.SIGTERM, 128 + signal.SIGTERM):
            return (f"{'killed by' if rc < 0 else f'exit {rc} on'} SIGTERM after {took:.2f} s (sockbench's own "
                    f"servers exit 0; any server may end this way)")
        raise Failed(f"exit status {rc} after SIGTERM (the serve contract: 0)")
    finally:
        for sock in socks:
            sock.close()
