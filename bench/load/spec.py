"""What one load run is asked to do (``LoadSpec``), and every check it must pass before anything starts.

Why it is built this way: ``sockbench load``, the suite and the calibration
scripts all describe a run the same way, and a bad description must fail in
one line before a server or a load process is started, never half-way
through a run.  So the spec is a frozen dataclass whose ``validate()`` is the
one place where the limits of a run (modes, protocols, sizes, CPUs, the
in-flight ceiling) are checked.
"""

import importlib.util
import math
import os
from dataclasses import dataclass, field

from sockbench.bench.load.datagram import check_spec as check_datagram_spec
from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS, Endpoint
from sockbench.errors import UsageError
from sockbench.servers import iouring, registry
# the wire protocols the load speaks: the same names, and limit, as ``sockbench serve --protocol``
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE, PROTOCOLS
from sockbench.servers.tls import BUILD_HINT as TLS_BUILD_HINT

__all__ = ["LoadSpec", "MODES", "ENGINES", "PROTOCOLS", "MAX_FRAMED_SIZE", "MAX_DURATION_S", "MAX_IN_FLIGHT",
           "check_engine"]

MODES = ("closed", "open", "connect")
#: the load loops: ``epoll`` (``sockbench.ext.loadgen``, every protocol and transport) and ``uring``
#: (``sockbench.ext.uringgen``: io_uring, raw over tcp, tcp6 and unix)
ENGINES = ("epoll", "uring")
#: frame/json payloads above this are over the servers' default ``--max-message`` (16 MiB)
MAX_FRAMED_SIZE = DEFAULT_MAX_MESSAGE
MAX_DURATION_S = 3600.0
MAX_IN_FLIGHT = 10_000_000


