"""The result schema: the one owner of sockbench's result JSON, as pyperf's ``_bench.py`` owns its own.

Why it is built this way
------------------------
One load run produces one result, and that result travels: from the load
harness to ``raw/*.json``, to the pytest-benchmark ``extra_info``, to the
report, the plots and ``sockbench compare``, and to outside scripts.  Every one
of those reads and writes it through the dataclasses here, so a key is spelled
in this module only, a new field is added in one place, and a file that is not
a result is refused in one place, with one line (``SchemaError``).

* ``to_json()`` gives the plain dict that is written (``None`` is ``null``);
  keys that exist only in some modes (``service_us`` in open loop,
  ``cycle_us`` and ``throughput.conns_per_s`` in connect mode, the open-loop
  pacing figures, ``timeseries.sent``, the server's ``cpus`` when the harness
  started it) are left out when they do not apply, as the harness always has.
* ``from_json(d)`` checks the shape and builds the objects.  Tolerance for
  older or hand-made files lives in the ``from_json`` methods and nowhere
  else: a workload without ``protocol`` was raw, one without
  ``transport`` was tcp (so was a cell's), one without ``workers`` had
  one server process (so had a cell); a workload without
  ``depth`` had one message in flight; ``hdr_unit`` defaults to
  nanoseconds; machine keys written under other names (``cpu``,
  ``cpu_count``, ``node`` ...: ``_MACHINE_ALIASES``) are read into their one
  spelling; parts a file lacks read as empty (every figure ``None``); a
  ``cell`` without a server is no suite context; an explicit ``null`` for a
  key that exists in some modes only reads as absent.  Writing such a result
  back gives the normalised form: the one spelling, every part present.
* ``Cell`` is the identity of one point of the benchmark matrix.  The suite
  plans cells and the report groups results by cell, and the report must
  not import the suite, so it lives here, beside the ``cell`` context the
  suite attaches to each result (``CellContext``).
* ``CellSummary`` and ``RoundSummary`` are the summaries the suite puts
  into pytest-benchmark's ``extra_info``: part of the published output, so
  their keys are owned here as well.

Versions
--------
1
    The first published format: server, target, workload (mode, protocol,
    conns, size, depth, rate, duration_s, warmup_s, procs, interval_s,
    timeout_s, CPUs), throughput, latency_us / service_us / cycle_us,
    errors by kind, validity and the client-bound and limited-by verdicts,
    server and client CPU (with µs per message), the time series, the
    encoded HDR histograms, the machine, the start time and, from the
    suite, the cell.  Files written before the protocol dimension carry no
    ``workload.protocol``; they read as raw.
2
    Adds ``interference`` (the foreign and steal share of the server's and
    the client's pinned CPUs over the window, the 1-minute load average,
    ``disturbed``), ``fairness`` (messages completed per connection in the
    window: min, median, max, Jain's index, the starved count) and the
    machine's tuning as ``pyperf system show`` reports it (``isolcpus``,
    ``nohz_full``, ``governor``, ``smt``, ``aslr``, ``loadavg``), and for a
    run whose server exited inside the window ``throughput.measured_s`` (the
    seconds its rates are over: up to the last answer) and
    ``server_proc.exit_status``.  Version-1 files read with these ``None``
    (not measured) and are written back as version 2.  Within version 2,
    ``latency_us`` (and ``service_us``) gained the far tail ``p9999`` and
    ``p99999``, and ``machine`` the ``versions`` of what built and runs the
    code; a file without them reads them as ``None``.  A load from several
    hosts (``--cluster``) adds ``hosts``, one ``HostPart`` per load host
    (its throughput, latency, CPU, ``client_bound``, errors, the Dask
    worker's own CPU, its clock offset); the top-level figures stay the
    merged totals, so a reader that knows no ``hosts`` reads it as before.
    ``client`` gained ``stalls``, ``stall_s`` and ``longest_stall_s`` (a
    polling open loop's client stalls, written for such a client only); a
    file without them reads ``None``.  ``client.engine`` names the load loop
    that measured the run (``epoll`` or ``uring``); a file without it was
    measured by the epoll loop, the only one there was.

A udp result adds ``datagrams`` (sent, received, lost, duplicates,
out_of_order, late, corrupt, loss_share; ``Datagrams``); a stream result has
no such key, so every earlier file reads as it did.
"""

import statistics
from dataclasses import dataclass, field, replace

from sockbench.endpoints import TRANSPORTS
from sockbench.errors import SockbenchError
from sockbench.units import format_size

__all__ = [
    "SCHEMA_VERSION",
    "ERROR_KINDS",
    "SchemaError",
    "Cell",
    "Workload",
    "Target",
    "Throughput",
    "Latency",
    "MergedLatency",
    "Errors",
    "CpuPerMsg",
    "ServerProc",
    "Client",
    "Timeseries",
    "Machine",
    "Interference",
    "Fairness",
    "Datagrams",
    "jain_index",
    "merge_stalls",
    "WorkerCpu",
    "ClockOffset",
    "HostPart",
    "CellContext",
    "LoadResult",
    "RoundSummary",
    "CellSummary",
]

SCHEMA_VERSION = 2
#: the versions ``from_json`` reads (older ones read their missing parts as ``None``)
READABLE_VERSIONS = (1, 2)

#: the error counters of a result's ``errors.by_kind`` (``protocol``: a frame/json answer whose
#: framing or header is wrong; ``mismatch``: content bytes that are not the ones sent)
ERROR_KINDS = ("connect", "reset", "timeout", "mismatch", "protocol")

#: the keys a file must carry to be read as a result at all
REQUIRED_KEYS = ("server", "workload", "throughput", "latency_us", "errors", "valid")

#: machine keys that older or foreign files spell differently -> the one spelling
_MACHINE_ALIASES = {
    "cpu": "cpu_model",
    "processor": "cpu_model",
    "cpu_count": "cores",
    "cpus": "cores",
    "python_version": "python",
    "node": "hostname",
    "commit": "git_commit",
}


class SchemaError(SockbenchError):
    """A file or dict that is not a sockbench result of a readable schema (one line, no traceback)."""


def _obj(d, key, source, default=None):
    """``d[key]`` when it is a JSON object, ``default`` when absent or null; anything else is a SchemaError."""
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, dict):
        raise SchemaError(f"{source} is corrupt: {key} is not an object")
    return v


def _list(v):
    return list(v) if v is not None else None


def _put(out, key, value):
    """Set ``out[key]`` only when ``value`` is not None: for the keys that exist in some modes only."""
    if value is not None:
        out[key] = value


