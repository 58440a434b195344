"""One load process: pin, connect, wait for the common start time, run the Cython loop, report.

Why it is built this way: separate processes, each pinned to a client CPU,
so the load's CPU is measured on its own (``getrusage`` over the window) and
several processes load one server without a GIL between them.  A plain
``python -m sockbench.bench.load.worker`` child, not ``multiprocessing``:
spawning re-imports the caller's ``__main__`` and forking copies a parent's
threads and pipes.  The protocol is JSON lines:

1. stdin: ``WorkerParams``.  The worker pins itself, raises its descriptor
   limit, connects its share (with TLS handshakes) and prints
   ``{"event": "ready"}``, or ``{"event": "error", "message", "exit_code"}``;
2. stdin: ``{"start_ns", "warm_end_ns", "end_ns"}`` on CLOCK_MONOTONIC;
3. it runs ``loadgen.run_loop`` (udp: ``udpgen``, ``datagram.py``; TLS:
   ``tlsgen``; ``engine`` uring: ``uringgen``, the same dict from an io_uring
   loop) until ``end_ns`` and prints ``{"event": "result", "result": R}``,
   R a ``schema.ProcResult``;
4. it waits for the next ``WorkerParams`` until stdin closes
   (``pools.LoadPool``); after an error it exits.

Only these lines go to stdout; a failure is one error line, never a
traceback.  SIGTERM/SIGINT inside the window end it early and the process
reports; outside the loop both are ignored, so a result is never cut off
(the harness kills a process that does not report, the kernel when the
harness dies).
"""

import errno
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, fields

from sockbench.bench.load.datagram import connect_flows
from sockbench.bench.schema import ProcResult
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError
from sockbench.thresholds import CLIENT_STALL_S, STALL_S

__all__ = ["WorkerParams", "ProcResult", "proc_result", "run_worker", "main", "connect_all", "raise_nofile_limit", "MODES", "FD_HEADROOM"]

#: mode name -> loadgen mode number
MODES = {"closed": 0, "open": 1, "connect": 2}

#: file descriptors a load process needs besides its connections
FD_HEADROOM = 64

START_WAIT_S = 120.0
#: how long a load process kept between rounds waits for its next parameters before it exits
IDLE_WAIT_S = 900.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerParams:
    index: int
    host: str
    port: int
    family: int
    mode: str
    conns: int
    first_cid: int
    cid_step: int
    size: int
    depth: int
    rate: float
    interval_ns: int
    timeout_ns: int
    cpus: tuple
    protocol: str = "raw"
    poll: bool = False
    server_pid: int = 0
    #: the CPUs whose /proc/stat lines this process reads at the window's edges (the first one only)
    stat_cpus: tuple = ()
    #: tcp, tcp6, unix or udp; for unix ``path`` is the socket (``host`` "" and ``port`` 0); udp: the
    #: connections are UDP flows and the loop is ``sockbench.ext.udpgen`` (``datagram.py``)
    transport: str = "tcp"
    path: str | None = None
    #: TLS: ``{"version", "cipher", "resumption"}`` (``servers.tls.TlsConfig``'s client side), or None; the loop is
    #: then ``sockbench.ext.tlsgen``, and closed/open mode's connections shake hands before the process is ready
    tls: dict | None = None
    #: the load loop: ``epoll`` (``sockbench.ext.loadgen``) or ``uring`` (``sockbench.ext.uringgen``)
    engine: str = "epoll"

    @property
    def endpoint(self):
        """The target as an ``Endpoint``: ``host`` is already a numeric address (the harness resolved it)."""
        if self.transport == "unix":
            return Endpoint("unix", path=self.path)
        return Endpoint(self.transport, self.host, self.port)


def proc_result(r, index, cpus, **more):
    """The ``ProcResult`` of ``loadgen.run_loop``'s dict ``r`` (the same keys): its histograms' buckets
    encoded, its process's index and CPUs added."""
    # deferred: hdrh is needed in a load process only, not in the harness that imports this module
    from sockbench.bench.load.hdr import encode_text, from_buckets

    names = {f.name for f in fields(ProcResult)}
    kw = {k: v for k, v in r.items() if k in names}
    kw.update(index=index, cpus=list(cpus), hdr1=encode_text(from_buckets(r["hdr1"])),
              hdr2=encode_text(from_buckets(r["hdr2"])), **more)
    return ProcResult(**kw)


