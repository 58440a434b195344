"""The load harness: the Python API behind ``sockbench load`` and the pytest-benchmark suite.

Usage::

    from sockbench.bench.load.harness import LoadSpec, run_load

    spec = LoadSpec(server="uvloop", mode="closed", conns=100, size=64, depth=8,
                    duration_s=5.0, warmup_s=1.0, procs=1,
                    server_cpus=(0,), client_cpus=(1,), interval_s=0.1)
    result = run_load(spec, json_path=None)   # the schema-1 result dict

``target=("127.0.0.1", port)`` instead of ``server=`` loads a server that is
already running.  ``protocol="frame"`` or ``"json"`` (default ``"raw"``)
speaks one of the framed protocols of ``sockbench.servers.protocols``; a
harness-started server is then started with ``--protocol`` too.  ``size`` is
always the PAYLOAD size, and ``throughput.bytes_per_s`` counts payload bytes
(``wire_bytes_per_s`` adds the framing and headers).

Why it is built this way
------------------------
* The hot loop is not here.  It is ``sockbench.ext.loadgen`` (Cython, no GIL,
  no Python call per message), run in ``procs`` load processes
  (``python -m sockbench.bench.load.worker``), each pinned to a client CPU.  This module only
  orchestrates: it starts the server (``sockbench.servers.process.ServerProcess``, pinned
  to the server CPUs), waits until every load process has connected, then
  fixes ONE window for all of them on CLOCK_MONOTONIC (start, end of warmup,
  end), and sleeps through it.  The first load process reads the server's
  CPU counters at the window's edges from its C loop, in a few µs: when this
  process woke up to read them, it took a busy CPU from the server or the
  client for ~0.3 ms twice a round, enough to raise an open-loop p99.
* Histograms are merged exactly: each load process encodes its HDR histogram
  with the ``hdrhistogram`` package, and the parent decodes and adds them.
  Percentiles are computed once, on the merged histogram; never averaged.
* Nothing measured is lost: the result JSON is written as soon as the run
  ends, even when the run is invalid (a byte mismatch, a server that died, a
  load process that hung and was killed at the hard timeout).  ``valid`` and
  ``invalid_reason`` say what went wrong.  A closed or connect run in which
  no message completes for ``STALL_S`` (1 s) of the measured window is
  invalid too ("stalled"), even when the per-message timeout is longer than
  the run: such a window measures a stopped server or machine, not a
  throughput.  Errors a user can act on (a refused
  connection, bad input, too few file descriptors) are a ``SockbenchError``
  raised before anything starts.
* ``client_bound`` is true when the load processes' CPUs were at least 95%
  busy: then the figure measures the client as much as the server.
* Open loop polls instead of sleeping between sends when every load process
  has a client CPU of its own (``client.polling``; with more processes than
  CPUs they sleep, to share).  On a VM a timer wake-up per message cost the
  client about 20 µs of CPU, and each wake-up, for a send or for an answer,
  added latency that was charged to the server: ``cython`` at 50 conns, p50
  31 µs at 5,000 msgs/s and 37 µs at 50,000 sleeping, against 17 µs at both
  polling.  A polling client is always on its CPU, so for it
  ``client_bound`` reads its busy share (``client.busy_util``: the time
  outside passes that found nothing to do) instead of its CPU time.
  ``limited_by`` says which side's CPUs were saturated ("client", "server",
  "both", or null when neither was).
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
import time
from dataclasses import asdict, dataclass, field

from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.thresholds import BEHIND_FRACTION, CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL, STALL_S
from sockbench.timestamps import iso_utc
# the wire protocols the load speaks: the same names, and limit, as ``sockbench serve --protocol``
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE, PROTOCOLS

__all__ = [
    "LoadSpec",
    "run_load",
    "SCHEMA",
    "MODES",
    "PROTOCOLS",
    "ERROR_KINDS",
    "MAX_FRAMED_SIZE",
]

SCHEMA = 1
MODES = ("closed", "open", "connect")
#: the error counters of a result's ``errors.by_kind`` (``protocol``: a frame/json answer whose
#: framing or header is wrong; ``mismatch``: content bytes that are not the ones sent)
ERROR_KINDS = ("connect", "reset", "timeout", "mismatch", "protocol")
#: frame/json payloads above this are over the servers' default ``--max-message`` (16 MiB)
MAX_FRAMED_SIZE = DEFAULT_MAX_MESSAGE
#: between "every load process is ready" and the window's start
START_MARGIN_S = 0.05
#: how long load processes get to spawn and connect
READY_TIMEOUT_S = 60.0
#: after the window's end, how long before a silent load process is killed
HARD_TIMEOUT_GRACE_S = 10.0
MAX_DURATION_S = 3600.0
MAX_IN_FLIGHT = 10_000_000


@dataclass(frozen=True)
class LoadSpec:
    """One load run.  Exactly one of ``server`` (a registry name) and ``target`` ((host, port))."""

    server: str | None = None
    target: tuple | None = None
    mode: str = "closed"
    conns: int = 10
    size: int = 64
    depth: int = 1
    rate: float | None = None  # open mode: total msgs/s over every connection and process
    duration_s: float = 5.0
    warmup_s: float = 1.0
    procs: int = 1
    server_cpus: tuple = (0,)
    client_cpus: tuple = (1,)
    interval_s: float = 0.1
    timeout_s: float = 5.0  # a message outstanding longer than this is a timeout error
    server_options: dict = field(default_factory=dict)
    protocol: str = "raw"  # raw, frame or json; size is the payload size in each

    def validate(self):
        """Raise a one-line ``UsageError`` for anything that cannot run."""
        if (self.server is None) == (self.target is None):
            raise UsageError("give either a server name or --target HOST:PORT (exactly one)")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if self.server is not None:
            from sockbench.servers import registry

            server = registry.get(self.server)
            ok, why = server.availability()
            if not ok:
                raise UsageError(f"server {self.server!r}: {why}")
            if self.protocol not in server.protocols:
                raise UsageError(
                    f"server {self.server!r} does not speak --protocol {self.protocol}; "
                    f"it speaks {', '.join(server.protocols)}"
                )
        else:
            if not (isinstance(self.target, (tuple, list)) and len(self.target) == 2):
                raise UsageError(f"target must be (host, port), not {self.target!r}")
            port = self.target[1]
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UsageError(f"bad target port {port!r}; use 1..65535")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        for name in ("conns", "size", "depth", "procs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"{name} must be a whole number >= 1, not {v!r}")
        if self.protocol != "raw" and self.size > MAX_FRAMED_SIZE:
            raise UsageError(f"{self.protocol} payloads are limited to 16 MiB (the servers' --max-message), not {self.size:,} B")
        if self.procs > self.conns:
            raise UsageError(f"--procs {self.procs} > --conns {self.conns}: each load process needs a connection")
        if self.conns > 1_000_000 or self.depth > 1_000_000:
            raise UsageError("conns and depth are limited to 1,000,000")
        if self.mode == "closed" and self.conns * self.depth > MAX_IN_FLIGHT:
            # the loop keeps one 8-byte send time per message in flight
            raise UsageError(f"conns x depth = {self.conns * self.depth:,} messages in flight; the limit is {MAX_IN_FLIGHT:,}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"duration must be > 0 and <= {MAX_DURATION_S:.0f} s, not {self.duration_s!r}")
        if not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise UsageError(f"warmup must be >= 0 and <= {MAX_DURATION_S:.0f} s, not {self.warmup_s!r}")
        if not 0.001 <= self.interval_s <= self.duration_s + self.warmup_s:
            raise UsageError(f"interval must be >= 0.001 s and no longer than the run, not {self.interval_s!r}")
        if not 0 < self.timeout_s <= MAX_DURATION_S:
            raise UsageError(f"timeout must be > 0 s, not {self.timeout_s!r}")
        if self.mode == "open":
            if self.rate is None or not self.rate > 0 or not math.isfinite(self.rate):
                raise UsageError("open mode needs --rate MSGS_PER_S > 0")
        elif self.rate is not None:
            raise UsageError(f"--rate applies to open mode only, not {self.mode}")
        allowed = os.sched_getaffinity(0)
        for label, cpus in (("server", self.server_cpus), ("client", self.client_cpus)):
            if not cpus:
                raise UsageError(f"--{label}-cpus is empty")
            missing = sorted(set(cpus) - allowed)
            if missing:
                raise UsageError(
                    f"--{label}-cpus {','.join(map(str, missing))} not available here; usable CPUs: "
                    f"{','.join(map(str, sorted(allowed)))}"
                )
        return self


# --- the run ---------------------------------------------------------------------------------


def _resolve(host, port, mode):
    try:
        family = socket.AF_INET if mode == "connect" else socket.AF_UNSPEC
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        what = "an IPv4 address" if mode == "connect" else "an address"
        raise UsageError(f"cannot resolve {host!r} to {what}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, addr[0], addr[1]


def _probe(family, host, port):
    """One connection before any load: a refused connection is a clear one-line error."""
    from sockbench.bench.load.worker import format_addr

    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect((host, port))
    except ConnectionRefusedError:
        raise SockbenchError(f"connection refused by {format_addr(host, port)}: is an echo server listening there?") from None
    except TimeoutError:
        raise SockbenchError(f"connecting to {format_addr(host, port)} timed out") from None
    except OSError as e:
        raise SockbenchError(f"cannot connect to {format_addr(host, port)}: {e.strerror or e}") from None
    finally:
        s.close()


def _check_nofile(per_proc):
    from sockbench.bench.load.worker import FD_HEADROOM

    needed = per_proc + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"{per_proc} connections per load process need {needed} file descriptors but RLIMIT_NOFILE "
            f"allows {hard}; use more --procs, fewer --conns, or raise the hard limit"
        )


def _split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _server_sample(s):
    """A load process's sample of the server's CPU as ``(user_s, sys_s, threads)``, or None if unread.

    ``user_s`` and ``sys_s`` come from /proc/PID/stat, in clock ticks of 10 ms;
    ``threads`` is ``{tid: seconds}``, the scheduler's runtime of each thread
    (empty when there were too many to read: then the ticks are used).
    """
    from sockbench.procfs import TICK_S

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
    from sockbench.procfs import TICK_S

    user, sys_ = c1[0] - c0[0], c1[1] - c0[1]
    ticks = user + sys_
    t0, t1 = (c0[2], c1[2]) if len(c0) > 2 and len(c1) > 2 else ({}, {})
    if not t1 or ticks <= 0 or not set(t0) <= set(t1):
        return user, sys_, "ticks"
    exact = sum(t1.values()) - sum(t0.values())
    if exact < ticks - TICK_S - 1e-3:
        return user, sys_, "ticks"
    return user * exact / ticks, sys_ * exact / ticks, "schedstat"


def run_load(spec, json_path=None, on_window=None):
    """Run one load as ``spec`` says; return the schema-1 result dict (and write it to ``json_path``).

    Raises ``SockbenchError`` only before the load starts (bad spec, server
    that does not start, refused connection, file descriptor limit); once the
    load has started, every problem ends up in the result as ``valid: false``.
    ``on_window(start_ns, end_ns)`` is told the load's window (CLOCK_MONOTONIC)
    just before it opens, so that an observer can keep quiet through it.
    """
    spec.validate()
    started_at = iso_utc()
    _check_nofile(max(_split(spec.conns, spec.procs)) if spec.mode != "connect" else spec.conns)
    if spec.server is not None:
        from sockbench.servers.process import ServerProcess

        extra = ("--protocol", spec.protocol) if spec.protocol != "raw" else ()
        with ServerProcess(spec.server, cpus=spec.server_cpus, extra_args=extra) as server:
            host, port = server.address
            result = _run(spec, server, host, port, started_at, on_window)
    else:
        result = _run(spec, None, spec.target[0], spec.target[1], started_at, on_window)
    if json_path is not None:
        write_json_atomic(json_path, result)
    return result


class _Worker:
    """One ``python -m sockbench.bench.load.worker`` child and its JSON-lines pipe."""

    def __init__(self, params):
        import tempfile

        self.params = params
        from sockbench.children import child_setup

        self.stderr = tempfile.TemporaryFile()
        # started under held_signals() by the caller, which stores it before a Ctrl-C can land
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockbench.bench.load.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, preexec_fn=child_setup(),
        )
        self.buf = b""
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
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

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


def _run(spec, server, host, port, started_at, on_window=None):
    from sockbench.bench.load.worker import WorkerParams
    from sockbench.children import held_signals

    family, host, port = _resolve(host, port, spec.mode)
    _probe(family, host, port)

    shares = _split(spec.conns, spec.procs)
    cpus = spec.client_cpus
    workers = {}
    results = {}
    problems = []
    srv = {"pid": server.pid if server else None}

    def server_gone():
        if server is not None and not server.alive():
            return f"server {server.name!r} exited while the load connected (status {server.proc.returncode})"
        return None

    try:
        first = 0
        for i, n in enumerate(shares):
            p = WorkerParams(
                index=i, host=host, port=port, family=int(family), mode=spec.mode, conns=n,
                first_cid=(first if spec.mode != "connect" else i),
                cid_step=(1 if spec.mode != "connect" else spec.procs),
                size=spec.size, depth=spec.depth,
                rate=(spec.rate * n / spec.conns if spec.mode == "open" else 0.0),
                interval_ns=int(round(spec.interval_s * 1e9)), timeout_ns=int(spec.timeout_s * 1e9),
                cpus=(cpus[i % len(cpus)],), protocol=spec.protocol,
                poll=spec.mode == "open" and spec.procs <= len(cpus),
                # the first load process reads the server's CPU at the window's edges, from its C loop
                server_pid=server.pid if server is not None and i == 0 else 0,
            )
            first += n
            with held_signals():
                workers[i] = _Worker(p)

        # 1. every load process connects and says ready (or fails: then nothing is measured)
        def on_ready(w, ev):
            if ev.get("event") != "ready":
                raise SockbenchError(ev.get("message") or f"load process {w.params.index} failed")

        late = _wait_events(workers, time.monotonic() + READY_TIMEOUT_S, on_ready, server_gone)
        if late:
            raise SockbenchError(f"{len(late)} load process(es) did not connect within {READY_TIMEOUT_S:.0f} s")

        # 2. one window for every process
        start_ns = time.monotonic_ns() + int(START_MARGIN_S * 1e9)
        warm_end_ns = start_ns + int(spec.warmup_s * 1e9)
        end_ns = warm_end_ns + int(spec.duration_s * 1e9)
        if on_window is not None:
            on_window(start_ns, end_ns)
        for w in workers.values():
            w.send({"start_ns": start_ns, "warm_end_ns": warm_end_ns, "end_ns": end_ns})

        # 3. results, within the hard timeout; this process sleeps through the window (waking up
        # inside it to read the server's CPU took a CPU from one side: load process 0 reads it instead)
        def on_result(w, ev):
            if ev.get("event") == "result":
                results[w.params.index] = ev["result"]
            else:
                problems.append(ev.get("message") or f"load process {w.params.index} failed")

        deadline = end_ns / 1e9 + max(HARD_TIMEOUT_GRACE_S, spec.timeout_s + 2)
        for i in _wait_events(workers, deadline, on_result):
            workers[i].stop()
            problems.append(f"load process {i} hung; killed at the hard timeout")
        if server is not None:
            samples = (results.get(0) or {}).get("server_cpu") or [None, None]
            srv["cpu0"], srv["cpu1"] = (_server_sample(x) for x in samples)
            srv["rss_peak_bytes"] = _read_rss_peak(server)  # a high-water mark: read after the window
        if server is not None and not server.alive():
            srv["exit_status"] = server.proc.returncode
            problems.insert(0, f"the server exited (status {server.proc.returncode}) during the run")
    finally:
        for w in workers.values():
            w.stop()
    return _build_result(spec, server, host, port, started_at, results, problems, srv)


def _read_rss_peak(server):
    from sockbench.procfs import read_rss_bytes

    try:
        return read_rss_bytes(server.pid, "VmHWM")
    except (OSError, SockbenchError, ValueError):
        return None


# --- the result ------------------------------------------------------------------------------


def _sum_lists(lists):
    lists = [l for l in lists if l]
    if not lists:
        return []
    n = max(len(l) for l in lists)
    return [sum(l[i] for l in lists if i < len(l)) for i in range(n)]


def _build_result(spec, server, host, port, started_at, results, problems, srv):
    from sockbench.bench.load import hdr

    rs = [results[i] for i in sorted(results)]
    dur = spec.duration_s
    msgs = sum(r["msgs"] for r in rs)
    errors = {k: sum(r["errors"][k] for r in rs) for k in ERROR_KINDS}
    h1 = hdr.merge_encoded(r["hdr1"] for r in rs)
    h2 = hdr.merge_encoded(r["hdr2"] for r in rs)
    mean1 = (sum(r["h1_sum_ns"] for r in rs) / h1.get_total_count()) if h1.get_total_count() else None
    mean2 = (sum(r["h2_sum_ns"] for r in rs) / h2.get_total_count()) if h2.get_total_count() else None

    # payload bytes, whatever the protocol; wire bytes add the framing and headers
    throughput = {"msgs_per_s": msgs / dur, "bytes_per_s": sum(r["rx_bytes"] for r in rs) / dur,
                  "wire_bytes_per_s": sum(r["rx_wire_bytes"] for r in rs) / dur}
    if spec.mode == "open":
        achieved = sum(r["sent_window"] for r in rs) / dur
        throughput.update(
            target_rate=spec.rate,
            achieved_rate=achieved,
            pacing_error=(achieved - spec.rate) / spec.rate,
            behind=achieved < spec.rate * (1 - BEHIND_FRACTION),
        )
    if spec.mode == "connect":
        throughput["conns_per_s"] = sum(r["cycles"] for r in rs) / dur

    # the client's own CPU, over the window
    user = sum(r["user_s"] for r in rs)
    sys_ = sum(r["sys_s"] for r in rs)
    window = max((r["cpu_window_s"] for r in rs), default=0.0)
    ncpu = len({c for r in rs for c in r["cpus"]}) or 1
    util = (user + sys_) / (window * ncpu) if window > 0 else None
    polling = any(r.get("polling") for r in rs)
    busy = None
    if polling and window > 0:
        # a polling process is always on its CPU: its busy share is the time outside idle passes
        busy = min(1.0, sum(max(0.0, r["cpu_window_s"] - (r.get("idle_s") or 0.0)) for r in rs) / (window * ncpu))
    queued = sum(r["queued"] for r in rs)
    writes = sum(r["writes"] for r in rs)
    client = {
        "cpu_util": util,
        "polling": polling,
        "busy_util": busy,
        "user_s": user,
        "sys_s": sys_,
        "cpus": sorted({c for r in rs for c in r["cpus"]}),
        "us_per_msg": {"user": user / msgs * 1e6, "sys": sys_ / msgs * 1e6} if msgs else {"user": None, "sys": None},
        "writes": writes,
        "reads": sum(r["reads"] for r in rs),
        "msgs_queued": queued,
        "msgs_per_write": queued / writes if writes else None,
    }
    load = busy if polling else util
    client_bound = bool(load is not None and load >= CLIENT_BOUND_UTIL)

    # the server's CPU, over the same window
    server_proc = {"pid": srv.get("pid"), "user_s": None, "sys_s": None, "rss_peak_bytes": srv.get("rss_peak_bytes"),
                   "us_per_msg": {"user": None, "sys": None}}
    c0, c1 = srv.get("cpu0"), srv.get("cpu1")
    if c0 and c1:
        user_s, sys_s, source = server_cpu(c0, c1)
        server_proc["user_s"] = round(user_s, 6)
        server_proc["sys_s"] = round(sys_s, 6)
        server_proc["cpu_source"] = source
        if msgs:
            server_proc["us_per_msg"] = {
                "user": server_proc["user_s"] / msgs * 1e6,
                "sys": server_proc["sys_s"] / msgs * 1e6,
            }
    if server is not None:
        server_proc["cpus"] = list(spec.server_cpus)
        server_proc["cpu_util"] = (
            (server_proc["user_s"] + server_proc["sys_s"]) / (dur * len(spec.server_cpus))
            if server_proc["user_s"] is not None else None
        )

    # which side limited the run: a saturated CPU (None: neither was, e.g. latency-bound)
    server_bound = bool(server_proc.get("cpu_util") is not None and server_proc["cpu_util"] >= SERVER_BOUND_UTIL)
    limited_by = {(True, True): "both", (True, False): "client", (False, True): "server"}.get((client_bound, server_bound))

    # validity
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
    early = [r for r in rs if r["ended_early"]]
    if early and not any("connection" in x for x in reasons):
        reasons.append("every connection of a load process was closed before the end")
    ts_msgs = _sum_lists([r["ts_msgs"] for r in rs])
    warm_n = math.ceil(spec.warmup_s / spec.interval_s - 1e-9)
    idle_s = _longest_idle(ts_msgs[warm_n:], spec.interval_s) if len(rs) == spec.procs else None
    if len(rs) == spec.procs and not msgs and not reasons:
        reasons.append("no message completed in the measured window")
    elif idle_s is not None and spec.mode != "open" and idle_s >= STALL_S and not reasons:
        # closed/connect loops always have messages outstanding: a long silence is a stall
        # (a server or a machine that stopped), not a measurement
        reasons.append(f"stalled: no message completed for {idle_s:.1f} s in the measured window")
    valid = not reasons

    timeseries = {
        "interval_s": spec.interval_s,
        "msgs": ts_msgs,
        "warmup_intervals": warm_n,
        "longest_idle_s": idle_s,
    }
    if spec.mode == "open":
        timeseries["sent"] = _sum_lists([r["ts_sent"] for r in rs])

    result = {
        "schema": SCHEMA,
        "server": spec.server if spec.server is not None else f"{host}:{port}",
        "target": {"host": host, "port": port},
        "workload": {
            "mode": spec.mode,
            "protocol": spec.protocol,
            "conns": spec.conns,
            "size": spec.size,
            "depth": spec.depth,
            "rate": spec.rate,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "procs": spec.procs,
            "interval_s": spec.interval_s,
            "timeout_s": spec.timeout_s,
            "server_cpus": list(spec.server_cpus),
            "client_cpus": list(spec.client_cpus),
        },
        "throughput": throughput,
        "latency_us": hdr.summary_us(h1, mean1),
    }
    if spec.mode == "open":
        result["service_us"] = hdr.summary_us(h2, mean2)
    if spec.mode == "connect":
        result["cycle_us"] = hdr.summary_us(h2, mean2)
    result.update(
        errors={"total": sum(errors.values()), "by_kind": errors},
        valid=valid,
        invalid_reason="; ".join(reasons) if reasons else None,
        client_bound=client_bound,
        limited_by=limited_by,
        server_proc=server_proc,
        client=client,
        timeseries=timeseries,
        hdr=_enc(h1),
        hdr_unit="ns",
        hdr_service=_enc(h2) if spec.mode == "open" else None,
        machine=machine_info(),
        started_at=started_at,
    )
    return result


def _longest_idle(msgs, interval_s):
    """The longest run of intervals with no completed message, in seconds."""
    longest = run = 0
    for m in msgs:
        run = run + 1 if not m else 0
        longest = max(longest, run)
    return round(longest * interval_s, 6)


def _enc(h):
    if not h.get_total_count():
        return None
    e = h.encode()
    return e.decode() if isinstance(e, bytes) else e