def _transport(value):
    """A result's transport; results written before the transport dimension carry none and were tcp."""
    if value in (None, ""):
        return "tcp"
    if value not in TRANSPORTS:
        raise ValueError(f"bad transport {value!r}")
    return value


def _protocol(value):
    """A result's protocol; results written before the protocol dimension carry none and were raw."""
    if value in (None, ""):
        return "raw"
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"bad protocol {value!r}")
    return value


# --- the identity of a cell ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One (server, workload) point of the matrix; every round of it is one load run."""

    server: str
    mode: str  # "closed" or "open"
    size: int
    conns: int
    depth: int = 1
    #: open loop only: the offered rate as a percentage of the server's peak
    load_pct: int = 0
    #: the wire protocol (``sockbench serve --protocol``): raw, frame or json
    protocol: str = "raw"
    #: the transport (``sockbench serve --transport``): tcp, tcp6, unix or udp
    transport: str = "tcp"
    #: server processes (``sockbench serve --workers``); a 1-worker cell's id has no suffix
    workers: int = 1

    def _parts(self, wording):
        """The optional parts this cell shows, in one of ``_CELL_PARTS``' wordings (``id``, ``describe``, ``title``)."""
        return [getattr(part, wording).format(c=self) for part in _CELL_PARTS if part.shown(self)]

    @property
    def workload_id(self):
        """The workload without the server: the key that rows of one report table share."""
        return f"{self.mode}-{format_size(self.size)}-c{self.conns}" + "".join(self._parts("id"))

    @property
    def base_workload_id(self):
        """The workload without its protocol: the key that groups a protocol section's cells."""
        return replace(self, protocol="raw").workload_id

    @property
    def id(self):
        return f"{self.server}:{self.workload_id}"

    def describe(self):
        """The one human description of a cell: ``uvloop · closed · 64B · 10 conns · depth 16 · json``."""
        head = f"{self.server} · {self.mode} · {format_size(self.size)} · {self.conns} conn{'' if self.conns == 1 else 's'}"
        return " · ".join([head] + self._parts("describe"))

    def title(self, unit="messages"):
        """``describe()`` in words, without the server (a report's tables and warnings name it apart):
        ``closed loop · 64B messages · 10 connections · depth 16 · json protocol``; ``unit`` says what
        the size counts (a protocol section's title says ``payload``)."""
        head = (f"{self.mode} loop · {format_size(self.size)} {unit} · "
                f"{self.conns} connection{'' if self.conns == 1 else 's'}")
        return " · ".join([head] + self._parts("title"))


@dataclass(frozen=True)
class _CellPart:
    """One optional part of a cell: when it shows, and its wording (``str.format`` of ``c``, the cell) in each place."""

    shown: object  # cell -> bool
    id: str
    describe: str
    title: str


#: a cell's optional parts, in the order its id, ``describe()`` and ``title()`` list them
_CELL_PARTS = (
    _CellPart(lambda c: c.depth != 1, "-d{c.depth}", "depth {c.depth}", "depth {c.depth}"),
    _CellPart(lambda c: c.mode == "open", "-{c.load_pct}pct", "{c.load_pct}% of peak", "{c.load_pct}% of each server's peak"),
    _CellPart(lambda c: c.protocol != "raw", "-{c.protocol}", "{c.protocol}", "{c.protocol} protocol"),
    _CellPart(lambda c: c.transport != "tcp", "-{c.transport}", "{c.transport}", "over {c.transport}"),
    _CellPart(lambda c: c.workers != 1, "-w{c.workers}", "{c.workers} workers", "{c.workers} server processes"),
)


# --- the parts of a result ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What was asked for: ``size`` is the payload size in every protocol; ``rate`` is open loop's total msgs/s."""

    mode: str
    protocol: str = "raw"
    conns: int = 1
    #: tcp, tcp6, unix or udp (sockbench/endpoints.py); results without one were tcp
    transport: str = "tcp"
    size: int = 0
    depth: int = 1
    rate: float | None = None
    duration_s: float | None = None
    warmup_s: float | None = None
    procs: int | None = None
    interval_s: float | None = None
    timeout_s: float | None = None
    server_cpus: list | None = None
    client_cpus: list | None = None
    #: server processes (``--workers``); results without it had one
    workers: int = 1

    def to_json(self):
        return {
            "mode": self.mode,
            "protocol": self.protocol,
            "transport": self.transport,
            "conns": self.conns,
            "size": self.size,
            "depth": self.depth,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "procs": self.procs,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "server_cpus": _list(self.server_cpus),
            "client_cpus": _list(self.client_cpus),
            "workers": self.workers,
        }

    @classmethod
    def from_json(cls, d, source="the result"):
        try:
            return cls(
                mode=str(d["mode"]),
                protocol=_protocol(d.get("protocol")),
                transport=_transport(d.get("transport")),
                conns=int(d["conns"]),
                size=int(d["size"]),
                depth=int(d.get("depth") or 1),
                rate=d.get("rate"),
                duration_s=d.get("duration_s"),
                warmup_s=d.get("warmup_s"),
                procs=d.get("procs"),
                interval_s=d.get("interval_s"),
                timeout_s=d.get("timeout_s"),
                server_cpus=_list(d.get("server_cpus")),
                client_cpus=_list(d.get("client_cpus")),
                workers=int(d.get("workers") or 1),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{source} has a malformed workload ({e!r}); it is not a sockbench result") from None


@dataclass(frozen=True)
class Target:
    """The address the load connected to (the harness-started server's, or ``--target``'s); ``path`` for unix."""

    host: str | None
    port: int | None
    path: str | None = None

    def to_json(self):
        if self.path is not None:
            return {"path": self.path}
        return {"host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(host=d.get("host"), port=d.get("port"), path=d.get("path"))


@dataclass(frozen=True)
class Throughput:
    """Per second of the measured window; bytes are payload bytes (``wire_bytes_per_s`` adds the framing).

    ``target_rate``, ``achieved_rate``, ``pacing_error`` and ``behind`` exist in open loop only,
    ``conns_per_s`` in connect mode only; ``measured_s`` only when the rates are over less than the
    workload's ``duration_s`` (the server exited inside the window); ``None`` leaves them out of the JSON.
    """

    msgs_per_s: float
    bytes_per_s: float | None = None
    wire_bytes_per_s: float | None = None
    target_rate: float | None = None
    achieved_rate: float | None = None
    pacing_error: float | None = None
    behind: bool | None = None
    conns_per_s: float | None = None
    measured_s: float | None = None

    def to_json(self):
        out = {"msgs_per_s": self.msgs_per_s, "bytes_per_s": self.bytes_per_s, "wire_bytes_per_s": self.wire_bytes_per_s}
        _put(out, "target_rate", self.target_rate)
        _put(out, "achieved_rate", self.achieved_rate)
        _put(out, "pacing_error", self.pacing_error)
        _put(out, "behind", self.behind)
        _put(out, "conns_per_s", self.conns_per_s)
        _put(out, "measured_s", self.measured_s)
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(
            msgs_per_s=d.get("msgs_per_s"),
            bytes_per_s=d.get("bytes_per_s"),
            wire_bytes_per_s=d.get("wire_bytes_per_s"),
            target_rate=d.get("target_rate"),
            achieved_rate=d.get("achieved_rate"),
            pacing_error=d.get("pacing_error"),
            behind=d.get("behind"),
            conns_per_s=d.get("conns_per_s"),
            measured_s=d.get("measured_s"),
        )

    @property
    def achieved(self):
        """The rate actually reached: ``achieved_rate`` in open loop, else ``msgs_per_s``."""
        return self.achieved_rate if self.achieved_rate is not None else self.msgs_per_s


@dataclass(frozen=True)
class Latency:
    """A latency summary in microseconds: percentiles of the HDR histogram, its max, the exact mean.

    Every figure is ``None`` when nothing was recorded (``count`` 0).
    """

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None
    mean: float | None = None
    #: the far tail of the spectrum (in ``to_json`` only: the summaries keep the figures above)
    p9999: float | None = None
    p99999: float | None = None

    #: (field, percentile) of the summary's percentiles, in order
    PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99), ("p99999", 99.999))

    def figures(self):
        """``{p50, p90, p99, p999, max, mean}``: the summary without its count."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999, "max": self.max, "mean": self.mean}

    def to_json(self):
        out = {"count": self.count, **self.figures()}
        # the far tail: absent from files written before it was computed, so those round-trip unchanged
        for name in ("p9999", "p99999"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(count=d.get("count"), p50=d.get("p50"), p90=d.get("p90"), p99=d.get("p99"),
                   p999=d.get("p999"), max=d.get("max"), mean=d.get("mean"), p9999=d.get("p9999"),
                   p99999=d.get("p99999"))


@dataclass(frozen=True)
class MergedLatency(Latency):
    """A cell's latency over every round: percentiles of the exact HDR merge (``source`` "hdr"),
    or, without histograms, the median of the rounds' figures (``source`` "median of rounds")."""

    source: str = "hdr"

    def to_json(self):
        return {**self.figures(), "count": self.count, "source": self.source}


