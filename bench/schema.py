"""The result schema: the one owner of sockbench's JSON, as pyperf's ``_bench.py`` owns its own.

Every field of a result is declared once, on its dataclass, with ``fld()``:
its JSON key (the attribute's name), the version it appeared in
(``since``), whether it exists in some modes only (``omit``: left out of the
JSON when ``None``), how it is read (``read``: a converter, or a ``Part``
class), older spellings still read (``old``), its ``results.csv`` column
(``csv``) and, for what a load process counts, how it merges over load
processes and hosts (``merge``: one of ``MERGES``).  From those
declarations come ``to_json``/``from_json`` (``Part``), the load process's
report to the harness (``ProcResult``: its fields plus every ``Client`` field
that merges), the merges (``merge_fields``) and the CSV columns (``csv_columns``).
A file that is not a result is refused in one line (``SchemaError``).

Tolerance for older or hand-made files lives in the declarations and
nowhere else: a missing or null key reads as the field's default, a missing
part as empty; writing such a result back gives the normalised form.

``Cell`` is the identity of one point of the benchmark matrix (the suite
plans cells, the report groups by them); ``RunPlan`` (``plan.json``) and
``RunMeta`` (``meta.json``) describe a whole run; ``RoundSummary`` and
``CellSummary`` are what the suite publishes in pytest-benchmark's
``extra_info``.  All of them are owned here, so no reader spells a key.
"""

import statistics
from dataclasses import dataclass, field, fields, make_dataclass, replace

from sockbench.endpoints import TRANSPORTS
from sockbench.errors import SockbenchError
from sockbench.servers.protocols import PROTOCOLS
from sockbench.units import format_size

__all__ = [
    "SCHEMA_VERSION", "HISTORY", "READABLE_VERSIONS", "ERROR_KINDS", "MERGES", "SchemaError", "Part", "fld",
    "Cell", "Workload", "TlsSetting", "TlsPart", "Target", "Throughput", "Latency", "MergedLatency", "Errors", "CpuPerMsg", "ServerProc",
    "Client", "Timeseries", "Machine", "Interference", "Fairness", "Datagrams", "WorkerCpu", "ClockOffset",
    "HostPart", "CellContext", "LoadResult", "ProcResult", "RunPlan", "RunMeta", "RoundSummary", "CellSummary",
    "jain_index", "merge_fields", "merge_stalls", "counted", "csv_columns", "copy_fields",
]

#: one line per version, as pyperf's ``_bench.py`` keeps it; a field's ``since`` names its line
HISTORY = {
    1: "server, target, workload, throughput, latency_us/service_us/cycle_us, errors, validity, verdicts, "
       "server and client CPU, time series, HDR histograms, machine, start time, the suite's cell",
    2: "interference, fairness, machine tuning, throughput.measured_s, server_proc.exit_status; then "
       "latency p9999/p99999, machine.versions, hosts (--cluster), client stalls, datagrams (udp)",
    3: "client.waits: the load loop's epoll_wait calls (messages per wake-up); then workload.python and "
       "cell.python (the server's interpreter, --python), server_proc.python and server_proc.processes, "
       "target.command (a --command server); workload.tls and tls (--tls: the setting asked for, what the "
       "handshakes negotiated, connect mode's handshakes and resumed ones), cell.tls and cell.resumed",
    4: "cell.pass_no (the pass of an interleaved run); interference: server_throttled, client_throttled, "
       "loaded_idle, canary, client_slowdown, unseen (CPU taken where the guest does not see it); "
       "then client.engine and the plan's engine (--engine: the load loop that measured the run; absent: epoll's); "
       "then machine.damon (the kernel's DAMON monitors and their state) and meta.damon_paused (--pause-damon); "
       "interference.server_held_s, client_held_s, held_s and held_by (other threads' long slices on the pinned CPUs)",
}
SCHEMA_VERSION = max(HISTORY)
#: the versions ``from_json`` reads (an older file reads the fields it lacks as their defaults)
READABLE_VERSIONS = tuple(HISTORY)

#: the error counters of a result's ``errors.by_kind`` (``protocol``: a frame/json answer whose
#: framing or header is wrong; ``mismatch``: content bytes that are not the ones sent)
ERROR_KINDS = ("connect", "reset", "timeout", "mismatch", "protocol")

#: the keys a file must carry to be read as a result at all
REQUIRED_KEYS = ("server", "workload", "throughput", "latency_us", "errors", "valid")


class SchemaError(SockbenchError):
    """A file or dict that is not a sockbench result of a readable schema (one line, no traceback)."""


class _Corrupt(Exception):
    """Raised while reading a part; becomes ``SchemaError("<source> is corrupt: <message>")``."""


# --- the declarations ------------------------------------------------------------------------------


def _measured(values):
    return [v for v in values if v is not None]


def _series(lists):
    """Element-wise sums of lists of unequal length (interval counts of several load processes)."""
    lists = [l for l in lists if l]
    n = max((len(l) for l in lists), default=0)
    return [sum(l[i] for l in lists if i < len(l)) for i in range(n)]


#: how a field merges over load processes, hosts or rounds; ``measured_*`` leave out the parts that did not
#: measure it (``None``) and are ``None`` when none did.  "hdr" (histograms) is the load room's to give.
MERGES = {
    "sum": lambda vs: sum(_measured(vs)),
    "max": lambda vs: max(_measured(vs), default=None),
    "any": lambda vs: any(vs),
    "union": lambda vs: sorted({x for v in vs if v for x in v}),
    "concat": lambda vs: [x for v in vs if v for x in v],
    "series": _series,
    "by_kind": lambda vs: {k: sum(v.get(k, 0) for v in vs if v) for k in dict.fromkeys(
        [*ERROR_KINDS, *(k for v in vs if v for k in v)])},
    "measured_sum": lambda vs: sum(_measured(vs)) if _measured(vs) else None,
    "measured_max": lambda vs: max(_measured(vs), default=None),
}


def fld(default=None, *, since=1, omit=False, read=None, old=(), csv=None, merge=None, required=False,
        write=None, factory=None, nodefault=False):
    """Declare one field (see the module docstring).  ``required``: a file must carry it (not null), and
    the constructor has no default; ``nodefault``: no default, but null is a value."""
    meta = {"since": since, "omit": omit, "read": read, "old": tuple(old), "csv": csv, "merge": merge,
            "required": required, "write": write}
    if required or nodefault:
        return field(metadata=meta)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _part(cls, *, many=False, default=None, **kw):
    """A nested part: read with ``cls.from_json`` (``many``: a list of them); ``default=cls`` when absent means empty."""
    return fld(read=cls, factory=default, **kw) if not many else fld(read=(cls,), **kw)


def _int_or(fallback):
    """An int, ``fallback`` for 0/""/None (``depth`` 0 was never meant)."""
    return lambda v: int(v or fallback)


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


