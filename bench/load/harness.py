"""The load harness: the Python API behind ``sockbench load`` and the pytest-benchmark suite.

Usage::

    from sockbench.bench.load.harness import LoadSpec, run_load

    spec = LoadSpec(server="uvloop", mode="closed", conns=100, size=64, depth=8,
                    duration_s=5.0, warmup_s=1.0, procs=1,
                    server_cpus=(0,), client_cpus=(1,), interval_s=0.1)
    result = run_load(spec, json_path=None)   # a LoadResult (sockbench.bench.schema)

``target=`` (an address or ``Endpoint``) loads a running server instead of
starting one; ``transport`` and ``protocol`` pick the socket and wire format
(``size`` is always the payload).

Why it is built this way: the hot loop is not here but in ``ext/loadgen``
(nogil Cython), run in ``procs`` load processes (``worker.py``) pinned to the
client CPUs.  This module orchestrates: start the pinned server, wait until
every load process is connected, fix ONE window on CLOCK_MONOTONIC for all of
them, sleep through it, and merge their ``ProcResult``s as the schema declares
each field.  Load process 0 reads the server's and the pinned CPUs' counters at
the window's edges from its C loop, so this process never wakes on a busy CPU.

Rules:

* HDR histograms are merged exactly; percentiles come from the merged one.
* Nothing measured is lost: the result is written as the run ends, invalid or
  not (``valid``, ``invalid_reason``).  A stop signal inside the window ends it
  early and ``LoadInterrupted`` carries what was measured.
* Invalid: a wrong byte, a dead server, a hung load process, a closed/connect
  window with a stall (``STALL_S``, see ``sockbench.thresholds``), a starved
  connection (completed nothing while owed an answer).  Errors a user can act
  on are a ``SockbenchError`` before anything starts.
* Flags, from ``sockbench.thresholds``: ``client_bound``, ``limited_by``,
  ``disturbed`` (foreign load on the pinned CPUs, ``interference.py``).
* Open loop polls when every load process has a CPU of its own (the README says
  why); a polling client reports its busy share and its client stalls.
"""

import json
import math
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

from sockbench.bench.load import datagram, hdr
from sockbench.bench.load.interference import interference
from sockbench.bench.load.spec import MAX_FRAMED_SIZE, MODES, PROTOCOLS, LoadSpec
from sockbench.bench.load.unseen import Throttle, is_unseen, loaded_idle
from sockbench.bench.load.worker import FD_HEADROOM, WorkerParams
from sockbench.bench.schema import (
    ERROR_KINDS, Client, CpuPerMsg, Errors, Fairness, LoadResult, Machine, ProcResult, ServerProc, Target, Throughput,
    Timeseries, TlsPart, TlsSetting, Workload, copy_fields, merge_fields,
)
from sockbench.children import Stopped, child_setup, held_signals, signal_of
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.procfs import (TICK_S, busy_processes, foreign_process_s, foreign_stalls, irq_time_accounting,
                              process_snapshot, read_proc_stat, read_rss_bytes, read_task_runtimes, thread_snapshot)
from sockbench.servers.contract import format_peer
from sockbench.servers.environments import interpreter_version
from sockbench.servers.process import ServerProcess
from sockbench.servers.tls import client_context, ensure_certificate, handshake_failure
from sockbench.thresholds import BEHIND_FRACTION, CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL, STALL_S
from sockbench.timestamps import iso_utc

__all__ = [
    "LoadSpec",
    "run_load",
    "LoadInterrupted",
    "server_cpu",
    "MODES",
    "PROTOCOLS",
    "ERROR_KINDS",
    "MAX_FRAMED_SIZE",
    "busy_warning",
    "measure",
    "resolve",
    "build_result",
    "merge_procs",
    "limited_by",
    "read_rss_peak",
    "split",
    "ServerWindow",
    "READY_TIMEOUT_S",
]

#: between "every load process is ready" and the window's start
START_MARGIN_S = 0.05
#: how long load processes get to spawn and connect
READY_TIMEOUT_S = 60.0
#: after the window's end, how long before a silent load process is killed
HARD_TIMEOUT_GRACE_S = 10.0
#: after a stop signal cut the window short, how long the load processes get to report what they measured
CUT_GRACE_S = 1.0
#: before a run, how long the processes on its CPUs are watched for being busy
BUSY_SAMPLE_S = 0.1
#: at most this many busy processes are named in the warning line
BUSY_NAMED = 3


# --- the run ---------------------------------------------------------------------------------


def _resolve(endpoint):
    """``endpoint`` with a numeric host, as the load processes connect to it (a unix endpoint as it is).

    tcp takes the family from the name (``localhost`` may be ::1: then tcp6);
    tcp6 resolves in AF_INET6 only.
    """
    if endpoint.transport == "unix":
        return endpoint
    try:
        family = socket.AF_INET6 if endpoint.transport == "tcp6" else socket.AF_UNSPEC
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        what = "an IPv6 address" if endpoint.transport == "tcp6" else "an address"
        raise UsageError(f"cannot resolve {endpoint.host!r} to {what}: {e.strerror}") from None
    addr = infos[0][4]
    return Endpoint(endpoint.transport, addr[0], addr[1])


def resolve(endpoint):
    """``endpoint`` as the load processes reach it: a numeric host for an IP transport, a unix path as it is."""
    return datagram.resolve(endpoint) if endpoint.transport == "udp" else _resolve(endpoint)


#: how long the stream probe's connect may take
_STREAM_PROBE_TIMEOUT_S = 5.0
#: the stream probe's one-line errors by what went wrong (``datagram.PROBE_WORDING`` is udp's)
_STREAM_PROBE_WORDING = {
    "refused": "connection refused by {where}: is an echo server listening there?",
    "missing": "no socket at {where}: is an echo server listening there?",
    "timeout": "connecting to {where} timed out",
    "other": "cannot connect to {where}",
}