@dataclass(frozen=True)
class Errors:
    """The error counts of a run: ``total`` and ``by_kind`` (``ERROR_KINDS`` -> count)."""

    total: int = 0
    by_kind: dict = field(default_factory=dict)

    def to_json(self):
        return {"total": self.total, "by_kind": dict(self.by_kind)}

    @classmethod
    def from_json(cls, d, source="the result"):
        by_kind = d.get("by_kind") or {}
        if not isinstance(by_kind, dict):
            raise SchemaError(f"{source} is corrupt: errors.by_kind is not an object")
        return cls(total=d.get("total", 0), by_kind=dict(by_kind))

    @classmethod
    def of(cls, counts):
        """From ``{kind: count}`` over ``ERROR_KINDS``: the total is their sum."""
        by_kind = {k: counts[k] for k in ERROR_KINDS}
        return cls(total=sum(by_kind.values()), by_kind=by_kind)

    def count(self, kind):
        return self.by_kind.get(kind, 0)


@dataclass(frozen=True)
class CpuPerMsg:
    """CPU time per message in microseconds, split as the kernel splits it (netperf's service demand)."""

    user: float | None = None
    sys: float | None = None

    def to_json(self):
        return {"user": self.user, "sys": self.sys}

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(user=d.get("user"), sys=d.get("sys"))

    @classmethod
    def of(cls, user_s, sys_s, msgs):
        """``user_s`` and ``sys_s`` spread over ``msgs`` messages (all ``None`` without messages)."""
        if not msgs:
            return cls()
        return cls(user=user_s / msgs * 1e6, sys=sys_s / msgs * 1e6)

    @property
    def total(self):
        """user + sys, or None when either is unknown."""
        return self.user + self.sys if self.user is not None and self.sys is not None else None


@dataclass(frozen=True)
class ServerProc:
    """The server's CPU and memory over the measured window.

    ``cpu_source`` ("schedstat" or "ticks") exists once the CPU was read;
    ``cpus`` and ``cpu_util`` exist when the harness started (and pinned) the server;
    ``exit_status`` when that server exited during the run.
    """

    pid: int | None = None
    user_s: float | None = None
    sys_s: float | None = None
    rss_peak_bytes: int | None = None
    us_per_msg: CpuPerMsg = field(default_factory=CpuPerMsg)
    cpu_source: str | None = None
    cpus: list | None = None
    cpu_util: float | None = None
    exit_status: int | None = None

    def to_json(self):
        out = {"pid": self.pid, "user_s": self.user_s, "sys_s": self.sys_s, "rss_peak_bytes": self.rss_peak_bytes,
               "us_per_msg": self.us_per_msg.to_json()}
        _put(out, "cpu_source", self.cpu_source)
        if self.cpus is not None or self.cpu_util is not None:
            out["cpus"] = _list(self.cpus)
            out["cpu_util"] = self.cpu_util
        _put(out, "exit_status", self.exit_status)
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(
            pid=d.get("pid"),
            user_s=d.get("user_s"),
            sys_s=d.get("sys_s"),
            rss_peak_bytes=d.get("rss_peak_bytes"),
            us_per_msg=CpuPerMsg.from_json(_obj(d, "us_per_msg", source, {}), source),
            cpu_source=d.get("cpu_source"),
            cpus=_list(d.get("cpus")),
            cpu_util=d.get("cpu_util"),
            exit_status=d.get("exit_status"),
        )