def _object(name):
    def read(v):
        if not isinstance(v, dict):
            raise _Corrupt(f"{name} is not an object")
        return dict(v)
    return read


def _plain(v, write=None):
    if write is not None and v is not None:
        return write(v)
    if isinstance(v, Part):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Part:
    """A declared part of the JSON: written and read from its fields' ``fld()`` declarations."""

    #: how ``SchemaError`` names this part when a value cannot be read
    _malformed = None

    def to_json(self):
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if not (v is None and f.metadata.get("omit")):
                out[f.name] = _plain(v, f.metadata.get("write"))
        return out

    @classmethod
    def from_json(cls, d, source="the result"):
        if not isinstance(d, dict):
            raise SchemaError(f"{source} has {cls._wording()} (not an object); it is not a sockbench result")
        return cls(**cls._read(d, source))

    @classmethod
    def _wording(cls):
        return cls._malformed or f"a malformed {cls.__name__.lower()}"

    @classmethod
    def _read(cls, d, source):
        """The constructor's keywords from dict ``d``: what it lacks is left to the defaults."""
        kw = {}
        try:
            for f in fields(cls):
                m = f.metadata
                v = d.get(f.name)
                for name in m.get("old", ()):
                    if v in (None, "") and d.get(name) not in (None, ""):
                        v = d[name]
                if v is None:
                    if m.get("required"):
                        raise KeyError(f.name)
                    continue
                read = m.get("read")
                if isinstance(read, tuple):  # a list of parts
                    if not isinstance(v, list):
                        raise _Corrupt(f"{f.name} is not a list")
                    v = [read[0].from_json(x, source) for x in v]
                elif isinstance(read, type) and issubclass(read, Part):
                    if not isinstance(v, dict) and not read._malformed:
                        raise _Corrupt(f"{f.name} is not an object")
                    v = read.from_json(v, source)
                elif read is not None:
                    v = read(v)
                kw[f.name] = v
        except _Corrupt as e:
            raise SchemaError(f"{source} is corrupt: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"{source} has {cls._wording()} ({e!r}); it is not a sockbench result") from None
        return kw


def counted(cls):
    """The fields of ``cls`` a load process counts and the harness merges (declared with ``merge``)."""
    return [f for f in fields(cls) if f.metadata.get("merge")]


def merge_fields(parts, cls, **rules):
    """``{name: merged value}`` of every field of ``cls`` declared with ``merge``, over ``parts`` (anything with
    those attributes); ``rules`` adds merges the schema cannot do itself (``hdr=``), fields without one are left out."""
    parts = list(parts)
    out = {}
    for f in counted(cls):
        rule = rules.get(f.metadata["merge"]) or MERGES.get(f.metadata["merge"])
        if rule is not None:
            out[f.name] = rule([getattr(p, f.name) for p in parts])
    return out


def copy_fields(cls, source, **changes):
    """A ``cls`` from the same-named attributes of ``source``: how a workload goes from one hop to the next."""
    kw = {f.name: getattr(source, f.name) for f in fields(cls) if f.init and hasattr(source, f.name)}
    return cls(**{**kw, **changes})


def csv_columns(cls=None, _get=lambda r: r):
    """``[(column, value of a result)]`` of every field declared with ``csv``, in declaration order."""
    out = []
    for f in fields(cls or LoadResult):
        spec, read = f.metadata.get("csv"), f.metadata.get("read")
        get = (lambda g, n: lambda r: _attr(g(r), n))(_get, f.name)
        if isinstance(spec, str):
            out.append((spec, get))
        elif isinstance(spec, dict):
            out += [(col, (lambda g, of: lambda r: _apply(g(r), of))(get, of)) for col, of in spec.items()]
        elif isinstance(read, type) and issubclass(read, Part):
            out += csv_columns(read, get)
    return out


def _attr(obj, name):
    return None if obj is None else getattr(obj, name)


def _apply(v, of):
    return None if v is None else (getattr(v, of) if isinstance(of, str) else of(v))


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
    #: the interpreter the server ran under (``sockbench run --python``: "3.12"); "" for sockbench's own
    python: str = ""
    #: over TLS (``sockbench serve --tls``); a plain cell's id has no suffix
    tls: bool = False
    #: connect mode over TLS: each connection resumes its slot's previous session (``--tls-resumption on``)
    resumed: bool = False

    def __post_init__(self):
        if self.python is None:  # copied from a workload that names none
            object.__setattr__(self, "python", "")
        # copied from a workload: its TLS setting (or None) says whether the cell is over TLS
        object.__setattr__(self, "tls", bool(self.tls))
        object.__setattr__(self, "resumed", bool(self.resumed) and self.tls)

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
    _CellPart(lambda c: bool(c.python), "-py{c.python}", "Python {c.python}", "under Python {c.python}"),
    _CellPart(lambda c: c.tls and not c.resumed, "-tls", "TLS", "over TLS"),
    _CellPart(lambda c: c.tls and c.resumed, "-tls-resumed", "TLS resumed", "over TLS, sessions resumed"),
)


# --- the parts of a result ----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsSetting(Part):
    """The TLS a load asked for (``sockbench load --tls``): the version both ends were pinned to, the cipher
    (None: OpenSSL's choice) and whether connect mode's connections resumed sessions."""

    _malformed = "a malformed workload.tls"

    version: str = fld(required=True, read=str)
    cipher: str | None = fld()
    resumption: bool = fld(False, read=bool)


@dataclass(frozen=True)
class TlsPart(Part):
    """What a TLS load's handshakes negotiated, and in connect mode how many completed.

    ``version``, ``cipher`` and ``group`` (the key exchange) as OpenSSL names
    them.  Connect mode: ``handshakes`` completed in the window (each cycle is
    one), ``resumed`` of them (the server took the session offered),
    ``handshakes_per_s`` over the window; ``None`` in closed and open loop,
    whose connections shook hands before the window.  ``handshake_errors``
    counts the handshakes that failed, ``handshake_error`` the first one's
    reason in OpenSSL's words.
    """

    version: str | None = fld()
    cipher: str | None = fld()
    group: str | None = fld()
    handshakes: int | None = fld()
    resumed: int | None = fld()
    handshakes_per_s: float | None = fld()
    handshake_errors: int = fld(0, read=int)
    handshake_error: str | None = fld()

    @property
    def resumed_share(self):
        return self.resumed / self.handshakes if self.handshakes else None