def _probe(endpoint, wording, timeout_s, exchange=None):
    """Reach ``endpoint`` once before any load, or a one-line ``SockbenchError`` in the transport's ``wording``.

    One connect (and ``exchange(sock)``, udp's echoed datagram) so that
    "nothing listens there" is a clear error and not a run of failures.
    ``wording`` maps ``refused``, ``timeout``, ``other`` and optionally
    ``missing`` (no unix socket at the path; without it that is ``other``) to a
    line with ``{where}`` and ``{timeout_s}`` in it; ``other`` gets the OS's reason.
    """
    s = socket.socket(endpoint.family, endpoint.socktype)
    s.settimeout(timeout_s)
    try:
        s.connect(endpoint.sockaddr())
        if exchange is not None:
            exchange(s)
    except OSError as e:
        if isinstance(e, ConnectionRefusedError):
            what = "refused"
        elif isinstance(e, FileNotFoundError) and "missing" in wording:
            what = "missing"
        elif isinstance(e, TimeoutError):
            what = "timeout"
        else:
            what = "other"
        line = wording[what].format(where=endpoint, timeout_s=timeout_s)
        raise SockbenchError(f"{line}: {e.strerror or e}" if what == "other" else line) from None
    finally:
        s.close()


#: what a plain probe sends to a server of another's (a TLS server takes it for a record it cannot read)
_PLAIN_PROBE = b"sockbench probe\n"
#: how long the plain probe waits for its echo: a TLS server answers a plain message at once (an alert, or a
#: close); a slow or silent echo server is left for the load to judge, not waited on here
_PLAIN_PROBE_ANSWER_S = 1.0


def tls_probe(endpoint, tls):
    """The probe's exchange over TLS: one handshake, as the load will do it; a server that does not complete it is one
    usage line (it is not serving TLS, or not the TLS asked for)."""

    def exchange(sock):
        ctx = client_context(tls)
        try:
            ctx.wrap_socket(sock, server_hostname=None).close()
        except OSError as e:
            why = handshake_failure(e).removeprefix("TLS handshake failed: ")
            raise UsageError(f"the TLS handshake with {endpoint} failed ({why}): is the server serving TLS "
                             f"{tls.version} (sockbench serve NAME --tls)?") from None

    return exchange


def plain_probe(endpoint):
    """The probe's exchange in the clear: one short message echoed; a server that answers it as TLS does (an alert, or
    closing) is one usage line saying to add ``--tls``."""

    def exchange(sock):
        got = b""
        sock.settimeout(_PLAIN_PROBE_ANSWER_S)
        try:
            sock.sendall(_PLAIN_PROBE)
            while len(got) < len(_PLAIN_PROBE):
                chunk = sock.recv(len(_PLAIN_PROBE) - len(got))
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            return  # a slow echo: the load will tell
        except OSError:
            got = got or b"\x15"  # reset on a plain message: what TLS servers do
        if got != _PLAIN_PROBE and (not got or got[:1] == b"\x15"):
            raise UsageError(f"the server at {endpoint} does not echo a plain message (it closed the connection or "
                             f"answered with a TLS alert): is it serving TLS? Then load it with --tls")

    return exchange


def nofile_advice(spec, hard):
    """What to do when the load processes' share of connections does not fit under a hard RLIMIT_NOFILE.

    More load processes help only in closed and open mode (connect mode holds
    one connection per process at a time) and only when the limit leaves room
    for at least one connection beside each process's own descriptors.
    """
    room = hard - FD_HEADROOM
    if room < 1:
        return f"raise the hard limit (ulimit -Hn) to at least {FD_HEADROOM + 1}"
    if spec.mode == "connect":
        return f"use at most {room} --conns, or raise the hard limit (ulimit -Hn)"
    procs = -(-spec.conns // room)  # the fewest processes whose share fits
    if procs <= spec.conns and procs <= 64:
        return f"use --procs {procs} or more, at most {room * spec.procs} --conns, or raise the hard limit (ulimit -Hn)"
    return f"use at most {room * spec.procs} --conns, or raise the hard limit (ulimit -Hn)"


def _check_nofile(spec, per_proc):
    needed = per_proc + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"{per_proc} connections per load process need {needed} file descriptors but RLIMIT_NOFILE "
            f"allows {hard}; {nofile_advice(spec, hard)}"
        )


