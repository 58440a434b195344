"""The load harness over UDP: what a datagram run checks, connects and adds up beyond a stream run.

Why it is built this way: a UDP run is a normal load run (the same spec, the
same load processes, window, histograms, CPU figures and result), with a
different hot loop (``sockbench.ext.udpgen``, which counts loss, duplicates,
reordering and corruption as sockperf does) and a few different edges, kept
here so that ``spec``, ``worker`` and ``harness`` each gain one branch:

* ``check_spec``: the limits of a datagram run, one line each: a datagram
  carries its own header (``HEADER_SIZE``) and at most ``MAX_DATAGRAM`` bytes;
  ``--protocol`` is ``raw`` only (a datagram is already one message, so
  ``frame``/``json`` would add nothing); connect mode has nothing to connect.
* ``resolve``, ``echo_probe`` and ``PROBE_WORDING``: the target as a
  datagram address, and one datagram echoed before any load (the harness's
  probe, in the wording of a datagram), so that "nothing listens there" is a
  clear error and not a run of 100% loss.
* ``connect_flows``: the flows, one connected, non-blocking UDP socket each
  (connected: the kernel filters out strangers' datagrams and reports the
  server's port closed as ECONNREFUSED).
* ``merge`` and ``invalid_reasons``: the load processes' ``datagrams`` added
  up into the result's ``Datagrams``; loss leaves a run valid (it says how
  much), a corrupt echo does not.
"""

import errno
import socket

from sockbench.bench.schema import Datagrams
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError, UsageError
from sockbench.servers.contract import MAX_DATAGRAM

__all__ = ["HEADER_SIZE", "MAX_DATAGRAM", "PROBE_TIMEOUT_S", "PROBE_WORDING", "check_spec", "resolve", "echo_probe",
           "connect_flows", "merge", "invalid_reasons", "summary_line"]

#: bytes of every load datagram taken by its header (flow id, sequence number, send time);
#: ``sockbench.ext.udpgen.HEADER`` is the C side of it (a unit test keeps them equal)
HEADER_SIZE = 24
#: how long the probe datagram waits for its echo
PROBE_TIMEOUT_S = 2.0
#: the udp probe's one-line errors by what went wrong, in the form the harness's probe takes
PROBE_WORDING = {
    "refused": "nothing listens on {where}: is a UDP echo server running there?",
    "timeout": "no echo from {where} within {timeout_s:g} s: is a UDP echo server listening there?",
    "other": "cannot reach {where}",
}


def check_spec(spec):
    """The checks a udp ``LoadSpec`` adds; one-line ``UsageError``s."""
    if spec.protocol != "raw":
        raise UsageError(f"--protocol {spec.protocol} does not apply over udp: a datagram is one message already; "
                         f"use --protocol raw")
    if spec.mode == "connect":
        raise UsageError("--mode connect does not apply over udp: there is no connection to open; use closed or open")
    if isinstance(spec.size, int) and spec.size > MAX_DATAGRAM:
        raise UsageError(f"--size {spec.size:,} B does not fit a UDP datagram; the largest is {MAX_DATAGRAM:,} B")
    if isinstance(spec.size, int) and spec.size < HEADER_SIZE:
        raise UsageError(f"--size {spec.size} B is below the {HEADER_SIZE} B a load datagram needs for its header "
                         f"(flow, sequence number, send time)")


def resolve(endpoint):
    """A udp ``Endpoint`` with a numeric host, as the load processes send to it; a name that does not resolve
    is a one-line error."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve {endpoint.host!r} to an address: {e.strerror}") from None
    addr = infos[0][4]
    return Endpoint("udp", addr[0], addr[1])


def echo_probe(s):
    """The udp probe's exchange on its connected socket: one datagram out and its echo back."""
    payload = b"sockbench probe"
    s.send(payload)
    while s.recv(MAX_DATAGRAM + 1) != payload:
        pass  # a stray echo of an earlier run: wait for this one


def connect_flows(endpoint, n):
    """``n`` non-blocking UDP sockets connected to ``endpoint``, detached to raw fds (the loop closes them)."""
    fds = []
    try:
        for _ in range(n):
            s = socket.socket(endpoint.family, socket.SOCK_DGRAM)
            try:
                s.connect(endpoint.sockaddr())
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            fds.append(s.detach())
    except OSError as e:
        for fd in fds:
            socket.close(fd)
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise SockbenchError(f"out of file descriptors after {len(fds)} flows: {e.strerror}") from None
        raise SockbenchError(f"cannot open a UDP flow to {endpoint.format()}: {e.strerror or e}") from None
    return fds


def merge(rs):
    """The result's ``Datagrams``: every load process's counts added up (None when none reported any)."""
    parts = [r.datagrams for r in rs if r.datagrams is not None]
    return Datagrams.of(parts) if parts else None


def invalid_reasons(datagrams):
    """What makes a datagram run invalid (loss does not: it is reported)."""
    if datagrams is None or not datagrams.corrupt:
        return []
    return [f"{datagrams.corrupt} corrupt datagram echo(es): a wrong byte, length or header"]


def summary_line(datagrams):
    """One line for ``sockbench load``'s summary: sent, received, loss and the rest."""
    share = datagrams.loss_share
    loss = f"{datagrams.lost:,} lost ({share:.3%})" if share is not None else f"{datagrams.lost:,} lost"
    return (f"datagrams: {datagrams.sent:,} sent, {datagrams.received:,} received, {loss}, "
            f"{datagrams.duplicates:,} duplicates, {datagrams.out_of_order:,} out of order, "
            f"{datagrams.late:,} late, {datagrams.corrupt:,} corrupt")