@dataclass(frozen=True)
class Client:
    """The load processes' own CPU over the window, and how they wrote.

    ``polling``: open loop with a CPU per load process, which is then always on
    its CPU; ``busy_util`` (its share outside idle passes) is its load then.
    ``stalls``, ``stall_s``, ``longest_stall_s`` (polling only, else ``None``):
    the gaps of ``CLIENT_STALL_S`` or more between two passes of a load loop in
    the window, its CPU taken from it: how many, their total and the longest,
    over every load process (summed, the longest the longest).
    """

    cpu_util: float | None = None
    polling: bool | None = None
    busy_util: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    cpus: list | None = None
    us_per_msg: CpuPerMsg = field(default_factory=CpuPerMsg)
    writes: int | None = None
    reads: int | None = None
    msgs_queued: int | None = None
    msgs_per_write: float | None = None
    stalls: int | None = None
    stall_s: float | None = None
    longest_stall_s: float | None = None
    #: the load loop that measured the run: ``epoll`` or ``uring`` (``bench.load.spec.ENGINES``); None: a file
    #: from before the choice existed, whose loop was epoll's
    engine: str | None = None

    @property
    def load(self):
        """What decides client-bound: the busy share of a polling client, else its CPU utilisation."""
        return self.busy_util if self.polling else self.cpu_util

    def to_json(self):
        out = {
            "cpu_util": self.cpu_util,
            "polling": self.polling,
            "busy_util": self.busy_util,
            "user_s": self.user_s,
            "sys_s": self.sys_s,
            "cpus": _list(self.cpus),
            "us_per_msg": self.us_per_msg.to_json(),
            "writes": self.writes,
            "reads": self.reads,
            "msgs_queued": self.msgs_queued,
            "msgs_per_write": self.msgs_per_write,
        }
        # a polling client's only: a result of any other client (and every earlier file) has no such keys
        _put(out, "stalls", self.stalls)
        _put(out, "stall_s", self.stall_s)
        _put(out, "longest_stall_s", self.longest_stall_s)
        _put(out, "engine", self.engine)
        return out

    @property
    def engine_name(self):
        """The load loop that measured the run, ``epoll`` for a file from before the choice existed."""
        return self.engine or "epoll"

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(
            cpu_util=d.get("cpu_util"),
            polling=d.get("polling"),
            busy_util=d.get("busy_util"),
            user_s=d.get("user_s"),
            sys_s=d.get("sys_s"),
            cpus=_list(d.get("cpus")),
            us_per_msg=CpuPerMsg.from_json(_obj(d, "us_per_msg", source, {}), source),
            writes=d.get("writes"),
            reads=d.get("reads"),
            msgs_queued=d.get("msgs_queued"),
            msgs_per_write=d.get("msgs_per_write"),
            stalls=d.get("stalls"),
            stall_s=d.get("stall_s"),
            longest_stall_s=d.get("longest_stall_s"),
            engine=d.get("engine"),
        )


def merge_stalls(parts):
    """The client stalls of ``parts`` as one client's: ``(stalls, stall_s, longest_stall_s)``.

    ``parts`` are anything with those three attributes: a run's load
    processes (``ProcResult``), a cluster's, or the rounds' ``Client``s of a
    cell.  Counts and times are summed, the longest is the longest; the parts
    that did not measure them (``None``: they did not poll) are left out, and
    ``(None, None, None)`` when none did.
    """
    measured = [p for p in parts if p.stalls is not None]
    if not measured:
        return None, None, None
    return (sum(p.stalls for p in measured), sum(p.stall_s or 0.0 for p in measured),
            max(p.longest_stall_s or 0.0 for p in measured))


@dataclass(frozen=True)
class Timeseries:
    """Completed messages per interval, warmup included (its first ``warmup_intervals``); ``sent`` in open loop."""

    interval_s: float | None = None
    msgs: list | None = None
    warmup_intervals: int | None = None
    longest_idle_s: float | None = None
    sent: list | None = None

    def to_json(self):
        out = {"interval_s": self.interval_s, "msgs": _list(self.msgs), "warmup_intervals": self.warmup_intervals,
               "longest_idle_s": self.longest_idle_s}
        _put(out, "sent", _list(self.sent))
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(
            interval_s=d.get("interval_s"),
            msgs=_list(d.get("msgs")),
            warmup_intervals=d.get("warmup_intervals"),
            longest_idle_s=d.get("longest_idle_s"),
            sent=_list(d.get("sent")),
        )


@dataclass(frozen=True)
class Machine:
    """The machine and the code: the keys of ``sockbench.machine.machine_info()``."""

    cpu_model: str | None = None
    cores: int | None = None
    usable_cpus: list | None = None
    kernel: str | None = None
    os: str | None = None
    python: str | None = None
    python_impl: str | None = None
    sockbench_version: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    hostname: str | None = None
    #: the CPUs the kernel keeps the scheduler off (``isolcpus=``), ``[]`` when none
    isolcpus: list | None = None
    #: the CPUs without a periodic tick (``nohz_full=``), ``[]`` when none
    nohz_full: list | None = None
    #: the cpufreq governor: one name when every CPU has the same, else ``{"cpu": name}``
    governor: str | dict | None = None
    #: simultaneous multithreading active (``/sys/devices/system/cpu/smt/active``)
    smt: bool | None = None
    #: address-space randomisation in pyperf's words ("Full randomization", ...)
    aslr: str | None = None
    #: the 1, 5 and 15 minute load averages when the metadata was taken
    loadavg: list | None = None
    #: versions of what runs and built the code: uvloop, hdrhistogram, Cython and the C compiler of the extensions
    versions: dict | None = None

    def to_json(self):
        return {
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "usable_cpus": _list(self.usable_cpus),
            "kernel": self.kernel,
            "os": self.os,
            "python": self.python,
            "python_impl": self.python_impl,
            "sockbench_version": self.sockbench_version,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "hostname": self.hostname,
            "isolcpus": _list(self.isolcpus),
            "nohz_full": _list(self.nohz_full),
            "governor": dict(self.governor) if isinstance(self.governor, dict) else self.governor,
            "smt": self.smt,
            "aslr": self.aslr,
            "loadavg": _list(self.loadavg),
            # absent from files written before versions were recorded, so those round-trip unchanged
            **({"versions": dict(self.versions)} if isinstance(self.versions, dict) else {}),
        }

    @classmethod
    def from_json(cls, d, source="the result"):
        """Read a machine dict.  Its own keys are taken as they are; a key spelled another way
        (``cpu``, ``cpu_count``, ``node`` ...) fills its one spelling when that is missing or empty;
        keys it does not know are dropped."""
        names = cls.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in names}
        for alias, name in _MACHINE_ALIASES.items():
            if kw.get(name) in (None, "") and d.get(alias) not in (None, ""):
                kw[name] = d[alias]
        for key in ("usable_cpus", "isolcpus", "nohz_full", "loadavg"):
            if kw.get(key) is not None:
                kw[key] = _list(kw[key])
        return cls(**kw)

    def line(self):
        """One short line that identifies the machine: ``host, CPU, N CPUs, OS kernel, Python X``."""
        parts = []
        if self.cpu_model:
            parts.append(str(self.cpu_model))
        if self.cores:
            parts.append(f"{self.cores} CPUs")
        osname = " ".join(str(x) for x in (self.os, self.kernel) if x)
        if osname:
            parts.append(osname)
        py = self.python
        if py:
            parts.append(("Python " + str(py)) if not str(py).lower().startswith(("python", "cpython")) else str(py))
        if self.hostname:
            parts.insert(0, str(self.hostname))
        return ", ".join(parts) if parts else "machine unknown"