def split(n, parts):
    """``n`` in ``parts`` shares that differ by one at most, the larger first."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _server_sample(s):
    """A load process's sample of the server's CPU as ``(user_s, sys_s, threads)``, or None if unread.

    ``user_s`` and ``sys_s`` come from /proc/PID/stat, in clock ticks of 10 ms;
    ``threads`` is ``{tid: seconds}``, the scheduler's runtime of each thread
    (empty when there were too many to read: then the ticks are used).
    """
    if not s:
        return None
    threads = {} if s["overflow"] else {int(t): ns / 1e9 for t, ns in s["threads"].items()}
    return s["utime_ticks"] * TICK_S, s["stime_ticks"] * TICK_S, threads


def server_cpu(c0, c1):
    """The server's ``(user_s, sys_s, source)`` between two ``_server_sample`` samples.

    /proc/PID/stat counts whole clock ticks (10 ms), so a 0.2 s round of a
    server that is busy 30% of it is known to within a third.  The scheduler's
    runtime per thread is exact, so the total is taken from it and split
    between user and system in the tick counts' proportion (what the kernel
    itself does to make utime + stime add up).  The ticks stay (``source``
    "ticks") when no tick was counted (no split to scale), or when a thread
    ended inside the window and took its runtime with it (``blocking``): one
    that was there at the start is missing at the end, or the exact total
    falls short of the ticks by more than their rounding (a thread that came
    and went in between).
    """
    user, sys_ = c1[0] - c0[0], c1[1] - c0[1]
    ticks = user + sys_
    t0, t1 = (c0[2], c1[2]) if len(c0) > 2 and len(c1) > 2 else ({}, {})
    if not t1 or ticks <= 0 or not set(t0) <= set(t1):
        return user, sys_, "ticks"
    exact = sum(t1.values()) - sum(t0.values())
    if exact < ticks - TICK_S - 1e-3:
        return user, sys_, "ticks"
    return user * exact / ticks, sys_ * exact / ticks, "schedstat"


class LoadInterrupted(Stopped):
    """A stop signal ended the load: ``result`` is what the window measured until then (None: nothing was).

    A ``KeyboardInterrupt`` (``children.Stopped``), so that whatever runs the
    load unwinds as for Ctrl-C; ``sockbench load`` writes and shows the result first.
    """

    def __init__(self, signum, measured=None, result=None):
        super().__init__(signum)
        self.measured = measured  # measure()'s (procs, problems, window), for the result to be built from
        self.result = result


def run_load(spec, json_path=None, on_window=None, notes=None, pool=None, server=None, canary=None):
    """Run one load as ``spec`` says; return its ``LoadResult`` (and write its JSON to ``json_path``).

    Raises ``SockbenchError`` only before the load starts (bad spec, server
    that does not start, refused connection, file descriptor limit); once the
    load has started, every problem ends up in the result as ``valid: false``.
    A stop signal inside the window raises ``LoadInterrupted`` with the
    window's result until then, written to ``json_path`` first.
    ``on_window(start_ns, end_ns)`` is told the load's window (CLOCK_MONOTONIC)
    just before it opens, so that an observer can keep quiet through it.
    ``notes``, a list, gets a line when the server had to be killed at the end
    (a ``--command`` that ignored SIGTERM); the line goes to stderr as well.

    A run of many rounds keeps its processes between them (``pools``):
    ``pool`` (a ``pools.LoadPool``) lends the load processes and takes them
    back, and ``server`` (a started ``ServerProcess``, pinned by its keeper)
    is loaded as a harness-started server is, CPU figures included, and left
    running; its keeper checked the name (it may come from another
    environment, ``servers.environments``).  ``canary`` (an
    ``unseen.Canary``) is checked right after the window, and its figure
    joins the round's ``interference``.
    """
    spec.validate(started=server is not None)
    started_at = iso_utc()
    _check_nofile(spec, max(split(spec.conns, spec.procs)) if spec.mode != "connect" else spec.conns)
    try:
        if server is not None:
            result = _run(spec, server, server.endpoint, started_at, on_window, pool=pool, canary=canary)
        elif spec.started:
            result = _run_started(spec, started_at, on_window, notes, pool, canary)
        else:
            result = _run(spec, None, spec.target, started_at, on_window, pool=pool, canary=canary)
    except LoadInterrupted as cut:
        if cut.result is not None and json_path is not None:
            write_json_atomic(json_path, cut.result.to_json())
        raise
    if json_path is not None:
        write_json_atomic(json_path, result.to_json())
    return result


def _run_started(spec, started_at, on_window, notes, pool, canary):
    """One load of a server the harness starts for it, and stops after."""
    # the load processes start (Python, hdrh, the loop's extension: ~0.1 s) while the server starts
    spare = []
    try:
        if pool is None:
            for _ in split(spec.conns, spec.procs):
                with held_signals():
                    spare.append(_Worker())
        server = server_process(spec, spec.server_cpus)
        with server:
            result = _run(spec, server, server.endpoint, started_at, on_window, spare, pool=pool, canary=canary)
    finally:
        for w in spare:  # those the run did not take (it stops the ones it took)
            w.stop()
    if server.stop_note:
        if notes is None:
            print(f"sockbench: warning: {server.stop_note}", file=sys.stderr, flush=True)
        else:
            notes.append(server.stop_note)
    return result


def server_args(spec):
    """The ``sockbench serve`` options a spec asks of the server it starts: protocol, workers, TLS (none for a
    ``--command``, which is told its own)."""
    if spec.command is not None:
        return ()
    extra = ("--protocol", spec.protocol) if spec.protocol != "raw" else ()
    if spec.workers != 1:
        extra += ("--workers", str(spec.workers))
    if spec.tls is not None:
        tls = spec.tls if spec.tls.cert else spec.tls.with_files(*ensure_certificate(_default_tls_folder()))
        extra += tuple(tls.server_args())
    return extra


def server_process(spec, cpus, extra=(), environment=None):
    """The (unstarted) ``ServerProcess`` of ``spec``'s server, pinned to ``cpus``."""
    return ServerProcess(spec.server, spec.transport, cpus=cpus, extra_args=(*server_args(spec), *extra),
                         command=spec.command, python=spec.server_python, environment=environment)