@dataclass(frozen=True, kw_only=True)
class Workload(Part):
    """What was asked for: ``size`` is the payload size in every protocol; ``rate`` is open loop's total msgs/s.

    The same names as ``LoadSpec``'s and ``Cell``'s, so each is made from the other by ``copy_fields``.
    """

    _malformed = "a malformed workload"

    mode: str = fld(required=True, read=str)
    protocol: str = fld("raw", read=_protocol)
    #: tcp, tcp6, unix or udp (sockbench/endpoints.py); results without one were tcp
    transport: str = fld("tcp", read=_transport)
    conns: int = fld(required=True, read=int)
    size: int = fld(required=True, read=int)
    depth: int = fld(1, read=_int_or(1))
    rate: float | None = fld()
    duration_s: float | None = fld()
    warmup_s: float | None = fld()
    procs: int | None = fld()
    interval_s: float | None = fld()
    timeout_s: float | None = fld()
    server_cpus: list | None = fld(read=list)
    client_cpus: list | None = fld(read=list)
    #: server processes (``--workers``); results without it had one
    workers: int = fld(1, read=_int_or(1))
    #: the interpreter label asked for (``--python``: "3.12"); None: sockbench's own (and every older result)
    python: str | None = fld(omit=True, since=3, read=lambda v: str(v) or None)
    #: the TLS asked for (``--tls``), or None: plain, as every result without it
    tls: "TlsSetting | None" = _part(TlsSetting, omit=True, since=3)


@dataclass(frozen=True)
class Target(Part):
    """The address the load connected to (the harness-started server's, or ``--target``'s); ``path`` for unix;
    ``command``: a ``--command`` server's command line as given."""

    host: str | None = fld()
    port: int | None = fld()
    path: str | None = fld()
    command: str | None = fld(omit=True, since=3)

    def to_json(self):
        out = {"path": self.path} if self.path is not None else {"host": self.host, "port": self.port}
        if self.command is not None:
            out["command"] = self.command
        return out


@dataclass(frozen=True)
class Throughput(Part):
    """Per second of the measured window; bytes are payload bytes (``wire_bytes_per_s`` adds the framing).

    ``target_rate`` .. ``behind`` exist in open loop only, ``conns_per_s`` in connect mode only;
    ``measured_s`` only when the rates are over less than the workload's ``duration_s`` (the server
    exited inside the window, or a stop signal cut it short).
    """

    msgs_per_s: float | None = fld(csv="msgs_per_s")
    bytes_per_s: float | None = fld(csv={"mb_per_s": lambda v: v / 1e6})
    wire_bytes_per_s: float | None = fld()
    target_rate: float | None = fld(omit=True, csv="target_rate")
    achieved_rate: float | None = fld(omit=True)
    pacing_error: float | None = fld(omit=True)
    behind: bool | None = fld(omit=True)
    conns_per_s: float | None = fld(omit=True)
    measured_s: float | None = fld(omit=True, since=2)

    @property
    def achieved(self):
        """The rate actually reached: ``achieved_rate`` in open loop, else ``msgs_per_s``."""
        return self.achieved_rate if self.achieved_rate is not None else self.msgs_per_s


@dataclass(frozen=True)
class Latency(Part):
    """A latency summary in microseconds: percentiles of the HDR histogram, its max, the exact mean.

    Every figure is ``None`` when nothing was recorded (``count`` 0).
    """

    count: int | None = fld()
    p50: float | None = fld()
    p90: float | None = fld()
    p99: float | None = fld()
    p999: float | None = fld()
    max: float | None = fld()
    mean: float | None = fld()
    #: the far tail (in ``to_json`` only: the summaries keep the figures above)
    p9999: float | None = fld(omit=True, since=2)
    p99999: float | None = fld(omit=True, since=2)

    #: (field, percentile) of the summary's percentiles, in order
    PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99), ("p99999", 99.999))

    def figures(self):
        """``{p50, p90, p99, p999, max, mean}``: the summary without its count."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999, "max": self.max, "mean": self.mean}


@dataclass(frozen=True)
class MergedLatency(Latency):
    """A cell's latency over every round: percentiles of the exact HDR merge (``source`` "hdr"),
    or, without histograms, the median of the rounds' figures (``source`` "median of rounds")."""

    source: str = "hdr"

    def to_json(self):
        return {**self.figures(), "count": self.count, "source": self.source}


@dataclass(frozen=True)
class Errors(Part):
    """The error counts of a run: ``total`` and ``by_kind`` (``ERROR_KINDS`` -> count)."""

    total: int = fld(0)
    by_kind: dict = fld(factory=dict, read=_object("errors.by_kind"))

    @classmethod
    def of(cls, counts):
        """From ``{kind: count}`` over ``ERROR_KINDS``: the total is their sum."""
        by_kind = {k: counts[k] for k in ERROR_KINDS}
        return cls(total=sum(by_kind.values()), by_kind=by_kind)

    def count(self, kind):
        return self.by_kind.get(kind, 0)


@dataclass(frozen=True)
class CpuPerMsg(Part):
    """CPU time per message in microseconds, split as the kernel splits it (netperf's service demand)."""

    user: float | None = fld()
    sys: float | None = fld()

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
class ServerProc(Part):
    """The server's CPU and memory over the measured window.

    ``cpu_source`` ("schedstat" or "ticks") exists once the CPU was read;
    ``cpus`` and ``cpu_util`` exist when the harness started (and pinned) the server;
    ``exit_status`` when that server exited during the run.
    """

    pid: int | None = fld()
    user_s: float | None = fld()
    sys_s: float | None = fld()
    rss_peak_bytes: int | None = fld(csv="server_rss_peak_bytes")
    us_per_msg: CpuPerMsg = _part(CpuPerMsg, default=CpuPerMsg, csv={
        "server_cpu_us_per_msg": "total", "server_user_us_per_msg": "user", "server_sys_us_per_msg": "sys"})
    cpu_source: str | None = fld(omit=True)
    cpus: list | None = fld(read=list)
    cpu_util: float | None = fld()
    exit_status: int | None = fld(omit=True, since=2)
    #: the interpreter a Python server ran under ("CPython 3.12.1"); None for a --command or a running target
    python: str | None = fld(omit=True, since=3)
    #: how many processes served (a --command's process tree, a forking server's children included)
    processes: int | None = fld(omit=True, since=3)

    def to_json(self):
        out = super().to_json()
        if self.cpus is None and self.cpu_util is None:  # a server the harness did not start
            del out["cpus"], out["cpu_util"]
        return out