def raise_nofile_limit(needed):
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` if the hard limit allows; else a one-line error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SockbenchError(
            f"{needed} file descriptors needed per load process but RLIMIT_NOFILE allows {hard}; "
            f"use fewer connections per load process, or raise the limit (ulimit -n)",
            exit_code=2,
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def connect_all(endpoint, n):
    """``n`` connected, non-blocking stream sockets to ``endpoint``, detached to raw fds (the loop closes them).

    TCP ones with TCP_NODELAY; unix ones have no Nagle to turn off.
    """
    fds = []
    where = endpoint.format()
    address = endpoint.sockaddr()
    try:
        for _ in range(n):
            s = socket.socket(endpoint.family, socket.SOCK_STREAM)
            try:
                s.settimeout(CONNECT_TIMEOUT_S)
                s.connect(address)
                if endpoint.family != socket.AF_UNIX:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            fds.append(s.detach())
    except ConnectionRefusedError:
        _close_all(fds)
        raise SockbenchError(f"connection refused by {where}: is an echo server listening there?") from None
    except TimeoutError:
        _close_all(fds)
        raise SockbenchError(f"connecting to {where} timed out after {CONNECT_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        _close_all(fds)
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise SockbenchError(f"out of file descriptors after {len(fds)} connections: {e.strerror}") from None
        raise SockbenchError(f"cannot connect to {where}: {e.strerror or e}") from None
    return fds


def _close_all(fds):
    for fd in fds:
        os.close(fd)


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


_stdin_buf = bytearray()


def _read_line(timeout):
    """One JSON line from stdin within ``timeout`` seconds, or None (EOF or timeout).

    Raw reads on fd 0 (no Python-level buffering that ``select`` cannot see).
    """
    deadline = time.monotonic() + timeout
    while b"\n" not in _stdin_buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([0], [], [], left)[0]:
            return None
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        _stdin_buf.extend(chunk)
    i = _stdin_buf.index(b"\n")
    line = bytes(_stdin_buf[:i])
    del _stdin_buf[: i + 1]
    return json.loads(line)


def run_worker(p):
    """Connect, report ready, wait for the window, run the loop, report the result."""
    fds = []
    try:
        os.sched_setaffinity(0, p.cpus)
        raise_nofile_limit(p.conns + FD_HEADROOM)
        # deferred: hdrh and the Cython extension are needed in a load process only, not in the harness
        from sockbench.bench.load.hdr import LAYOUT
        from sockbench.ext import loadgen

        table = loadgen.pattern_table()
        endpoint = p.endpoint
        client = _tls_client(p) if p.tls is not None else None
        if p.transport == "udp":
            fds = connect_flows(endpoint, p.conns)
        elif p.mode != "connect":
            fds = connect_all(endpoint, p.conns)
            if client is not None:
                handshake_all(client, fds, endpoint)
        _emit({"event": "ready"})
        msg = _read_line(START_WAIT_S)
        if msg is None:
            return 1
        delay = (msg["start_ns"] - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        late_ns = time.monotonic_ns() - msg["start_ns"]
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the loop takes them as the window's end; after it, the report is due
        owned, fds = fds, []
        if p.transport == "udp":
            return _run_datagrams(p, msg, owned, table, late_ns)
        if client is not None:
            return _run_tls(p, msg, owned, client, table, late_ns)
        if p.engine == "uring":
            return _run_uring(p, msg, owned, table, late_ns)
        r = loadgen.run_loop(
            MODES[p.mode], owned, p.first_cid, p.cid_step, p.conns, p.size, p.depth, p.rate,
            msg["start_ns"], msg["warm_end_ns"], msg["end_ns"], p.interval_ns, p.timeout_ns,
            table, LAYOUT, int(endpoint.family), endpoint.sockaddr(), loadgen.PROTOCOLS.index(p.protocol), p.poll,
            p.server_pid,
            p.stat_cpus, int(STALL_S * 1e9), client_stall_ns=int(CLIENT_STALL_S * 1e9),
        )
        _emit({"event": "result", "result": proc_result(r, p.index, p.cpus, start_late_ns=late_ns).to_json()})
        return 0
    except SockbenchError as e:
        _emit({"event": "error", "message": str(e), "exit_code": e.exit_code})
        return 1
    except Exception as e:  # a worker never dies silently: the parent gets one line
        _emit({"event": "error", "message": f"load process {p.index}: {type(e).__name__}: {e}"})
        return 1
    finally:
        _close_all(fds)


def _run_datagrams(p, msg, owned, table, late_ns):
    """The UDP flows' loop (``sockbench.ext.udpgen``), reported like the stream loop's."""
    # deferred: the extensions are needed in a load process only, not in the harness
    from sockbench.bench.load.hdr import LAYOUT
    from sockbench.ext import udpgen

    r = udpgen.run_loop(
        MODES[p.mode], owned, p.first_cid, p.cid_step, p.conns, p.size, p.depth, p.rate,
        msg["start_ns"], msg["warm_end_ns"], msg["end_ns"], p.interval_ns, p.timeout_ns, table, LAYOUT,
        p.poll, p.server_pid, p.stat_cpus, int(STALL_S * 1e9), client_stall_ns=int(CLIENT_STALL_S * 1e9),
    )
    _emit({"event": "result", "result": proc_result(r, p.index, p.cpus, start_late_ns=late_ns).to_json()})
    return 0


def _tls_client(p):
    """The load process's ``tlsgen.TlsClient`` for ``p.tls``."""
    # deferred: the TLS loop links OpenSSL and is built only where its headers were found (LoadSpec checks)
    from sockbench.ext import tlsgen

    try:
        return tlsgen.TlsClient(p.tls["version"], p.tls.get("cipher"), p.tls.get("resumption", False))
    except ValueError as e:
        raise SockbenchError(f"TLS: {e}") from None


def handshake_all(client, fds, endpoint):
    """Every connection's TLS handshake before the window, or one line that says what the server did instead."""
    try:
        client.handshake_all(fds, CONNECT_TIMEOUT_S)
    except ConnectionError as e:
        raise SockbenchError(f"TLS handshake with {endpoint.format()} failed ({e}): is the server serving TLS "
                             f"(sockbench serve NAME --tls)?", exit_code=2) from None
    except TimeoutError as e:
        raise SockbenchError(f"TLS handshakes with {endpoint.format()}: {e}", exit_code=2) from None


def _run_tls(p, msg, owned, client, table, late_ns):
    """The stream loop over TLS (``sockbench.ext.tlsgen``), reported like the plain one's."""
    # deferred: as in _tls_client
    from sockbench.bench.load.hdr import LAYOUT
    from sockbench.ext import tlsgen

    endpoint = p.endpoint
    r = tlsgen.run_loop(
        MODES[p.mode], owned, client, p.first_cid, p.cid_step, p.conns, p.size, p.depth, p.rate,
        msg["start_ns"], msg["warm_end_ns"], msg["end_ns"], p.interval_ns, p.timeout_ns, table, LAYOUT,
        int(endpoint.family), endpoint.sockaddr(), p.poll, p.server_pid, p.stat_cpus, int(STALL_S * 1e9),
        client_stall_ns=int(CLIENT_STALL_S * 1e9),
    )
    _emit({"event": "result", "result": proc_result(r, p.index, p.cpus, start_late_ns=late_ns).to_json()})
    return 0


def _run_uring(p, msg, owned, table, late_ns):
    """The io_uring loop (``sockbench.ext.uringgen``, raw only), reported like the epoll loop's."""
    # deferred: the extensions are needed in a load process only, not in the harness
    from sockbench.bench.load.hdr import LAYOUT
    from sockbench.ext import uringgen
    from sockbench.servers.iouring import defer_wanted, kernel_support, multishot_wanted, quiet_sends_wanted

    endpoint = p.endpoint
    probe = kernel_support()[2]
    r = uringgen.run_loop(
        MODES[p.mode], owned, p.first_cid, p.cid_step, p.conns, p.size, p.depth, p.rate,
        msg["start_ns"], msg["warm_end_ns"], msg["end_ns"], p.interval_ns, p.timeout_ns, table, LAYOUT,
        int(endpoint.family), endpoint.sockaddr(), p.poll, p.server_pid, p.stat_cpus, int(STALL_S * 1e9),
        client_stall_ns=int(CLIENT_STALL_S * 1e9), multishot=multishot_wanted(probe),
        quiet_sends=quiet_sends_wanted(probe), defer_taskrun=defer_wanted(),
    )
    _emit({"event": "result", "result": proc_result(r, p.index, p.cpus, start_late_ns=late_ns).to_json()})
    return 0


def _preload():
    """Import what the loop needs before the parameters arrive.

    The harness starts its load processes while the server starts, so the
    tenth of a second these imports take is spent in parallel with the
    server's own start instead of after it, in every round of a run.
    """
    # deferred imports, done early on purpose: the harness imports this module too, and needs none of them
    try:
        from sockbench.bench.load import hdr  # noqa: F401  (hdrh)
        from sockbench.ext import loadgen, udpgen  # noqa: F401
    except ImportError:
        pass  # run_worker imports them again and reports what is missing the usual way
    try:
        from sockbench.ext import tlsgen  # noqa: F401  (built only where OpenSSL is)
    except ImportError:
        pass  # run_worker imports them again and reports what is missing the usual way
    try:
        from sockbench.ext import uringgen  # noqa: F401  (built where io_uring's header is)
    except ImportError:
        pass  # run_worker imports them again and reports what is missing the usual way


def _params(raw):
    return WorkerParams(**{**raw, "cpus": tuple(raw["cpus"]), "stat_cpus": tuple(raw.get("stat_cpus", ()))})


def main():
    try:
        _preload()
    except KeyboardInterrupt:
        return 130  # stopped before it had its share of the load: nothing measured, nothing to say
    wait = START_WAIT_S
    while True:
        try:
            raw = _read_line(wait)
            if raw is None:
                return 0 if wait == IDLE_WAIT_S else 2  # stdin closed (or idle too long) after a run: done
            p = _params(raw)
        except (ValueError, TypeError, KeyError) as e:
            _emit({"event": "error", "message": f"load process: bad parameters: {e}"})
            return 2
        except KeyboardInterrupt:
            return 130  # stopped between runs: nothing measured, nothing to say
        try:
            rc = run_worker(p)
        except KeyboardInterrupt:
            return 130  # a Ctrl-C before the window: the harness, stopped too, expects no result
        if rc != 0:
            return rc
        wait = IDLE_WAIT_S


if __name__ == "__main__":
    sys.exit(main())