def _default_tls_folder():
    """Where a harness-started TLS server's certificate is made when the caller gave none: once per user of this
    machine, in a private folder of the temp dir (``sockbench load`` and ``run`` make theirs in the results folder)."""
    folder = os.path.join(tempfile.gettempdir(), f"sockbench-tls-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


def busy_warning(cpus, busy):
    """The one warning line naming the ``BusyProcess``es found on ``cpus`` before a run ("" when none)."""
    if not busy:
        return ""
    named = [f"pid {b.pid} ({_short(b.command)}, {b.share:.0%} of a CPU)" for b in busy[:BUSY_NAMED]]
    more = f" and {len(busy) - BUSY_NAMED} more" if len(busy) > BUSY_NAMED else ""
    return (f"sockbench: warning: busy on CPU{'s' if len(cpus) != 1 else ''} {','.join(map(str, cpus))} before the "
            f"run: {', '.join(named)}{more}; the figures may be disturbed")


def _short(command, limit=60):
    return command if len(command) <= limit else command[: limit - 3] + "..."


class _Worker:
    """One ``python -m sockbench.bench.load.worker`` child and its JSON-lines pipe."""

    def __init__(self, params=None):
        self.params = None
        #: True once it reported a result: it waits for its next parameters and may be used again
        self.reusable = False
        self.stderr = tempfile.TemporaryFile()
        # started under held_signals() by the caller, which stores it before a Ctrl-C can land
        # it dies with this process (SIGKILL: it has nothing to clean up, and ignores SIGTERM while it reports)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockbench.bench.load.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            preexec_fn=child_setup(death_signal=signal.SIGKILL),
        )
        self.buf = b""
        if params is not None:
            self.start(params)

    def start(self, params):
        """Hand the process its share of the load (it has been importing meanwhile)."""
        self.params = params
        self.reusable = False
        self.send(asdict(params))

    def send(self, obj):
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone: reading its end says why

    def fileno(self):
        return self.proc.stdout.fileno()

    def read_event(self):
        """After the pipe is readable: the next event dict, None while a line is incomplete, or an EOF event."""
        while b"\n" not in self.buf:
            chunk = os.read(self.fileno(), 1 << 20)
            if not chunk:
                self.proc.wait()
                err = self.stderr_tail()
                return {"event": "eof", "message": f"load process {self.params.index} exited (status "
                        f"{self.proc.returncode}){': ' + err if err else ''}"}
            self.buf += chunk
            if b"\n" not in self.buf:
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def stderr_tail(self):
        """The last line the load process wrote to stderr (read with ``pread``: a seek would move the offset the
        process writes at, if it still lives)."""
        fd = self.stderr.fileno()
        lines = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def alive(self):
        return self.proc.poll() is None

    def cut(self):
        """End its window now (SIGTERM): its loop reports what it measured until then."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except OSError:
                pass


def _wait_events(workers, deadline, on_event, server=None):
    """Read one event from each worker in ``workers`` (a dict index -> _Worker) before ``deadline``.

    Returns the indexes that did not answer in time.
    """
    sel = selectors.DefaultSelector()
    pending = dict(workers)
    for w in pending.values():
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                w = key.data
                ev = w.read_event()
                if ev is None:
                    continue
                sel.unregister(w.proc.stdout)
                del pending[w.params.index]
                on_event(w, ev)
            if server is not None:
                server_check = server()
                if server_check:
                    raise SockbenchError(server_check)
    finally:
        sel.close()
    return sorted(pending)


@dataclass
class ServerWindow:
    """What the harness knows of the server it started, over the window."""

    pid: int | None = None
    cpu0: tuple | None = None  # ``_server_sample`` at the end of warmup
    cpu1: tuple | None = None  # ... and at the window's end
    rss_peak_bytes: int | None = None
    exit_status: int | None = None  # set when the server exited during the run
    processes: int | None = None  # how many processes served (a --command's process tree), at the window's end
    #: ``cpus -> seconds`` other processes used there around the window (None: not read)
    process_s: object = None
    #: ``cpus -> procfs.foreign_stalls`` of other threads there around the window (None: not read)
    held: object = None
    #: ``{"server": share, "client": share}`` the sides' cgroups were throttled around the window (``unseen``)
    throttled: dict | None = None
    #: the canary's slowdown right after the window (``unseen.Canary``; None: not run)
    canary: float | None = None


def _run(spec, server, endpoint, started_at, on_window=None, spare=None, pool=None, canary=None):
    """Connect, run the window, collect: the setup, the window and the collection, then the result.

    A window cut short by a stop signal raises ``LoadInterrupted`` with its result (None if nothing was measured).
    """
    endpoint = resolve(endpoint)
    try:
        procs, problems, srv = measure(spec, server, endpoint, on_window, spare=spare, pool=pool, canary=canary)
    except LoadInterrupted as cut:
        if cut.measured is not None:
            procs, problems, srv = cut.measured
            if any(r.cpu_window_s > 0 for r in procs.values()):
                cut.result = build_result(spec, server, endpoint, started_at, procs, problems, srv, cut=cut.signum)
        raise
    return build_result(spec, server, endpoint, started_at, procs, problems, srv)


def measure(spec, server, endpoint, on_window=None, start_at=None, spare=None, pool=None, canary=None):
    """Probe, start the load processes, run one window, collect: ``({index: ProcResult}, [problems], window)``.

    ``endpoint`` is already resolved (``resolve``).  ``start_at()``, when
    given, is called once every load process is ready and returns the
    window's start on CLOCK_MONOTONIC (a load from several hosts starts each
    at one shared instant); without it the window starts ``START_MARGIN_S``
    from now.  ``spare`` are load processes started already, waiting for
    their parameters (taken from the list as they are used); ``pool`` (a
    ``pools.LoadPool``) lends the others and takes back those that finished
    cleanly.
    ``build_result`` turns the three into a result.  A stop signal once the
    window is set cuts it short (``_cut``): ``LoadInterrupted`` then carries
    the three, as far as they go.
    """
    if endpoint.transport == "udp":
        _probe(endpoint, datagram.PROBE_WORDING, datagram.PROBE_TIMEOUT_S, datagram.echo_probe)
    elif spec.tls is not None:
        _probe(endpoint, _STREAM_PROBE_WORDING, _STREAM_PROBE_TIMEOUT_S, tls_probe(endpoint, spec.tls))
    elif server is None and spec.protocol == "raw":
        # a server of another's: one plain message tells a TLS server from an echo server
        _probe(endpoint, _STREAM_PROBE_WORDING, _STREAM_PROBE_TIMEOUT_S, plain_probe(endpoint))
    else:
        _probe(endpoint, _STREAM_PROBE_WORDING, _STREAM_PROBE_TIMEOUT_S)
    if spec.name_busy:
        _warn_busy(spec, server, spare or ())
    workers = {}
    try:
        _spawn_workers(spec, server, endpoint, workers, spare, pool)
        _wait_ready(workers, server)
        start_ns = start_at() if start_at is not None else None
        # the quotas that can throttle either side, read around the window (bench/load/unseen.py)
        throttle = Throttle(server.pids if server is not None else (), [w.proc.pid for w in workers.values()])
        throttle.read()
        # every process's CPU around the window: what caps the foreign time (bench/load/interference.py)
        before, threads_before = process_snapshot(), thread_snapshot()
        end_ns = _open_window(spec, workers, on_window, start_ns)
        reported = {}  # index -> ProcResult, as they come: a stop signal in the middle keeps those
        try:
            # --workers (and a --command's process tree): load process 0 samples the first process; this process
            # the others, at the window's edges
            tree = server.pids if server else []
            edges = _sample_edges(tree[1:], end_ns - int(spec.duration_s * 1e9), end_ns) if server else None
            # a tree's peak RSS now, at the window's end: a child per connection is gone once the load disconnects
            tree_rss = _rss_sum(tree) if server is not None and len(tree) > 1 else None
            procs, problems, srv = _collect(spec, server, workers, end_ns, edges, procs=reported)
        except KeyboardInterrupt as stop:
            raise LoadInterrupted(signal_of(stop), _cut(spec, server, workers, reported)) from None
        if server is not None:
            srv.processes = len(tree)
            if tree_rss is not None:
                srv.rss_peak_bytes = max(srv.rss_peak_bytes or 0, tree_rss)
        after, threads_after = process_snapshot(), thread_snapshot()
        throttle.read()
        srv.throttled = throttle.shares()
        srv.canary = canary.check() if canary is not None else None
    finally:
        for w in workers.values():
            if pool is not None and w.reusable and w.alive():
                pool.give_back(w)
            else:
                w.stop()
    own = [w.proc.pid for w in workers.values()] + (server.pids + [server.proc.pid] if server is not None else [])
    srv.process_s = lambda cpus: foreign_process_s(before, after, cpus, own=own)
    srv.held = lambda cpus: foreign_stalls(threads_before, threads_after, cpus, own=own)
    return procs, problems, srv


def _warn_busy(spec, server, spare=()):
    """Name, in one line on stderr, what is already busy on the run's CPUs (this run's processes aside)."""
    cpus = _stat_cpus(spec, server)
    own = ((*server.pids, server.proc.pid) if server is not None else ()) + tuple(w.proc.pid for w in spare)
    warning = busy_warning(cpus, busy_processes(cpus, BUSY_SAMPLE_S, own=own))
    if warning:
        print(warning, file=sys.stderr, flush=True)


def _spawn_workers(spec, server, endpoint, workers, spare=None, pool=None):
    """Start one load process per share of the connections, into ``workers`` (index -> _Worker).

    A process of ``spare`` (started already) is taken before one of ``pool``, and that before a new one.
    """
    cpus = spec.client_cpus
    first = 0
    for i, n in enumerate(split(spec.conns, spec.procs)):
        p = WorkerParams(
            index=i, host=endpoint.host or "", port=endpoint.port or 0, family=int(endpoint.family),
            transport=endpoint.transport, path=endpoint.path, mode=spec.mode, conns=n,
            first_cid=(first if spec.mode != "connect" else i),
            cid_step=(1 if spec.mode != "connect" else spec.procs),
            size=spec.size, depth=spec.depth,
            rate=(spec.rate * n / spec.conns if spec.mode == "open" else 0.0),
            interval_ns=int(round(spec.interval_s * 1e9)), timeout_ns=int(spec.timeout_s * 1e9),
            cpus=(cpus[i % len(cpus)],), protocol=spec.protocol,
            poll=spec.mode == "open" and spec.procs <= len(cpus),
            # the first load process reads the server's CPU and the CPUs' counters at the window's edges
            server_pid=server.pid if server is not None and i == 0 else 0,
            stat_cpus=_stat_cpus(spec, server) if i == 0 else (),
            engine=spec.engine,
            tls=({"version": spec.tls.version, "cipher": spec.tls.cipher, "resumption": spec.tls.resumption}
                 if spec.tls is not None else None),
        )
        first += n
        with held_signals():
            workers[i] = spare.pop(0) if spare else pool.take() if pool is not None else _Worker()
        workers[i].start(p)


def _stat_cpus(spec, server):
    """The CPUs whose counters are read: the client's, and the server's when the harness pinned it."""
    return tuple(sorted(set(spec.client_cpus) | (set(spec.server_cpus) if server is not None else set())))


def _wait_ready(workers, server):
    """Every load process connects and says ready (or fails: then nothing is measured)."""

    def server_gone():
        if server is not None and not server.alive():
            return f"server {server.name!r} exited while the load connected (status {server.proc.returncode})"
        return None

    def on_ready(w, ev):
        if ev.get("event") != "ready":
            raise SockbenchError(ev.get("message") or f"load process {w.params.index} failed", ev.get("exit_code"))

    late = _wait_events(workers, time.monotonic() + READY_TIMEOUT_S, on_ready, server_gone)
    if late:
        raise SockbenchError(f"{len(late)} load process(es) did not connect within {READY_TIMEOUT_S:.0f} s")


def _open_window(spec, workers, on_window, start_ns=None):
    """Fix one window for every load process (CLOCK_MONOTONIC) and send it; return its end."""
    if start_ns is None:
        start_ns = time.monotonic_ns() + int(START_MARGIN_S * 1e9)
    warm_end_ns = start_ns + int(spec.warmup_s * 1e9)
    end_ns = warm_end_ns + int(spec.duration_s * 1e9)
    if on_window is not None:
        on_window(start_ns, end_ns)
    for w in workers.values():
        w.send({"start_ns": start_ns, "warm_end_ns": warm_end_ns, "end_ns": end_ns})
    return end_ns


def _sample_pid(pid):
    """``_server_sample``'s ``(user_s, sys_s, threads)`` for one more server process, read here; None if gone."""
    try:
        user, sys_ = read_proc_stat(pid)
        return user, sys_, read_task_runtimes(pid)
    except (OSError, ValueError, IndexError):
        return None