@dataclass(frozen=True)
class Client(Part):
    """The load processes' own CPU over the window, and what their loops counted.

    ``polling``: open loop with a CPU per load process, which is then always on
    its CPU; ``busy_util`` (its share outside idle passes) is its load then.
    The fields declared with ``merge`` are counted by the load loop
    (``ext/loadrun.pxd``'s result dict, under the same names), reach the
    harness in each ``ProcResult`` and are merged over load processes and
    hosts by their rule.  ``writes``, ``reads`` and ``waits`` count the whole
    run's write/send, read/recv and epoll_wait calls (``waits``: a sleeping
    loop's wake-ups, a polling loop's passes), ``msgs_queued`` the messages
    handed to the writer over the same span.  ``stalls``,
    ``stall_s``, ``longest_stall_s`` (a polling loop only): the gaps of
    ``CLIENT_STALL_S`` or more between two passes in the window, its CPU taken
    from it.
    """

    cpu_util: float | None = fld(csv="client_cpu_util")
    polling: bool | None = fld()
    busy_util: float | None = fld()
    user_s: float | None = fld()
    sys_s: float | None = fld()
    cpus: list | None = fld(read=list)
    us_per_msg: CpuPerMsg = _part(CpuPerMsg, default=CpuPerMsg)
    writes: int | None = fld(merge="sum")
    reads: int | None = fld(merge="sum")
    msgs_queued: int | None = fld(merge="sum")
    msgs_per_write: float | None = fld()
    waits: int | None = fld(omit=True, since=3, merge="measured_sum", csv="client_waits")
    stalls: int | None = fld(omit=True, since=2, merge="measured_sum", csv="client_stalls")
    stall_s: float | None = fld(omit=True, since=2, merge="measured_sum", csv="client_stall_s")
    longest_stall_s: float | None = fld(omit=True, since=2, merge="measured_max", csv="client_longest_stall_s")
    #: the load loop that measured the run: ``epoll`` or ``uring`` (``bench.load.spec.ENGINES``); None: a file
    #: from before the choice existed, whose loop was epoll's (``engine_name``)
    engine: str | None = fld(omit=True, since=4, csv="client_engine")

    @property
    def load(self):
        """What decides client-bound: the busy share of a polling client, else its CPU utilisation."""
        return self.busy_util if self.polling else self.cpu_util

    @property
    def engine_name(self):
        """The load loop that measured the run, ``epoll`` for a file from before the choice existed."""
        return self.engine or "epoll"

    @classmethod
    def of(cls, parts, **figures):
        """A client from the load loops' counts over ``parts`` (load processes, or hosts' clients) and the
        ``figures`` the harness computes; ``msgs_per_write`` follows from the counts."""
        counts = merge_fields(parts, cls)
        writes, queued = counts.get("writes"), counts.get("msgs_queued")
        return cls(**counts, msgs_per_write=queued / writes if writes and queued is not None else None, **figures)


def merge_stalls(parts):
    """``(stalls, stall_s, longest_stall_s)`` of ``parts`` merged as ``Client`` declares them."""
    m = merge_fields(parts, Client)
    return m["stalls"], m["stall_s"], m["longest_stall_s"]


@dataclass(frozen=True)
class Timeseries(Part):
    """Completed messages per interval, warmup included (its first ``warmup_intervals``); ``sent`` in open loop."""

    interval_s: float | None = fld()
    msgs: list | None = fld(read=list)
    warmup_intervals: int | None = fld()
    longest_idle_s: float | None = fld()
    sent: list | None = fld(omit=True, read=list)


@dataclass(frozen=True)
class Machine(Part):
    """The machine and the code: the keys of ``sockbench.machine.machine_info()``; ``old`` spellings of
    older or foreign files fill a key that is missing or empty."""

    cpu_model: str | None = fld(old=("cpu", "processor"))
    cores: int | None = fld(old=("cpu_count", "cpus"))
    usable_cpus: list | None = fld(read=list)
    kernel: str | None = fld()
    os: str | None = fld()
    python: str | None = fld(old=("python_version",))
    python_impl: str | None = fld()
    sockbench_version: str | None = fld()
    git_commit: str | None = fld(old=("commit",))
    git_dirty: bool | None = fld()
    hostname: str | None = fld(old=("node",))
    #: the CPUs the kernel keeps the scheduler off (``isolcpus=``), ``[]`` when none
    isolcpus: list | None = fld(since=2, read=list)
    #: the CPUs without a periodic tick (``nohz_full=``), ``[]`` when none
    nohz_full: list | None = fld(since=2, read=list)
    #: the cpufreq governor: one name when every CPU has the same, else ``{"cpu": name}``
    governor: str | dict | None = fld(since=2)
    #: simultaneous multithreading active (``/sys/devices/system/cpu/smt/active``)
    smt: bool | None = fld(since=2)
    #: address-space randomisation in pyperf's words ("Full randomization", ...)
    aslr: str | None = fld(since=2)
    #: the 1, 5 and 15 minute load averages when the metadata was taken
    loadavg: list | None = fld(since=2, read=list)
    #: versions of what runs and built the code: uvloop, hdrhistogram, Cython and the C compiler of the extensions
    versions: dict | None = fld(since=2, omit=True)
    #: the kernel's DAMON monitors (``sockbench.damon.monitors``): ``[{"kdamond", "state", "pid", "sample_us"}]``,
    #: ``[]`` when none is configured; absent where the kernel has no DAMON
    damon: list | None = fld(since=4, omit=True, read=list)

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
class Interference(Part):
    """Work on the run's pinned CPUs that was neither the server's nor the load processes'
    (``bench/load/interference.py`` says how it is measured).

    ``*_foreign`` and ``*_steal``: that side's foreign (or hypervisor-stolen)
    CPU time over the window as a share of its pinned CPUs, 0..1, the mean
    over the side's CPUs; ``None`` for a side whose CPUs are not known (the
    server of ``--target``).  ``disturbed``: on some side, foreign or steal
    time reached ``DISTURBED_SHARE`` of one pinned CPU, or CPU was taken where
    the guest does not see it (``unseen``).

    What the guest does not see (``bench/load/unseen.py``): ``*_throttled``,
    the share of the window the side's processes' cgroups (theirs and every
    ancestor's) spent throttled by a CPU quota; ``loaded_idle``, in a
    closed-loop round with messages always queued, the share of the window
    the busier side was off its CPU; ``canary``, how much more CPU time a
    fixed piece of work took on the pinned CPUs right after the round than
    the least it took there in the run (1.0: the same); ``client_slowdown``,
    in a closed loop, the load client's CPU per message over the median of
    its cell's earlier rounds (set by the suite and ``ab``, which know the
    cell).  ``None`` where not measured.  ``unseen``: one of them crossed its
    threshold.

    ``*_held_s``: the seconds other threads held that side's pinned CPUs around
    the window in slices long enough to keep a waking process waiting
    (``procfs.foreign_stalls``); ``held_s`` both sides' CPUs together, each
    thread once (one seen on a CPU of each side counts on both ``*_held_s``),
    and ``held_by`` the longest of those threads (``{"thread": comm, "pid",
    "s"}``): what made an open loop's tail when it was not the server (shown,
    not a flag).
    """

    server_foreign: float | None = fld(since=2)
    client_foreign: float | None = fld(since=2)
    server_steal: float | None = fld(since=2)
    client_steal: float | None = fld(since=2)
    loadavg_1m: float | None = fld(since=2)
    disturbed: bool = fld(False, since=2, read=bool)
    server_throttled: float | None = fld(since=4)
    client_throttled: float | None = fld(since=4)
    loaded_idle: float | None = fld(since=4)
    canary: float | None = fld(since=4)
    client_slowdown: float | None = fld(since=4)
    unseen: bool = fld(False, since=4, read=bool)
    server_held_s: float | None = fld(since=4, omit=True)
    client_held_s: float | None = fld(since=4, omit=True)
    held_s: float | None = fld(since=4, omit=True)
    held_by: list | None = fld(since=4, omit=True, read=list)


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
class Fairness(Part):
    """How the window's completed messages were spread over the connections.

    ``min``, ``median`` and ``max`` are messages completed per connection in
    the measured window, ``jain`` is Jain's fairness index of those counts and
    ``starved`` the number of connections that completed no message although
    they were owed an answer (a run with any is invalid; an open-loop
    connection whose schedule gave it nothing to send in the window is not
    starved).
    """

    conns: int = fld(required=True, since=2, read=int)
    min: int = fld(required=True, since=2, read=int)
    median: float = fld(required=True, since=2, read=float)
    max: int = fld(required=True, since=2, read=int)
    jain: float | None = fld(nodefault=True, since=2)
    starved: int = fld(required=True, since=2, read=int)

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