@dataclass(frozen=True)
class Interference:
    """Work on the run's pinned CPUs that was neither the server's nor the load processes' (the harness's
    ``bench/load/interference.py`` says how it is measured).

    ``*_foreign`` and ``*_steal``: that side's foreign (or hypervisor-stolen)
    CPU time over the window as a share of its pinned CPUs, 0..1, the mean
    over the side's CPUs; ``None`` for a side whose CPUs are not known (the
    server of ``--target``).  ``disturbed``: on some side, foreign or steal
    time reached ``DISTURBED_SHARE`` of one pinned CPU.
    """

    server_foreign: float | None = None
    client_foreign: float | None = None
    server_steal: float | None = None
    client_steal: float | None = None
    loadavg_1m: float | None = None
    disturbed: bool = False

    def to_json(self):
        return {
            "server_foreign": self.server_foreign,
            "client_foreign": self.client_foreign,
            "server_steal": self.server_steal,
            "client_steal": self.client_steal,
            "loadavg_1m": self.loadavg_1m,
            "disturbed": self.disturbed,
        }

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(
            server_foreign=d.get("server_foreign"),
            client_foreign=d.get("client_foreign"),
            server_steal=d.get("server_steal"),
            client_steal=d.get("client_steal"),
            loadavg_1m=d.get("loadavg_1m"),
            disturbed=bool(d.get("disturbed", False)),
        )


def jain_index(counts):
    """Jain's fairness index of ``counts``: (sum x)^2 / (n * sum x^2), 1 when all are equal, 1/n when one
    has everything; ``None`` for no counts, 0 when all are zero (nobody was served)."""
    counts = list(counts)
    if not counts:
        return None
    squares = sum(x * x for x in counts)
    if squares == 0:
        return 0.0
    return sum(counts) ** 2 / (len(counts) * squares)