def _sample_edges(pids, warm_end_ns, end_ns):
    """Samples of ``pids`` (the workers after the first) at the end of warmup and of the window, or None.

    Two short wake-ups at the window's edges, not inside it: reading a few
    /proc files costs this process well under a millisecond each time.
    """
    if not pids:
        return None
    edges = []
    for at_ns in (warm_end_ns, end_ns):
        time.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
        edges.append([_sample_pid(pid) for pid in pids])
    return edges


def _add_samples(first, more):
    """One sample of several server processes: the sum of their ticks, every thread's runtime; None if any is None."""
    if first is None or more is None or any(m is None for m in more):
        return None
    user, sys_, threads = first[0], first[1], dict(first[2]) if len(first) > 2 else {}
    for m in more:
        user, sys_ = user + m[0], sys_ + m[1]
        if threads:  # none: the first one's were not read, and the ticks are used (``server_cpu``)
            threads.update(m[2])
    return user, sys_, threads


def _collect(spec, server, workers, end_ns=None, edges=None, cut_by=None, procs=None):
    """The load processes' results within the hard timeout, the problems, and the server's window.

    This process sleeps through the window (waking up inside it to read the
    server's CPU took a CPU from one side: load process 0 reads it instead).
    Returns ``({index: ProcResult}, [problem lines], ServerWindow)``.  With
    ``cut_by`` (a window cut short, see ``_cut``), the results are due by
    that ``time.monotonic()`` instead.  ``procs``: where the results go as
    they come (the load processes already there are not waited for).
    """
    procs = {} if procs is None else procs
    problems = []
    srv = ServerWindow(pid=server.pid if server else None)

    def on_result(w, ev):
        if ev.get("event") == "result":
            procs[w.params.index] = ProcResult.from_json(ev["result"])
            w.reusable = True
        else:
            problems.append(ev.get("message") or f"load process {w.params.index} failed")

    deadline = cut_by if cut_by is not None else end_ns / 1e9 + max(HARD_TIMEOUT_GRACE_S, spec.timeout_s + 2)
    for i in _wait_events({i: w for i, w in workers.items() if i not in procs}, deadline, on_result):
        workers[i].stop()
        problems.append(f"load process {i} did not stop when asked; killed" if cut_by is not None
                        else f"load process {i} hung; killed at the hard timeout")
    if server is not None:
        first = procs.get(0)
        samples = (first.server_cpu if first is not None else None) or [None, None]
        srv.cpu0, srv.cpu1 = (_server_sample(x) for x in samples)
        if edges is not None:
            if server.command is not None:
                # a --command's tree: a child that came and went around an edge (the probe's connection, in a
                # server that forks per connection) is left out at both, rather than leaving the CPU unknown
                kept = [i for i, (a, b) in enumerate(zip(*edges)) if a is not None and b is not None]
                edges = [[e[i] for i in kept] for e in edges]
            srv.cpu0, srv.cpu1 = _add_samples(srv.cpu0, edges[0]), _add_samples(srv.cpu1, edges[1])
        elif len(server.pids) > 1:
            srv.cpu0 = srv.cpu1 = None  # cut short before the other processes were sampled: unknown, not understated
        srv.rss_peak_bytes = read_rss_peak(server)  # a high-water mark: read after the window
    if server is not None and not server.alive() and cut_by is None:
        srv.exit_status = server.proc.returncode
        problems.insert(0, f"the server exited (status {server.proc.returncode}) during the run")
    return procs, problems, srv