@dataclass(frozen=True)
class LoadSpec:
    """One load run.  Exactly one of ``server`` (a registry name) and ``target`` (an ``Endpoint``).

    A ``(host, port)`` target is read as a tcp ``Endpoint`` (tcp6 for an IPv6
    literal).  With a target, ``transport`` is the target's: left at its
    default it follows the target, and another one is a usage error.
    """

    server: str | None = None
    target: Endpoint | None = None
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
    transport: str = "tcp"  # tcp, tcp6, unix or udp (sockbench/endpoints.py)
    workers: int = 1  # server processes (``sockbench serve --workers``); 1: the plain server
    #: TLS (``--tls``): a ``servers.tls.TlsConfig`` the load speaks and a started server serves, or None.  Its
    #: ``cert``/``key`` are the server's; None there: the harness makes a pair (``servers.tls.ensure_certificate``)
    tls: object = None
    #: sample the run's CPUs for BUSY_SAMPLE_S before the load and name what is busy there; the suite asks
    #: for it on a cell's first round only, since every window's foreign CPU time is measured anyway
    #: (``interference``), and the sample would cost a tenth of a second in every round
    name_busy: bool = True
    #: a ``--command`` server to start instead of a registered one (``sockbench.servers.command.Command``)
    command: object = None
    #: the interpreter executable that runs a registered server's ``sockbench serve`` (None: this one)
    server_python: str | None = None
    #: that interpreter's label in results and cells (``--python``: "3.12"); None: sockbench's own
    python: str | None = None
    #: the load loop (``ENGINES``): what measured the run is recorded in its result (``client.engine``)
    engine: str = "epoll"

    @property
    def started(self):
        """True when the harness starts the server (a registered name or a command), so its CPU is measured."""
        return self.server is not None or self.command is not None

    @property
    def label(self):
        """The server's name in results: a registered name, a command's name, or the target's address."""
        if self.server is not None:
            return self.server
        if self.command is not None:
            return self.command.name
        return self.target.format() if isinstance(self.target, Endpoint) else str(self.target)

    def __post_init__(self):
        target = self.target
        if isinstance(target, (tuple, list)) and len(target) == 2 and not isinstance(target, Endpoint):
            host, port = target
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UsageError(f"bad target port {port!r}; use 1..65535")
            target = Endpoint("tcp", host, port)
            object.__setattr__(self, "target", target)
        if isinstance(target, Endpoint) and self.transport == "tcp":
            object.__setattr__(self, "transport", target.transport)

    def validate(self, started=False):
        """Raise a one-line ``UsageError`` for anything that cannot run.

        ``started``: the server was started by the run's caller (``run_load(server=...)``), which checked its
        name, protocol and transport against the registry of the environment it came from.
        """
        if sum(x is not None for x in (self.server, self.target, self.command)) != 1:
            raise UsageError("give either a server name, --command 'CMD ARGS' or --target HOST:PORT (exactly one)")
        if self.transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {self.transport!r}; use one of {', '.join(TRANSPORTS)}")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if self.server is not None and started:
            pass  # its keeper checked it (see the docstring)
        elif self.server is not None:
            server = registry.get(self.server)
            ok, why = server.availability()
            if not ok:
                raise UsageError(f"server {self.server!r}: {why}")
            if self.protocol not in server.protocols:
                raise UsageError(
                    f"server {self.server!r} does not speak --protocol {self.protocol}; "
                    f"it speaks {', '.join(server.protocols)}"
                )
            server.check_transport(self.transport)
        elif self.command is not None:
            self.command.check_transport(self.transport)
            if self.workers != 1:
                raise UsageError("--workers applies to sockbench's own servers; a --command starts its own processes")
        else:
            if not isinstance(self.target, Endpoint):
                raise UsageError(f"target must be an Endpoint or (host, port), not {self.target!r}")
            if self.target.transport != self.transport:
                raise UsageError(f"the target {self.target} is {self.target.transport} but the transport is {self.transport}")
            port = self.target.port
            if self.target.transport != "unix" and (not isinstance(port, int) or not 0 < port < 65536):
                raise UsageError(f"bad target port {port!r}; use 1..65535")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.transport == "udp":
            check_datagram_spec(self)  # raw only, no connect mode, a size that fits a datagram and its header
        check_engine(self.engine, self.protocol, self.transport, tls=self.tls is not None)
        if self.server_python is not None and self.server is None:
            raise UsageError("--python applies to a registered server that the load starts")
        if self.tls is not None:
            self._check_tls()
        if self.workers != 1 and self.server is None and self.command is None:
            raise UsageError("--workers applies to a server NAME that the load starts, not to --target")
        for name in ("conns", "size", "depth", "procs", "workers"):
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

    def _check_tls(self):
        """A one-line ``UsageError`` unless this load can speak TLS here, to a server that serves it."""
        if self.transport not in STREAM_TRANSPORTS:
            raise UsageError(f"--tls applies to {', '.join(STREAM_TRANSPORTS)}, not --transport {self.transport}")
        if self.protocol != "raw":
            raise UsageError(f"the load speaks raw over TLS, not --protocol {self.protocol} (every Python server "
                             f"serves frame and json over TLS, to clients of your own)")
        if importlib.util.find_spec("sockbench.ext.tlsgen") is None:
            raise UsageError(f"the load over TLS is not built here: {TLS_BUILD_HINT}")
        if self.server is not None:
            registry.get(self.server).check_tls(self.protocol, self.transport)
        self.tls.check()

def check_engine(engine, protocol="raw", transport="tcp", tls=False):
    """A one-line ``UsageError`` (exit 2) unless load engine ``engine`` can run ``protocol`` over ``transport``
    (over TLS when ``tls``) here.

    ``uring`` speaks raw over the stream transports, in plaintext (TLS is
    the epoll loop's, ``ext/tlsgen.pyx``), and needs io_uring: where the
    kernel refuses it (``sockbench.servers.iouring`` words why), that is the line.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown --engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "epoll":
        return
    if protocol != "raw":
        raise UsageError(f"--engine uring speaks --protocol raw only; use --engine epoll for {protocol}")
    if transport == "udp":
        raise UsageError("--engine uring loads the stream transports (tcp, tcp6, unix); use --engine epoll for udp")
    if tls:
        raise UsageError("--engine uring does not speak TLS; leave --engine out (epoll, the default) to load over --tls")
    ok, why, _ = iouring.kernel_support()
    if not ok:
        raise UsageError(f"--engine uring: {why}")
    if importlib.util.find_spec("sockbench.ext.uringgen") is None:
        raise UsageError("--engine uring: not built (build it with: pip install -e .  (needs a C compiler and Cython))")