@dataclass(frozen=True)
class Datagrams(Part):
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

    _malformed = "malformed datagrams"

    sent: int = fld(required=True, since=2, read=int)
    received: int = fld(required=True, since=2, read=int)
    lost: int = fld(required=True, since=2, read=int)
    duplicates: int = fld(0, since=2, read=_int_or(0))
    out_of_order: int = fld(0, since=2, read=_int_or(0))
    corrupt: int = fld(0, since=2, read=_int_or(0))
    late: int = fld(0, since=2, read=_int_or(0))

    @property
    def loss_share(self):
        return self.lost / self.sent if self.sent else None

    @classmethod
    def of(cls, counts):
        """From a load loop's ``datagrams`` dicts (one per load process), added up."""
        counts = list(counts)
        return cls(**{f.name: sum(int(c.get(f.name, 0)) for c in counts) for f in fields(cls)})

    def to_json(self):
        return {**super().to_json(), "loss_share": self.loss_share}


@dataclass(frozen=True)
class WorkerCpu(Part):
    """The Dask worker's own CPU on a load host (``sockbench cluster-worker``) over the load's window.

    ``span_s`` is the time it was measured over (from just before the window to
    the last load process's answer); ``util`` the share of one CPU.
    """

    user_s: float | None = fld(since=2)
    sys_s: float | None = fld(since=2)
    span_s: float | None = fld(since=2)
    util: float | None = fld(since=2)


@dataclass(frozen=True)
class ClockOffset(Part):
    """A load host's wall clock against the coordinator's, by sockbench's NTP-style exchange.

    ``offset_s`` is host minus coordinator, known within ``± delay_s / 2``;
    ``too_large``: off by more than ``CLOCK_OFFSET_SHARE`` of the window (a warning).
    """

    offset_s: float | None = fld(since=2)
    delay_s: float | None = fld(since=2)
    too_large: bool = fld(False, since=2, read=bool)


@dataclass(frozen=True)
class HostPart(Part):
    """One load host's share of a load from several hosts (``--cluster``); the result's totals merge them.

    ``name`` is the Dask worker's name, ``address`` its address; the figures are
    that host's own, as a one-host result would give them.  ``start_late_s`` is
    how long after the shared start instant its last load process started (in
    the host's own clock); ``worker_cpu`` the Dask worker's own CPU meanwhile.
    A host that died or failed keeps its name and reason with empty figures.
    """

    _malformed = "a malformed hosts entry"

    name: str = fld(required=True, since=2, read=str)
    address: str | None = fld(since=2)
    conns: int | None = fld(since=2)
    procs: int | None = fld(since=2)
    valid: bool = fld(False, since=2, read=bool)
    invalid_reason: str | None = fld(since=2)
    throughput: Throughput | None = _part(Throughput, since=2)
    latency_us: Latency | None = _part(Latency, since=2)
    errors: Errors = _part(Errors, default=Errors, since=2)
    client: Client = _part(Client, default=Client, since=2)
    client_bound: bool = fld(False, since=2, read=bool)
    interference: Interference | None = _part(Interference, since=2)
    worker_cpu: WorkerCpu = _part(WorkerCpu, default=WorkerCpu, since=2)
    clock: ClockOffset = _part(ClockOffset, default=ClockOffset, since=2)
    start_late_s: float | None = fld(since=2)
    machine: Machine | None = _part(Machine, since=2)

    @classmethod
    def from_json(cls, d, source="the result"):
        if not isinstance(d, dict) or not d.get("name"):
            raise SchemaError(f"{source} has a malformed hosts entry; it is not a sockbench result")
        return super().from_json(d, source)


@dataclass(frozen=True)
class CellContext(Part):
    """What the suite attaches to a result: the cell it is a round of, and where that round stands.

    ``index`` is the cell's place in the plan (the report's run order),
    ``peak_msgs_per_s`` the closed-loop peak an open-loop cell's rate was set from, ``pass_no`` the pass of
    the run the round was measured in (its rounds of other cells in the same pass are its pairs; None: a run
    that did not measure in passes).
    """

    _malformed = "a malformed workload"

    server: str = fld(required=True, read=str)
    mode: str = fld(required=True, read=str)
    size: int = fld(required=True, read=int)
    conns: int = fld(required=True, read=int)
    depth: int = fld(1, read=_int_or(1))
    load_pct: int = fld(0, read=_int_or(0))
    protocol: str = fld("raw", read=_protocol)
    transport: str = fld("tcp", read=_transport)
    workers: int = fld(1, read=_int_or(1))
    workload_id: str | None = fld()
    round: int = fld(0, read=int)
    rounds: int | None = fld()
    index: int | None = fld()
    peak_msgs_per_s: float | None = fld()
    pass_no: int | None = fld(since=4)
    #: the server's interpreter (``--python``), as the cell's; "" (and absent from the JSON) for sockbench's own
    python: str = fld("", since=3, read=lambda v: str(v or ""))
    #: over TLS, and (connect mode) resuming sessions, as the cell's; absent from a plain cell's JSON
    tls: bool = fld(False, since=3, read=bool)
    resumed: bool = fld(False, since=3, read=bool)

    def to_json(self):
        out = super().to_json()
        if not self.python:
            del out["python"]
        if not self.tls:  # as every cell written before TLS
            del out["tls"], out["resumed"]
        return out

    @classmethod
    def of(cls, cell, round_no, rounds, index, peak=None, pass_no=None):
        return copy_fields(cls, cell, workload_id=cell.workload_id, round=round_no, rounds=rounds, index=index,
                           peak_msgs_per_s=peak, pass_no=pass_no)

    @property
    def cell(self):
        return copy_fields(Cell, self)

    @classmethod
    def from_json(cls, d, workload=None, source="the result"):
        """Read the suite's ``cell``; what it lacks comes from the result's ``workload``."""
        known = Workload.to_json(workload) if workload is not None else {}
        return super().from_json({**known, **{k: v for k, v in d.items() if v is not None}}, source)