def _cut(spec, server, workers, reported):
    """A stop signal came inside the window: end it now in every load process, and collect what each measured.

    Each gets SIGTERM (its loop ends the window and reports; one that is
    still before its loop ignores it, and is killed after ``CUT_GRACE_S``).
    The server's exit is no problem here (a terminal's Ctrl-C reaches it too).
    Another stop signal while this waits is not held back: the caller's
    cleanup stops every child by pid.
    """
    for i, w in workers.items():
        if i not in reported:
            w.cut()
    return _collect(spec, server, workers, cut_by=time.monotonic() + CUT_GRACE_S, procs=reported)


def _rss_sum(pids):
    """The summed peak RSS (``VmHWM``) of ``pids``; a process gone meanwhile counts none."""
    total = 0
    for pid in pids:
        try:
            total += read_rss_bytes(pid, "VmHWM")
        except (OSError, SockbenchError, ValueError):
            continue
    return total or None


def read_rss_peak(server):
    """The peak RSS (``VmHWM``) summed over every serving process (``--workers``: each worker's; a --command's
    live tree, where a child that is gone meanwhile counts none)."""
    if getattr(server, "command", None) is not None:
        return _rss_sum(server.pids)
    try:
        return sum(read_rss_bytes(pid, "VmHWM") for pid in server.pids)
    except (OSError, SockbenchError, ValueError):
        return None


# --- the result ------------------------------------------------------------------------------


def merge_procs(rs):
    """The load processes' reports added up as ``ProcResult`` declares each field (``schema.merge_fields``): counts
    summed, histograms merged exactly (decoded and added), the exact means from the sums of the values."""
    m = SimpleNamespace(**merge_fields(rs, ProcResult, hdr=hdr.merge_encoded))
    m.mean1_ns = m.hdr1_sum_ns / m.hdr1.get_total_count() if m.hdr1.get_total_count() else None
    m.mean2_ns = m.hdr2_sum_ns / m.hdr2.get_total_count() if m.hdr2.get_total_count() else None
    return m


def _measured_s(spec, timeseries, srv):
    """The seconds the rates are over: None for the whole window, or, when the server exited inside it,
    the window up to the end of the last interval that completed a message (at least one interval).

    Dividing what a dead server answered by the whole window would report a
    figure several times too low as if it had been measured.
    """
    if srv.exit_status is None:
        return None
    after = timeseries.msgs[timeseries.warmup_intervals:]
    last = max((i for i, m in enumerate(after) if m), default=0)
    return round(min(spec.duration_s, (last + 1) * spec.interval_s), 6)


def _throughput(spec, m, measured_s=None):
    """Payload bytes, whatever the protocol; wire bytes add the framing and headers."""
    dur = measured_s or spec.duration_s
    target = achieved = pacing = behind = conns_per_s = None
    if spec.mode == "open":
        target = spec.rate
        achieved = m.sent_window / dur
        pacing = (achieved - spec.rate) / spec.rate
        behind = achieved < spec.rate * (1 - BEHIND_FRACTION)
    if spec.mode == "connect":
        conns_per_s = m.cycles / dur
    return Throughput(
        msgs_per_s=m.msgs / dur,
        bytes_per_s=m.rx_bytes / dur,
        wire_bytes_per_s=m.rx_wire_bytes / dur,
        target_rate=target,
        achieved_rate=achieved,
        pacing_error=pacing,
        behind=behind,
        conns_per_s=conns_per_s,
        measured_s=measured_s,
    )