@dataclass(frozen=True)
class Fairness:
    """How the window's completed messages were spread over the connections.

    ``min``, ``median`` and ``max`` are messages completed per connection in
    the measured window, ``jain`` is Jain's fairness index of those counts and
    ``starved`` the number of connections that completed no message although
    they were owed an answer (a run with any is invalid; an open-loop
    connection whose schedule gave it nothing to send in the window is not
    starved).
    """

    conns: int
    min: int
    median: float
    max: int
    jain: float | None
    starved: int

    @classmethod
    def of(cls, counts, starved=None):
        """From the per-connection counts of the window (every connection, idle ones as 0); ``starved``
        defaults to the connections that completed nothing (the load loop tells which of them were owed
        an answer, see ``sockbench.ext.loadgen``)."""
        counts = [int(x) for x in counts]
        if starved is None:
            starved = sum(1 for x in counts if x == 0)
        if not counts:
            return cls(conns=0, min=0, median=0.0, max=0, jain=None, starved=int(starved))
        return cls(conns=len(counts), min=min(counts), median=float(statistics.median(counts)), max=max(counts),
                   jain=jain_index(counts), starved=int(starved))

    def to_json(self):
        return {"conns": self.conns, "min": self.min, "median": self.median, "max": self.max, "jain": self.jain,
                "starved": self.starved}

    @classmethod
    def from_json(cls, d, source="the result"):
        try:
            return cls(conns=int(d["conns"]), min=int(d["min"]), median=float(d["median"]), max=int(d["max"]),
                       jain=d.get("jain"), starved=int(d["starved"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{source} has a malformed fairness ({e!r}); it is not a sockbench result") from None


@dataclass(frozen=True)
class Datagrams:
    """A UDP run's datagram accounting, as sockperf counts it (absent from a stream result).

    ``sent`` is the datagrams sent inside the measured window; each of them
    ended ``received`` (a correct echo within the timeout) or ``lost``, so
    ``received + lost == sent``.  ``duplicates`` (a second echo),
    ``out_of_order`` (a first echo below the highest one answered before it),
    ``late`` (an echo of a datagram already counted lost) and ``corrupt`` (an
    echo with a wrong byte, length or header: it answers nothing) are counted
    as they arrived.  ``loss_share`` is ``lost / sent`` (None when nothing was
    sent).  Loss leaves a run valid and is reported; a corrupt echo makes it
    invalid.
    """

    sent: int
    received: int
    lost: int
    duplicates: int = 0
    out_of_order: int = 0
    corrupt: int = 0
    late: int = 0

    @property
    def loss_share(self):
        return self.lost / self.sent if self.sent else None

    @classmethod
    def of(cls, counts):
        """From a load loop's ``datagrams`` dicts (one per load process), added up."""
        counts = list(counts)
        total = {k: sum(int(c.get(k, 0)) for c in counts) for k in
                 ("sent", "received", "lost", "duplicates", "out_of_order", "corrupt", "late")}
        return cls(**total)

    def to_json(self):
        return {"sent": self.sent, "received": self.received, "lost": self.lost, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order, "corrupt": self.corrupt, "late": self.late,
                "loss_share": self.loss_share}

    @classmethod
    def from_json(cls, d, source="the result"):
        try:
            return cls(sent=int(d["sent"]), received=int(d["received"]), lost=int(d["lost"]),
                       duplicates=int(d.get("duplicates") or 0), out_of_order=int(d.get("out_of_order") or 0),
                       corrupt=int(d.get("corrupt") or 0), late=int(d.get("late") or 0))
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{source} has malformed datagrams ({e!r}); it is not a sockbench result") from None


@dataclass(frozen=True)
class WorkerCpu:
    """The Dask worker's own CPU on a load host (``sockbench cluster-worker``) over the load's window.

    ``span_s`` is the time it was measured over (from just before the window to
    the last load process's answer); ``util`` the share of one CPU.
    """

    user_s: float | None = None
    sys_s: float | None = None
    span_s: float | None = None
    util: float | None = None

    def to_json(self):
        return {"user_s": self.user_s, "sys_s": self.sys_s, "span_s": self.span_s, "util": self.util}

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(user_s=d.get("user_s"), sys_s=d.get("sys_s"), span_s=d.get("span_s"), util=d.get("util"))


@dataclass(frozen=True)
class ClockOffset:
    """A load host's wall clock against the coordinator's, by sockbench's NTP-style exchange.

    ``offset_s`` is host minus coordinator, known within ``± delay_s / 2``;
    ``too_large``: off by more than ``CLOCK_OFFSET_SHARE`` of the window (a warning).
    """

    offset_s: float | None = None
    delay_s: float | None = None
    too_large: bool = False

    def to_json(self):
        return {"offset_s": self.offset_s, "delay_s": self.delay_s, "too_large": self.too_large}

    @classmethod
    def from_json(cls, d, source="the result"):
        return cls(offset_s=d.get("offset_s"), delay_s=d.get("delay_s"), too_large=bool(d.get("too_large", False)))


@dataclass(frozen=True)
class HostPart:
    """One load host's share of a load from several hosts (``--cluster``); the result's totals merge them.

    ``name`` is the Dask worker's name, ``address`` its address; the figures are
    that host's own, as a one-host result would give them.  ``start_late_s`` is
    how long after the shared start instant its last load process started (in
    the host's own clock); ``worker_cpu`` the Dask worker's own CPU meanwhile.
    A host that died or failed keeps its name and reason with empty figures.
    """

    name: str
    address: str | None = None
    conns: int | None = None
    procs: int | None = None
    valid: bool = False
    invalid_reason: str | None = None
    throughput: Throughput | None = None
    latency_us: Latency | None = None
    errors: Errors = field(default_factory=Errors)
    client: Client = field(default_factory=Client)
    client_bound: bool = False
    interference: Interference | None = None
    worker_cpu: WorkerCpu = field(default_factory=WorkerCpu)
    clock: ClockOffset = field(default_factory=ClockOffset)
    start_late_s: float | None = None
    machine: Machine | None = None

    def to_json(self):
        return {
            "name": self.name,
            "address": self.address,
            "conns": self.conns,
            "procs": self.procs,
            "valid": self.valid,
            "invalid_reason": self.invalid_reason,
            "throughput": self.throughput.to_json() if self.throughput is not None else None,
            "latency_us": self.latency_us.to_json() if self.latency_us is not None else None,
            "errors": self.errors.to_json(),
            "client": self.client.to_json(),
            "client_bound": self.client_bound,
            "interference": self.interference.to_json() if self.interference is not None else None,
            "worker_cpu": self.worker_cpu.to_json(),
            "clock": self.clock.to_json(),
            "start_late_s": self.start_late_s,
            "machine": self.machine.to_json() if self.machine is not None else None,
        }

    @classmethod
    def from_json(cls, d, source="the result"):
        if not isinstance(d, dict) or not d.get("name"):
            raise SchemaError(f"{source} has a malformed hosts entry; it is not a sockbench result")
        tp, lat = _obj(d, "throughput", source), _obj(d, "latency_us", source)
        interference, machine = _obj(d, "interference", source), _obj(d, "machine", source)
        return cls(
            name=str(d["name"]),
            address=d.get("address"),
            conns=d.get("conns"),
            procs=d.get("procs"),
            valid=bool(d.get("valid", False)),
            invalid_reason=d.get("invalid_reason"),
            throughput=Throughput.from_json(tp, source) if tp is not None else None,
            latency_us=Latency.from_json(lat, source) if lat is not None else None,
            errors=Errors.from_json(_obj(d, "errors", source, {}), source),
            client=Client.from_json(_obj(d, "client", source, {}), source),
            client_bound=bool(d.get("client_bound", False)),
            interference=Interference.from_json(interference, source) if interference is not None else None,
            worker_cpu=WorkerCpu.from_json(_obj(d, "worker_cpu", source, {}), source),
            clock=ClockOffset.from_json(_obj(d, "clock", source, {}), source),
            start_late_s=d.get("start_late_s"),
            machine=Machine.from_json(machine, source) if machine is not None else None,
        )


@dataclass(frozen=True)
class CellContext:
    """What the suite attaches to a result: the cell it is a round of, and where that round stands.

    ``index`` is the cell's place in the plan (the report's run order),
    ``peak_msgs_per_s`` the closed-loop peak an open-loop cell's rate was set from.
    """

    server: str
    mode: str
    size: int
    conns: int
    depth: int = 1
    load_pct: int = 0
    protocol: str = "raw"
    workload_id: str | None = None
    transport: str = "tcp"
    workers: int = 1
    round: int = 0
    rounds: int | None = None
    index: int | None = None
    peak_msgs_per_s: float | None = None

    @classmethod
    def of(cls, cell, round_no, rounds, index, peak=None):
        return cls(server=cell.server, mode=cell.mode, size=cell.size, conns=cell.conns, depth=cell.depth,
                   load_pct=cell.load_pct, protocol=cell.protocol, workload_id=cell.workload_id,
                   transport=cell.transport, workers=cell.workers, round=round_no, rounds=rounds, index=index, peak_msgs_per_s=peak)

    @property
    def cell(self):
        return Cell(self.server, self.mode, self.size, self.conns, self.depth, self.load_pct, self.protocol,
                    self.transport, self.workers)

    def to_json(self):
        return {
            "server": self.server, "mode": self.mode, "size": self.size, "conns": self.conns,
            "depth": self.depth, "load_pct": self.load_pct, "protocol": self.protocol, "transport": self.transport,
            "workers": self.workers, "workload_id": self.workload_id, "round": self.round, "rounds": self.rounds, "index": self.index,
            "peak_msgs_per_s": self.peak_msgs_per_s,
        }

    @classmethod
    def from_json(cls, d, workload, source="the result"):
        """Read the suite's ``cell``; what it lacks comes from the result's ``workload``."""
        try:
            return cls(
                server=str(d["server"]),
                mode=str(d.get("mode", workload.mode)),
                size=int(d.get("size", workload.size)),
                conns=int(d.get("conns", workload.conns)),
                depth=int(d.get("depth", workload.depth) or 1),
                load_pct=int(d.get("load_pct", 0) or 0),
                protocol=_protocol(d.get("protocol", workload.protocol)),
                workload_id=d.get("workload_id"),
                transport=_transport(d.get("transport", workload.transport)),
                workers=int(d.get("workers", workload.workers) or 1),
                round=int(d.get("round", 0)),
                rounds=d.get("rounds"),
                index=d.get("index"),
                peak_msgs_per_s=d.get("peak_msgs_per_s"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{source} has a malformed workload ({e!r}); it is not a sockbench result") from None


# --- the result ---------------------------------------------------------------------------------


def _hosts(v, source):
    """A result's ``hosts`` list (None: a load from one machine)."""
    if v is None:
        return None
    if not isinstance(v, list):
        raise SchemaError(f"{source} is corrupt: hosts is not a list")
    return [HostPart.from_json(h, source) for h in v]


@dataclass(frozen=True)
class LoadResult:
    """One load run, as ``run_load`` returns it and ``raw/*.json`` holds it.

    ``service_us`` (open loop: from the actual send, wrk2's uncorrected
    figure) and ``cycle_us`` (connect mode: connect + echo + close) are None
    where they do not apply; ``hdr`` and ``hdr_service`` are HdrHistogram's
    base64 encodings, in ``hdr_unit`` (nanoseconds).  ``cell`` is the suite's
    context, None for a run made outside the suite.  ``interference`` and
    ``fairness`` are None where they were not measured (a version-1 file;
    fairness in connect mode, where a connection carries one message).
    ``datagrams`` is a UDP run's loss accounting, None (and absent from the
    JSON) for a stream transport.
    """

    server: str
    workload: Workload
    throughput: Throughput
    latency_us: Latency
    errors: Errors
    valid: bool
    target: Target | None = None
    service_us: Latency | None = None
    cycle_us: Latency | None = None
    invalid_reason: str | None = None
    client_bound: bool = False
    limited_by: str | None = None
    server_proc: ServerProc = field(default_factory=ServerProc)
    client: Client = field(default_factory=Client)
    timeseries: Timeseries = field(default_factory=Timeseries)
    hdr: str | None = None
    hdr_unit: str = "ns"
    hdr_service: str | None = None
    machine: Machine | None = None
    started_at: str | None = None
    cell: CellContext | None = None
    interference: Interference | None = None
    fairness: Fairness | None = None
    #: a load from several hosts: each host's part (None for a load from this machine alone)
    hosts: list | None = None
    schema: int = SCHEMA_VERSION
    datagrams: Datagrams | None = None

    def to_json(self):
        """The plain dict that is written: keys in the harness's order, ``None`` as null."""
        out = {
            "schema": self.schema,
            "server": self.server,
            "target": self.target.to_json() if self.target is not None else None,
            "workload": self.workload.to_json(),
            "throughput": self.throughput.to_json(),
            "latency_us": self.latency_us.to_json(),
        }
        _put(out, "service_us", self.service_us.to_json() if self.service_us is not None else None)
        _put(out, "cycle_us", self.cycle_us.to_json() if self.cycle_us is not None else None)
        out.update(
            errors=self.errors.to_json(),
            valid=self.valid,
            invalid_reason=self.invalid_reason,
            client_bound=self.client_bound,
            limited_by=self.limited_by,
            server_proc=self.server_proc.to_json(),
            client=self.client.to_json(),
            timeseries=self.timeseries.to_json(),
            hdr=self.hdr,
            hdr_unit=self.hdr_unit,
            hdr_service=self.hdr_service,
            machine=self.machine.to_json() if self.machine is not None else None,
            started_at=self.started_at,
            interference=self.interference.to_json() if self.interference is not None else None,
            fairness=self.fairness.to_json() if self.fairness is not None else None,
        )
        _put(out, "datagrams", self.datagrams.to_json() if self.datagrams is not None else None)
        _put(out, "hosts", [h.to_json() for h in self.hosts] if self.hosts is not None else None)
        _put(out, "cell", self.cell.to_json() if self.cell is not None else None)
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        """Check ``d`` is a result of a readable schema and build it; anything else is one ``SchemaError`` line
        naming ``source``."""
        if not isinstance(d, dict) or d.get("schema") not in READABLE_VERSIONS:
            versions = " or ".join(f"schema-{v}" for v in READABLE_VERSIONS)
            raise SchemaError(f"{source} is not a {versions} sockbench result")
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise SchemaError(f"{source} is corrupt: it lacks {', '.join(missing)}")
        if not isinstance(d["throughput"], dict) or not isinstance(d["latency_us"], dict):
            raise SchemaError(f"{source} is corrupt: throughput/latency_us are not objects")
        if not isinstance(d["workload"], dict):
            raise SchemaError(f"{source} has a malformed workload (not an object); it is not a sockbench result")
        workload = Workload.from_json(d["workload"], source)
        cell = _obj(d, "cell", source)
        machine = _obj(d, "machine", source)
        target = _obj(d, "target", source)
        service, cycle = _obj(d, "service_us", source), _obj(d, "cycle_us", source)
        interference, fairness = _obj(d, "interference", source), _obj(d, "fairness", source)
        datagrams = _obj(d, "datagrams", source)
        return cls(
            server=str(d["server"]),
            workload=workload,
            throughput=Throughput.from_json(d["throughput"], source),
            latency_us=Latency.from_json(d["latency_us"], source),
            errors=Errors.from_json(_obj(d, "errors", source, {}), source),
            valid=bool(d["valid"]),
            target=Target.from_json(target, source) if target is not None else None,
            service_us=Latency.from_json(service, source) if service is not None else None,
            cycle_us=Latency.from_json(cycle, source) if cycle is not None else None,
            invalid_reason=d.get("invalid_reason"),
            client_bound=bool(d.get("client_bound", False)),
            limited_by=d.get("limited_by"),
            server_proc=ServerProc.from_json(_obj(d, "server_proc", source, {}), source),
            client=Client.from_json(_obj(d, "client", source, {}), source),
            timeseries=Timeseries.from_json(_obj(d, "timeseries", source, {}), source),
            hdr=d.get("hdr"),
            hdr_unit=str(d.get("hdr_unit") or "ns"),
            hdr_service=d.get("hdr_service"),
            machine=Machine.from_json(machine, source) if machine is not None else None,
            started_at=d.get("started_at"),
            cell=CellContext.from_json(cell, workload, source) if cell is not None and cell.get("server") else None,
            interference=Interference.from_json(interference, source) if interference is not None else None,
            fairness=Fairness.from_json(fairness, source) if fairness is not None else None,
            datagrams=Datagrams.from_json(datagrams, source) if datagrams is not None else None,
            hosts=_hosts(d.get("hosts"), source),
        )

    # --- what a result is a round of ---------------------------------------------------------
    def identity(self):
        """The ``Cell`` this result is a round of: the suite's cell, else its server and workload."""
        if self.cell is not None:
            return self.cell.cell
        w = self.workload
        return Cell(self.server, w.mode, w.size, w.conns, w.depth, protocol=w.protocol, transport=w.transport,
                    workers=w.workers)

    @property
    def round_no(self):
        """The round within its cell (1, 2, ...), 0 for a result made outside the suite."""
        return self.cell.round if self.cell is not None else 0

    @property
    def disturbed(self):
        """Foreign work or steal reached ``DISTURBED_SHARE`` on the run's CPUs (False when not measured)."""
        return self.interference is not None and self.interference.disturbed

    @property
    def starved(self):
        """Connections that completed no message in the window (0 when not measured)."""
        return self.fairness.starved if self.fairness is not None else 0

    def with_cell(self, context):
        """This result with the suite's ``CellContext`` attached."""
        return replace(self, cell=context)


# --- the suite's summaries (pytest-benchmark ``extra_info``) -------------------------------------


@dataclass(frozen=True)
class RoundSummary:
    """One round's figures, as the suite lists them per cell in ``extra_info["per_round"]``.

    ``interference`` and ``fairness`` are the round's own (None where not measured); ``disturbed`` and
    ``starved`` are their verdicts.
    """

    msgs_per_s: float | None
    bytes_per_s: float | None
    target_rate: float | None
    achieved_rate: float | None
    latency_us: Latency
    server_us_per_msg: CpuPerMsg
    server_rss_peak_bytes: int | None
    client_cpu_util: float | None
    client_busy_util: float | None
    errors: Errors
    valid: bool
    client_bound: bool
    invalid_reason: str | None
    started_at: str | None
    interference: Interference | None = None
    fairness: Fairness | None = None

    @classmethod
    def of(cls, r):
        """The summary of one ``LoadResult``."""
        return cls(
            msgs_per_s=r.throughput.msgs_per_s,
            bytes_per_s=r.throughput.bytes_per_s,
            target_rate=r.throughput.target_rate,
            achieved_rate=r.throughput.achieved_rate,
            latency_us=r.latency_us,
            server_us_per_msg=r.server_proc.us_per_msg,
            server_rss_peak_bytes=r.server_proc.rss_peak_bytes,
            client_cpu_util=r.client.cpu_util,
            client_busy_util=r.client.busy_util,
            errors=r.errors,
            valid=r.valid,
            client_bound=r.client_bound,
            invalid_reason=r.invalid_reason,
            started_at=r.started_at,
            interference=r.interference,
            fairness=r.fairness,
        )

    @property
    def disturbed(self):
        return self.interference is not None and self.interference.disturbed

    @property
    def starved(self):
        return self.fairness.starved if self.fairness is not None else 0

    def to_json(self):
        return {
            "msgs_per_s": self.msgs_per_s,
            "bytes_per_s": self.bytes_per_s,
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "latency_us": self.latency_us.figures(),
            "server_us_per_msg": self.server_us_per_msg.to_json(),
            "server_rss_peak_bytes": self.server_rss_peak_bytes,
            "client_cpu_util": self.client_cpu_util,
            "client_busy_util": self.client_busy_util,
            "errors": self.errors.to_json(),
            "valid": self.valid,
            "client_bound": self.client_bound,
            "invalid_reason": self.invalid_reason,
            "started_at": self.started_at,
            "interference": self.interference.to_json() if self.interference is not None else None,
            "fairness": self.fairness.to_json() if self.fairness is not None else None,
            "disturbed": self.disturbed,
            "starved": self.starved,
        }


@dataclass(frozen=True)
class CellSummary:
    """A cell over all its rounds (``CellStats.summary()``), as the suite puts it into ``extra_info``.

    Throughput is the median over rounds with its standard deviation and
    spread; ``unstable`` is pyperf's rule (a spread of 10%) on ``robust_spread``, which one outlier round
    cannot set, and ``outlier_rounds`` counts the rounds far from the median; latency comes
    from the exact merge of the rounds' histograms.  ``figure`` is what the
    cell is judged on (msgs/s closed loop, p99 µs open loop): its median over
    the ``rounds`` kept and the distribution-free interval of that median
    (``figure_ci``, None when the rounds are too few for one, at
    ``figure_ci_confidence``).  ``remeasured`` counts the rounds measured again
    because they were disturbed, ``disturbed_rounds`` the kept rounds that
    still were; ``starved`` is the most connections a round left unserved.
    """

    msgs_per_s_median: float
    msgs_per_s_stdev: float
    spread: float
    unstable: bool
    mb_per_s_median: float
    latency_us: MergedLatency
    server_cpu_us_per_msg: float
    server_user_us_per_msg: float
    server_rss_peak_bytes: float
    client_cpu_util: float
    client_load: float
    errors_total: int
    errors_by_kind: dict
    valid: bool
    client_bound: bool
    invalid_reasons: list
    flags: list
    rounds: int = 0
    remeasured: int = 0
    figure: str = "msgs/s"
    figure_median: float | None = None
    figure_ci: tuple | None = None
    figure_ci_confidence: float | None = None
    disturbed_rounds: int = 0
    starved: int = 0
    #: the spread that decides ``unstable``: the rounds' median absolute deviation x 1.4826 over the median
    robust_spread: float = 0.0
    #: rounds whose msgs/s lay more than ``thresholds.OUTLIER_SHARE`` from the median
    outlier_rounds: int = 0
    #: a udp cell: its rounds' datagram accounting added up (loss, duplicates, out-of-order); None for a stream
    datagrams: Datagrams | None = None

    def to_json(self):
        return {
            "msgs_per_s_median": self.msgs_per_s_median,
            "msgs_per_s_stdev": self.msgs_per_s_stdev,
            "spread": self.spread,
            "unstable": self.unstable,
            "mb_per_s_median": self.mb_per_s_median,
            "latency_us": self.latency_us.figures(),
            "latency_source": self.latency_us.source,
            "server_cpu_us_per_msg": self.server_cpu_us_per_msg,
            "server_user_us_per_msg": self.server_user_us_per_msg,
            "server_rss_peak_bytes": self.server_rss_peak_bytes,
            "client_cpu_util": self.client_cpu_util,
            "client_load": self.client_load,
            "errors_total": self.errors_total,
            "errors_by_kind": dict(self.errors_by_kind),
            "valid": self.valid,
            "client_bound": self.client_bound,
            "invalid_reasons": list(self.invalid_reasons),
            "flags": list(self.flags),
            "rounds": self.rounds,
            "remeasured": self.remeasured,
            "figure": self.figure,
            "figure_median": self.figure_median,
            "figure_ci": list(self.figure_ci) if self.figure_ci is not None else None,
            "figure_ci_confidence": self.figure_ci_confidence,
            "disturbed_rounds": self.disturbed_rounds,
            "starved": self.starved,
            "robust_spread": self.robust_spread,
            "outlier_rounds": self.outlier_rounds,
            **({"datagrams": self.datagrams.to_json()} if self.datagrams is not None else {}),
        }