# --- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadResult(Part):
    """One load run, as ``run_load`` returns it and ``raw/*.json`` holds it (fields in the JSON's order).

    ``service_us`` (open loop: from the actual send, wrk2's uncorrected
    figure) and ``cycle_us`` (connect mode: connect + echo + close) exist
    where they apply; ``hdr`` and ``hdr_service`` are HdrHistogram's base64
    encodings, in ``hdr_unit`` (nanoseconds).  ``cell`` is the suite's
    context, absent for a run made outside the suite.  ``interference`` and
    ``fairness`` are None where they were not measured (a version-1 file;
    fairness in connect mode).  ``datagrams`` is a UDP run's loss accounting,
    ``hosts`` a load from several hosts' parts (the totals merge them).
    """

    _malformed = "a malformed result"

    schema: int = SCHEMA_VERSION
    server: str = fld(required=True, read=str)
    target: Target | None = _part(Target)
    workload: Workload = _part(Workload, required=True)
    throughput: Throughput = _part(Throughput, required=True)
    latency_us: Latency = _part(Latency, required=True, csv={
        "latency_count": "count", "p50_us": "p50", "p90_us": "p90", "p99_us": "p99", "p999_us": "p999",
        "p9999_us": "p9999", "max_us": "max", "mean_us": "mean"})
    service_us: Latency | None = _part(Latency, omit=True)
    cycle_us: Latency | None = _part(Latency, omit=True)
    errors: Errors = _part(Errors, default=Errors, csv={"errors": "total"})
    valid: bool = fld(False, read=bool, csv="valid")
    invalid_reason: str | None = fld()
    client_bound: bool = fld(False, read=bool)
    limited_by: str | None = fld()
    server_proc: ServerProc = _part(ServerProc, default=ServerProc)
    client: Client = _part(Client, default=Client)
    timeseries: Timeseries = _part(Timeseries, default=Timeseries)
    hdr: str | None = fld()
    hdr_unit: str = fld("ns", read=str)
    hdr_service: str | None = fld()
    machine: Machine | None = _part(Machine)
    started_at: str | None = fld()
    interference: Interference | None = _part(Interference, since=2)
    fairness: Fairness | None = _part(Fairness, since=2)
    datagrams: Datagrams | None = _part(Datagrams, omit=True, since=2, csv={
        "datagrams_sent": "sent", "datagrams_lost": "lost", "loss_share": "loss_share", "duplicates": "duplicates",
        "out_of_order": "out_of_order"})
    hosts: list | None = _part(HostPart, many=True, omit=True, since=2)
    #: a TLS load's handshakes (absent from a plain result)
    tls: TlsPart | None = _part(TlsPart, omit=True, since=3, csv={
        "tls_version": "version", "tls_cipher": "cipher", "tls_group": "group", "handshakes_per_s": "handshakes_per_s",
        "resumed_share": "resumed_share"})
    cell: CellContext | None = fld(omit=True)

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
        kw = cls._read({k: v for k, v in d.items() if k not in ("schema", "cell")}, source)
        cell = d.get("cell")
        if cell is not None and not isinstance(cell, dict):
            raise SchemaError(f"{source} is corrupt: cell is not an object")
        if cell and cell.get("server"):  # a cell without a server is no suite context
            kw["cell"] = CellContext.from_json(cell, kw["workload"], source)
        return cls(**kw)

    # --- what a result is a round of ---------------------------------------------------------
    def identity(self):
        """The ``Cell`` this result is a round of: the suite's cell, else its server and workload."""
        if self.cell is not None:
            return self.cell.cell
        w = self.workload
        return copy_fields(Cell, w, server=self.server, tls=w.tls is not None,
                           resumed=w.tls is not None and w.mode == "connect" and w.tls.resumption)

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

    @property
    def pass_no(self):
        """The pass of the run this round was measured in (None: not measured in passes)."""
        return self.cell.pass_no if self.cell is not None else None

    def with_cell(self, context):
        """This result with the suite's ``CellContext`` attached."""
        return replace(self, cell=context)


# --- what a load process reports to the harness ------------------------------------------------


@dataclass(frozen=True)
class _ProcFields(Part):
    """What one load process measured over the window, as it reports it to the harness (one JSON line).

    The names are the load loop's result dict's (``ext/loadrun.pxd``), and
    ``ProcResult`` adds every ``Client`` field declared with ``merge`` under
    its own name, so a counter reaches the result without being spelled on
    the way.  Counts are over the measured window (warmup excluded) unless
    named otherwise; ``ts_msgs``/``ts_sent`` cover every interval. ``hdr1`` is
    the latency histogram (from the intended send time in open loop),
    ``hdr2`` the second one (open loop: service time; connect mode: the
    connect-echo-close cycle), both encoded, with the exact sums of their
    values.  ``server_cpu`` and ``cpu_stat`` are the server's CPU and the
    CPUs' /proc/stat counters at the window's edges, read by load process 0
    only.  ``conn_msgs`` is each connection's completed messages, ``starved``
    how many completed none while owed an answer (``None`` in connect mode).
    ``merge`` says how the harness adds the processes up (``merge_fields``).
    """

    index: int = fld(required=True)
    cpus: list = fld(required=True, merge="union")
    mode: int = fld(required=True)
    msgs: int = fld(required=True, merge="sum")
    rx_bytes: int = fld(required=True, merge="sum")
    rx_wire_bytes: int = fld(required=True, merge="sum")
    sent_window: int = fld(required=True, merge="sum")
    cycles: int = fld(required=True, merge="sum")
    errors: dict = fld(required=True, merge="by_kind")
    first_error_ns: int | None = fld(required=True)
    first_error_kind: str | None = fld(required=True)
    ended_early: bool = fld(required=True, merge="any")
    alive_at_end: int = fld(required=True, merge="sum")
    hdr1: str | None = fld(required=True, merge="hdr")
    hdr1_sum_ns: int = fld(required=True, merge="sum")
    hdr2: str | None = fld(required=True, merge="hdr")
    hdr2_sum_ns: int = fld(required=True, merge="sum")
    ts_msgs: list = fld(required=True, merge="series")
    ts_sent: list | None = fld(required=True, merge="series")
    user_s: float = fld(required=True, merge="sum")
    sys_s: float = fld(required=True, merge="sum")
    cpu_window_s: float = fld(required=True, merge="max")
    due: int | None = fld(required=True)
    polling: bool = fld(required=True, merge="any")
    idle_s: float | None = fld(required=True)
    server_cpu: list | None = fld(required=True)
    cpu_stat: list | None = fld()
    conn_msgs: list | None = fld()
    starved: int | None = fld(merge="sum")
    #: udp: the loop's datagram accounting (``sockbench.ext.udpgen``), None for a stream
    datagrams: dict | None = fld()
    #: how long after ``start_ns`` the process woke up to start its loop (what a shared start instant costs)
    start_late_ns: int | None = fld(merge="measured_max")
    #: TLS: the loop's ``tls`` dict (negotiated version, cipher, group; connect mode: handshakes, resumed), else None
    tls: dict | None = fld()

    @classmethod
    def from_json(cls, d, source="a load process"):
        r = cls(**d)
        if r.cpu_stat is not None:
            # JSON keys are strings: the CPU numbers again
            r = replace(r, cpu_stat=[{**e, "cpus": {int(k): v for k, v in e["cpus"].items()}} for e in r.cpu_stat])
        return r