def _client_cpu(rs, m, engine="epoll"):
    """The client's own CPU over the window, its loops' counts, and whether it was the bottleneck (client-bound)."""
    window = m.cpu_window_s or 0.0
    ncpu = len(m.cpus) or 1
    util = (m.user_s + m.sys_s) / (window * ncpu) if window > 0 else None
    busy = None
    if m.polling and window > 0:
        # a polling process is always on its CPU: its busy share is the time outside idle passes
        busy = min(1.0, sum(max(0.0, r.cpu_window_s - (r.idle_s or 0.0)) for r in rs) / (window * ncpu))
    client = Client.of(rs, cpu_util=util, polling=m.polling, busy_util=busy, user_s=m.user_s, sys_s=m.sys_s,
                       cpus=m.cpus, us_per_msg=CpuPerMsg.of(m.user_s, m.sys_s, m.msgs), engine=engine)
    load = client.load
    return client, bool(load is not None and load >= CLIENT_BOUND_UTIL)


def _server_cpu(spec, server, srv, msgs, measured_s=None):
    """The server's CPU over the same window, from load process 0's samples."""
    user_s = sys_s = source = cpus = util = None
    per_msg = CpuPerMsg()
    if srv.cpu0 and srv.cpu1:
        user_s, sys_s, source = server_cpu(srv.cpu0, srv.cpu1)
        user_s, sys_s = round(user_s, 6), round(sys_s, 6)
        per_msg = CpuPerMsg.of(user_s, sys_s, msgs)
    if server is not None:
        cpus = list(spec.server_cpus)
        util = (user_s + sys_s) / ((measured_s or spec.duration_s) * len(cpus)) if user_s is not None else None
    python = None
    if server is not None and server.command is None:
        python = interpreter_version(server.python or sys.executable)
    return ServerProc(pid=srv.pid, user_s=user_s, sys_s=sys_s, rss_peak_bytes=srv.rss_peak_bytes, us_per_msg=per_msg,
                      cpu_source=source, cpus=cpus, cpu_util=util, exit_status=srv.exit_status, python=python,
                      processes=srv.processes if server is not None and server.command is not None else None)


def limited_by(client_bound, server_proc):
    """Which side limited the run: a saturated CPU (None: neither was, e.g. latency-bound)."""
    server_bound = bool(server_proc.cpu_util is not None and server_proc.cpu_util >= SERVER_BOUND_UTIL)
    return {(True, True): "both", (True, False): "client", (False, True): "server"}.get((client_bound, server_bound))


def _timeseries(spec, rs, m, cut_s=None):
    """Messages per interval over every process, and the longest silence after warmup (None if a process is missing).

    ``cut_s``: the window was cut short after that many seconds, and the intervals after it are left out.
    """
    ts_msgs = m.ts_msgs
    ts_sent = m.ts_sent if spec.mode == "open" else None
    warm_n = math.ceil(spec.warmup_s / spec.interval_s - 1e-9)
    if cut_s is not None:
        n = warm_n + math.ceil(cut_s / spec.interval_s - 1e-9)
        ts_msgs, ts_sent = ts_msgs[:n], ts_sent[:n] if ts_sent is not None else None
    idle_s = _longest_idle(ts_msgs[warm_n:], spec.interval_s) if len(rs) == spec.procs else None
    return Timeseries(
        interval_s=spec.interval_s,
        msgs=ts_msgs,
        warmup_intervals=warm_n,
        longest_idle_s=idle_s,
        sent=ts_sent,
    )


def _fairness(spec, rs):
    """How the window's messages were spread over the connections (None in connect mode, or without every
    load process's counts)."""
    if spec.mode == "connect" or len(rs) != spec.procs or any(r.conn_msgs is None for r in rs):
        return None
    return Fairness.of([n for r in rs for n in r.conn_msgs], starved=sum(r.starved or 0 for r in rs))


def _interference(spec, server, rs, server_proc, srv, client):
    """The foreign load on the run's CPUs over the window, from load process 0's counters, and what took CPU
    where the guest does not see it (``unseen``)."""
    first = next((r for r in rs if r.index == 0), None)
    if first is None or not first.cpu_stat:
        return None
    server_s = server_proc.user_s + server_proc.sys_s if server_proc.user_s is not None else None
    try:
        loadavg = os.getloadavg()[0]
    except OSError:
        loadavg = None
    seen = interference(
        first.cpu_stat,
        server_cpus=spec.server_cpus if server is not None else None,
        client_cpus=spec.client_cpus,
        server_s=server_s,
        load_procs=[(r.cpus, r.user_s + r.sys_s) for r in rs],
        loadavg_1m=loadavg,
        irq_is_own=bool(irq_time_accounting()),
        process_s=srv.process_s,
        held=srv.held,
    )
    if seen is None:
        return None
    throttled = srv.throttled or {}
    idle = loaded_idle(spec.mode, spec.transport, spec.conns, spec.depth, server_proc.cpu_util if server else None,
                       client.load)
    unseen = is_unseen(throttled.get("server"), throttled.get("client"), idle, srv.canary, seen=seen.disturbed)
    return replace(seen, server_throttled=throttled.get("server"), client_throttled=throttled.get("client"),
                   loaded_idle=idle, canary=srv.canary, unseen=unseen, disturbed=seen.disturbed or unseen)


def _invalid_reasons(spec, rs, problems, m, idle_s, fairness=None, cut=False):
    """Why the run is invalid, one reason per problem (empty: it is valid).

    ``cut``: a stop signal cut the window short, and what judges a whole
    window (connections starved, ended early, stalled, no message) does not apply.
    """
    errors = m.errors
    reasons = list(problems)
    if errors["mismatch"]:
        reasons.append(f"{errors['mismatch']} connection(s) echoed bytes that were not sent, or not in order (mismatch)")
    if errors["protocol"]:
        reasons.append(f"{errors['protocol']} connection(s) got a {spec.protocol} answer with a wrong length or header (protocol)")
    if errors["reset"]:
        reasons.append(f"{errors['reset']} connection(s) reset or closed by the server")
    if errors["connect"]:
        reasons.append(f"{errors['connect']} connect error(s)")
    if errors["timeout"]:
        reasons.append(f"{errors['timeout']} message(s) unanswered for {spec.timeout_s:g} s (timeout)")
    if cut:
        return reasons
    if m.ended_early and not any("connection" in x for x in reasons):
        reasons.append("every connection of a load process was closed before the end")
    if fairness is not None and fairness.starved:
        # whatever the per-message timeout: a connection the server never serves is a failure
        reasons.append(f"starved: {fairness.starved} of {fairness.conns} connections completed no message")
    if len(rs) == spec.procs and not m.msgs and not reasons:
        reasons.append("no message completed in the measured window")
    elif idle_s is not None and spec.mode != "open" and idle_s >= STALL_S and not reasons:
        # closed/connect loops always have messages outstanding: a long silence is a stall
        # (a server or a machine that stopped), not a measurement
        reasons.append(f"stalled: no message completed for {idle_s:.1f} s in the measured window")
    return reasons


def build_result(spec, server, endpoint, started_at, procs, problems, srv, cut=None):
    """The ``LoadResult`` of a run, from the load processes' ``ProcResult``s, the problems and the server's window.

    ``cut``: the stop signal that cut the window short; the rates are then over
    the seconds measured (``measured_s``, the longest load process's window)
    and the result is invalid, saying so first.
    """
    rs = [procs[i] for i in sorted(procs)]
    m = merge_procs(rs)
    cut_s = round(max((r.cpu_window_s for r in rs), default=0.0), 6) if cut is not None else None
    timeseries = _timeseries(spec, rs, m, cut_s)
    measured_s = cut_s if cut is not None else _measured_s(spec, timeseries, srv)
    client, client_bound = _client_cpu(rs, m, spec.engine)
    # a server that exited ends the measurement: whatever the client's CPU did then, it was not the limit
    client_bound = client_bound and srv.exit_status is None
    server_proc = _server_cpu(spec, server, srv, m.msgs, measured_s)
    fairness = _fairness(spec, rs)
    reasons = _invalid_reasons(spec, rs, problems, m, timeseries.longest_idle_s, fairness, cut is not None)
    if cut is not None:
        reasons.insert(0, f"interrupted by {signal.Signals(cut).name} {cut_s:.1f} s into the {spec.duration_s:g} s "
                          f"window; the figures cover those {cut_s:.1f} s")
    datagrams = datagram.merge(rs) if spec.transport == "udp" else None
    reasons += datagram.invalid_reasons(datagrams)
    tls = _tls_part(spec, rs, measured_s)
    if tls is not None and tls.handshake_errors:
        reasons.append(f"{tls.handshake_errors} TLS handshake(s) failed (the first: {tls.handshake_error})")
    second = hdr.summary_us(m.hdr2, m.mean2_ns)
    return LoadResult(
        server=spec.label if spec.started else endpoint.format(),
        target=Target(host=endpoint.host, port=endpoint.port, path=endpoint.path,
                      command=spec.command.text if spec.command is not None else None),
        workload=copy_fields(Workload, spec, transport=endpoint.transport, server_cpus=list(spec.server_cpus),
                             client_cpus=list(spec.client_cpus), python=spec.python or None,
                             tls=(TlsSetting(version=spec.tls.version, cipher=spec.tls.cipher,
                                             resumption=spec.tls.resumption) if spec.tls is not None else None)),
        throughput=_throughput(spec, m, measured_s),
        latency_us=hdr.summary_us(m.hdr1, m.mean1_ns),
        service_us=second if spec.mode == "open" else None,
        cycle_us=second if spec.mode == "connect" else None,
        errors=Errors.of(m.errors),
        valid=not reasons,
        invalid_reason="; ".join(reasons) if reasons else None,
        client_bound=client_bound,
        limited_by=limited_by(client_bound, server_proc),
        server_proc=server_proc,
        client=client,
        timeseries=timeseries,
        hdr=hdr.encode_text(m.hdr1),
        hdr_unit="ns",
        hdr_service=hdr.encode_text(m.hdr2) if spec.mode == "open" else None,
        machine=Machine(**machine_info(cached=True)),
        started_at=started_at,
        interference=_interference(spec, server, rs, server_proc, srv, client),
        fairness=fairness,
        datagrams=datagrams,
        tls=tls,
    )


def _tls_part(spec, rs, measured_s=None):
    """A TLS load's handshakes over every load process (None for a plain load): what was negotiated (the first
    process that says), and in connect mode the handshakes completed in the window, resumed or not."""
    if spec.tls is None:
        return None
    parts = [r.tls for r in rs if r.tls]
    first = next((t for t in parts if t.get("version")), {})
    handshakes = resumed = per_s = None
    if spec.mode == "connect":
        handshakes = sum(t.get("handshakes") or 0 for t in parts)
        resumed = sum(t.get("resumed") or 0 for t in parts)
        per_s = handshakes / (measured_s or spec.duration_s)
    return TlsPart(version=first.get("version"), cipher=first.get("cipher"), group=first.get("group"),
                   handshakes=handshakes, resumed=resumed, handshakes_per_s=per_s,
                   handshake_errors=sum(t.get("handshake_errors") or 0 for t in parts),
                   handshake_error=next((t["handshake_error"] for t in parts if t.get("handshake_error")), None))


def _longest_idle(msgs, interval_s):
    """The longest run of intervals with no completed message, in seconds."""
    longest = run = 0
    for m in msgs:
        run = run + 1 if not m else 0
        longest = max(longest, run)
    return round(longest * interval_s, 6)