def _with_counts(name, base, owner):
    """``base`` plus every field of ``owner`` declared with ``merge``, under the same name and declaration."""
    extra = [(f.name, f.type, field(default=None, metadata=f.metadata)) for f in counted(owner)]
    return make_dataclass(name, extra, bases=(base,), frozen=True,
                          namespace={"__doc__": base.__doc__, "__module__": __name__})


#: one load process's report: ``_ProcFields`` and the ``Client`` counters
ProcResult = _with_counts("ProcResult", _ProcFields, Client)


# --- a whole run: plan.json and meta.json -----------------------------------------------------------


def _tuple(v):
    return tuple(v)


@dataclass(frozen=True)
class RunPlan(Part):
    """The matrix a run was asked for (``plan.json``, and ``meta.json``'s ``plan``); the suite's ``Plan`` adds
    the rules that turn it into cells.  A plan from before the rounds rule has ``rounds``: every cell ran
    exactly that many."""

    _malformed = "a malformed plan"

    servers: tuple = fld(required=True, read=_tuple)
    sizes: tuple = fld((64, 1024, 16384), read=_tuple)
    conns: tuple = fld((1, 10, 100), read=_tuple)
    #: the open-loop sweep: percentages of each server's measured peak (empty: none)
    open_pcts: tuple = fld((25, 50, 75, 90), read=_tuple)
    open_size: int = fld(64)
    open_conns: int = fld(100)
    depth: int = fld(1)
    #: the protocol section: this closed-loop workload in each of these protocols (empty: none)
    protocols: tuple = fld(PROTOCOLS, read=_tuple)
    proto_size: int = fld(64)
    proto_conns: int = fld(100)
    proto_depth: int = fld(16)
    #: server -> the protocols it speaks (from the registry); a server not listed speaks them all
    speaks: dict = fld(factory=dict)
    #: the transports every cell runs over, in this order (``--transports``)
    transports: tuple = fld(("tcp",), read=_tuple)
    #: server -> the transports it serves (from the registry); a server not listed serves them all
    serves: dict = fld(factory=dict)
    #: rounds per cell: at least min_rounds; more until the interval is within ci, at most max_rounds
    min_rounds: int = fld(6)
    max_rounds: int = fld(30)
    #: the half-width of the 95% interval of a cell's median, as a fraction of it, that stops its rounds
    ci: float = fld(0.03)
    #: the same for an open-loop cell's p99, a tail that varies more from round to round than a mean rate
    #: (None: ``ci``, as every run before it had)
    ci_p99: float | None = fld(since=4)
    #: the most seconds one cell may spend on its rounds (its minimum rounds always run)
    cell_budget_s: float = fld(60.0)
    #: how many times a disturbed round is measured again, at most (then it is kept, flagged DISTURBED)
    remeasure: int = fld(0)
    #: the most seconds the suite's cells may take together (None: no limit): the passes stop at it
    run_budget_s: float | None = fld()
    #: the measured seconds of a closed-loop round
    duration_s: float = fld(0.3)
    warmup_s: float = fld(0.1)
    interval_s: float = fld(0.05)
    #: the scheduler hiccup the open-loop rounds are made long enough to absorb (0: open rounds last duration_s)
    hiccup_s: float = fld(0.0)
    procs: int = fld(1)
    server_cpus: tuple = fld((0,), read=_tuple)
    client_cpus: tuple = fld((1,), read=_tuple)
    quick: bool = fld(False)
    full: bool = fld(False)
    extra: dict = fld(factory=dict)
    #: the scaling dimension (``sockbench run --workers 1 2``): every server's cells once per worker count
    workers: tuple = fld((1,), read=_tuple)
    #: the seed of the passes' random order (``--seed``; None: drawn when the run starts, and recorded)
    seed: int | None = fld(since=4)
    #: ``--command`` servers: name -> their command (``servers.command.Command.to_json()``); their names are in servers
    commands: dict = fld(factory=dict, since=3)
    #: the interpreter dimension (``--python``): ``{"label", "python" (the executable that serves), "version", ...}``
    #: each; empty: sockbench's own interpreter, no dimension
    pythons: tuple = fld((), since=3, read=lambda v: tuple(dict(p) for p in v))
    #: the servers the interpreter dimension applies to (the built-in ones; a --command or a plugin runs once)
    python_servers: tuple = fld((), since=3, read=_tuple)
    #: the TLS dimension (``sockbench run --tls off on``): every stream cell plain (False) and/or over TLS (True)
    tls: tuple = fld((False,), since=3, read=lambda v: tuple(bool(x) for x in v))
    #: server -> whether it serves TLS here (from the registry); a server not listed serves it
    serves_tls: dict = fld(factory=dict, since=3)
    #: the TLS setting every TLS cell uses: ``version``, ``cipher``, and the server's ``cert`` and ``key``
    #: (``sockbench run`` makes a self-signed pair in the results folder, once)
    tls_setting: dict = fld(factory=lambda: {"version": "1.3", "cipher": None}, since=3)
    #: the TLS section: these closed-loop (connections, size) workloads, each plain and over TLS
    tls_workloads: tuple = fld(((100, 64), (10, 16384)), since=3, read=lambda v: tuple(tuple(w) for w in v))
    #: ... and handshakes: connect mode with this many connections at a time, plain (connections a second) and
    #: over TLS with each of these resumption settings (False: every handshake full, True: sessions resumed)
    handshake_conns: int = fld(10, since=3)
    handshake_resumption: tuple = fld((False, True), since=3, read=lambda v: tuple(bool(x) for x in v))
    #: the load loop of the plain raw stream cells (``sockbench run --engine``: ``epoll`` or ``uring``); frame,
    #: json, udp and TLS cells are loaded by epoll's, which alone speaks them (the suite's ``Plan.engine_for``)
    engine: str = fld("epoll", since=4)

    def ci_for(self, mode):
        """The interval target of a cell of ``mode``: ``ci_p99`` for the open loop's p99 when set, else ``ci``."""
        return self.ci_p99 if mode == "open" and self.ci_p99 is not None else self.ci

    @classmethod
    def from_json(cls, d, source="the plan"):
        if isinstance(d, dict) and "rounds" in d and "min_rounds" not in d:
            d = {**d, "min_rounds": int(d["rounds"]), "max_rounds": int(d["rounds"])}
        return super().from_json(d, source)


@dataclass(frozen=True)
class RunMeta(Part):
    """A results folder's ``meta.json``: the run's machine, commit, plan and how it ended."""

    schema: int = fld(1)
    kind: str = fld("sockbench-run")
    started_at: str | None = fld()
    #: running, complete, interrupted or failed
    status: str | None = fld()
    commit: str | None = fld()
    dirty: bool | None = fld()
    machine: Machine | None = _part(Machine)
    plan: RunPlan | None = _part(RunPlan)
    planned_cells: int | None = fld(omit=True)
    planned_runs: int | None = fld(omit=True)
    argv: list | None = fld(read=list)
    finished_at: str | None = fld(omit=True)
    elapsed_s: float | None = fld(omit=True)
    finished_runs: int | None = fld(omit=True)
    finished_rounds: int | None = fld(omit=True)
    pytest_exit: int | None = fld(omit=True)
    #: the signal that interrupted the run (SIGINT, SIGTERM)
    signal: str | None = fld(omit=True)
    #: the seed of the passes' random order (``random.Random(f"{seed}:{pass}")`` shuffles each pass's cells)
    seed: int | None = fld(omit=True, since=4)
    #: the kernel's DAMON monitors this run turned off for its length (``--pause-damon``), by number
    damon_paused: list | None = fld(omit=True, since=4, read=list)
    #: the server every ratio of the report is to (``--baseline``; None: the fastest at each workload)
    baseline: str | None = fld(omit=True, since=4)
    #: ``sockbench ab``: the two targets, ``{"A": {"text", "label", "describe", "revision"}, "B": ...}``
    targets: dict | None = fld(omit=True, since=4, read=dict)

    @classmethod
    def from_json(cls, d, source="meta.json"):
        try:
            return super().from_json(d, source)
        except SchemaError:
            # a plan this version cannot read leaves the rest of the run's description readable
            return super().from_json({k: v for k, v in d.items() if k != "plan"}, source)

    @classmethod
    def check_keys(cls, keys):
        """Refuse a key ``meta.json`` does not declare (a programming error: declare it here first)."""
        unknown = set(keys) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"meta.json has no field {', '.join(sorted(unknown))}; declare it in RunMeta")


# --- the suite's summaries (pytest-benchmark ``extra_info``) -------------------------------------


def _figures(latency):
    return latency.figures()


@dataclass(frozen=True)
class RoundSummary(Part):
    """One round's figures, as the suite lists them per cell in ``extra_info["per_round"]``.

    ``interference`` and ``fairness`` are the round's own (None where not measured); ``disturbed`` and
    ``starved`` are their verdicts.
    """

    msgs_per_s: float | None = fld(nodefault=True)
    bytes_per_s: float | None = fld(nodefault=True)
    target_rate: float | None = fld(nodefault=True)
    achieved_rate: float | None = fld(nodefault=True)
    latency_us: Latency = fld(required=True, write=_figures)
    server_us_per_msg: CpuPerMsg = fld(required=True)
    server_rss_peak_bytes: int | None = fld(nodefault=True)
    client_cpu_util: float | None = fld(nodefault=True)
    client_busy_util: float | None = fld(nodefault=True)
    errors: Errors = fld(required=True)
    valid: bool = fld(required=True)
    client_bound: bool = fld(required=True)
    invalid_reason: str | None = fld(nodefault=True)
    started_at: str | None = fld(nodefault=True)
    interference: Interference | None = fld()
    fairness: Fairness | None = fld()

    @classmethod
    def of(cls, r):
        """The summary of one ``LoadResult``."""
        return cls(
            **{k: getattr(r.throughput, k) for k in ("msgs_per_s", "bytes_per_s", "target_rate", "achieved_rate")},
            latency_us=r.latency_us, server_us_per_msg=r.server_proc.us_per_msg,
            server_rss_peak_bytes=r.server_proc.rss_peak_bytes, client_cpu_util=r.client.cpu_util,
            client_busy_util=r.client.busy_util, errors=r.errors, valid=r.valid, client_bound=r.client_bound,
            invalid_reason=r.invalid_reason, started_at=r.started_at, interference=r.interference,
            fairness=r.fairness,
        )

    @property
    def disturbed(self):
        return self.interference is not None and self.interference.disturbed

    @property
    def starved(self):
        return self.fairness.starved if self.fairness is not None else 0

    def to_json(self):
        return {**super().to_json(), "disturbed": self.disturbed, "starved": self.starved}


@dataclass(frozen=True)
class CellSummary(Part):
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

    msgs_per_s_median: float = fld(required=True)
    msgs_per_s_stdev: float = fld(required=True)
    spread: float = fld(required=True)
    unstable: bool = fld(required=True)
    mb_per_s_median: float = fld(required=True)
    latency_us: MergedLatency = fld(required=True, write=_figures)
    server_cpu_us_per_msg: float = fld(required=True)
    server_user_us_per_msg: float = fld(required=True)
    server_rss_peak_bytes: float = fld(required=True)
    client_cpu_util: float = fld(required=True)
    client_load: float = fld(required=True)
    errors_total: int = fld(required=True)
    errors_by_kind: dict = fld(required=True)
    valid: bool = fld(required=True)
    client_bound: bool = fld(required=True)
    invalid_reasons: list = fld(required=True)
    flags: list = fld(required=True)
    rounds: int = fld(0)
    remeasured: int = fld(0)
    figure: str = fld("msgs/s")
    figure_median: float | None = fld()
    figure_ci: tuple | None = fld()
    figure_ci_confidence: float | None = fld()
    disturbed_rounds: int = fld(0)
    starved: int = fld(0)
    #: the spread that decides ``unstable``: the rounds' median absolute deviation x 1.4826 over the median
    robust_spread: float = fld(0.0)
    #: rounds whose msgs/s lay more than ``thresholds.OUTLIER_SHARE`` from the median
    outlier_rounds: int = fld(0)
    #: a udp cell: its rounds' datagram accounting added up (loss, duplicates, out-of-order); None for a stream
    datagrams: Datagrams | None = fld(omit=True)

    def to_json(self):
        return {**super().to_json(), "latency_source": self.latency_us.source}
