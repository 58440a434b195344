"""The workload matrix of a benchmark run: which cells, in which order, for how long.

Why it is built this way: ``sockbench run`` (the parent, which draws the
progress display) and the pytest-benchmark suite (the child, which runs the
load) must agree on exactly the same list of cells.  The parent writes one
``Plan`` to ``plan.json`` in the results folder and hands its path to the
suite through ``SOCKBENCH_PLAN``; both sides call ``Plan.cells()`` on it, so
the count behind "done/total" is the count the suite really runs.

Cells run server by server: first the closed-loop grid (sizes x connections),
then the open-loop sweep at fractions of the peak that the same server has
just reached in its closed-loop cells (``peak_size``), so no separate
calibration run is needed unless those cells were filtered out; last the
protocol section: one closed-loop workload (by default 100 connections x 64 B
x 16 in flight, issue 6's) in every protocol the plan names and the server
speaks (``speaks``, from the registry), ``raw`` included, so the report can
subtract the raw cost from the framed ones measured in the same run.  A
protocol cell whose workload is already in the grid (``--quick``: 64 B, 10
connections, depth 1) reuses the grid's cell instead of running it twice.
A server that speaks no framed protocol gets no protocol section.

A cell is a ``Cell`` of the result schema (``sockbench.bench.schema``): the
report groups results by it as well.  A raw cell's id names its mode, size
and connections (``closed-64B-c100``); a framed one ends in its protocol
(``closed-64B-c100-d16-json``).
"""

import json
from dataclasses import asdict, dataclass, field, fields

from sockbench.bench.schema import Cell
from sockbench.errors import UsageError
from sockbench.servers.protocols import PROTOCOLS
from sockbench.units import format_size, parse_size

__all__ = [
    "Cell",
    "Plan",
    "default_plan",
    "quick_plan",
    "parse_size",
    "format_size",
]


@dataclass(frozen=True)
class Plan:
    """Everything the suite needs to know to run (and the report to describe) one run."""

    servers: tuple
    sizes: tuple = (64, 1024, 16384)
    conns: tuple = (1, 10, 100)
    #: the open-loop sweep: percentages of each server's measured peak (empty: none)
    open_pcts: tuple = (25, 50, 75, 90)
    open_size: int = 64
    open_conns: int = 100
    depth: int = 1
    #: the protocol section: this closed-loop workload in each of these protocols (empty: none)
    protocols: tuple = ("raw", "frame", "json")
    proto_size: int = 64
    proto_conns: int = 100
    proto_depth: int = 16
    #: server -> the protocols it speaks (from the registry); a server not listed speaks them all
    speaks: dict = field(default_factory=dict)
    rounds: int = 3
    #: short rounds: 7 servers x 13 cells + 6 x 3 protocol cells, x 3 rounds, must fit in
    #: 5 minutes on 2 cores, and each run also pays ~0.5 s to start and stop its server and
    #: load processes (0.3 s before the protocol section was added)
    duration_s: float = 0.2
    warmup_s: float = 0.1
    interval_s: float = 0.05
    procs: int = 1
    server_cpus: tuple = (0,)
    client_cpus: tuple = (1,)
    quick: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.servers:
            raise UsageError("no servers to run")
        if self.rounds < 1:
            raise UsageError("--rounds must be at least 1")
        if self.duration_s <= 0:
            raise UsageError("--duration must be positive")
        if self.warmup_s < 0:
            raise UsageError("--warmup cannot be negative")
        for c in self.conns:
            if c < 1:
                raise UsageError(f"bad connection count {c}; use 1 or more")
        for p in self.open_pcts:
            if not 0 < p <= 100:
                raise UsageError(f"bad open-loop load {p}%; use percentages in 1..100")
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise UsageError(f"unknown protocol {p!r}; use some of {' '.join(PROTOCOLS)}")
        if len(set(self.protocols)) != len(self.protocols):
            raise UsageError(f"--protocols names a protocol twice: {' '.join(self.protocols)}")

    def server_protocols(self, server):
        """The protocols of the plan's protocol section that ``server`` speaks ([] if no framed one)."""
        spoken = self.speaks.get(server)
        out = [p for p in self.protocols if spoken is None or p in spoken]
        return out if any(p != "raw" for p in out) else []

    def cells(self):
        out = []
        for server in self.servers:
            for size in self.sizes:
                for conns in self.conns:
                    out.append(Cell(server, "closed", size, conns, self.depth))
            for pct in self.open_pcts:
                out.append(Cell(server, "open", self.open_size, self.open_conns, 1, pct))
            ids = {c.id for c in out}
            for proto in self.server_protocols(server):
                c = Cell(server, "closed", self.proto_size, self.proto_conns, self.proto_depth, protocol=proto)
                if c.id not in ids:
                    out.append(c)
        return out

    def calibrations(self):
        """Servers whose open-loop sweep needs a calibration run (no closed cell at ``open_size``)."""
        if not self.open_pcts or self.open_size in self.sizes:
            return []
        return list(self.servers)

    def total_runs(self):
        """Every load run the suite will make: the rounds of every cell, plus calibrations."""
        return len(self.cells()) * self.rounds + len(self.calibrations())

    def seconds_per_run(self, overhead_s=0.5):
        """A planning estimate: the load itself plus server start/stop."""
        return self.duration_s + self.warmup_s + overhead_s

    def to_dict(self):
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"cannot read the run plan {path}: {e}") from None


def default_plan(servers, **overrides):
    """The full matrix: 3 sizes x 3 connection counts closed, 4 open-loop loads, 3 protocols at 100 x 64 B x 16."""
    return Plan(servers=tuple(servers), **overrides)


def quick_plan(servers, **overrides):
    """The CI smoke matrix: one closed cell and one open-loop load, short runs, 3 rounds; no protocol section.

    Measured on the 2-core machine under the others' load (load average
    4-12): with two open-loop loads (50, 90%) the 63 runs plus the report took
    64-66 s, over the 60 s budget (each run pays ~0.6 s to start and stop its
    server and load processes), so the sweep is one load, 75%; one json cell
    per server (81 runs) took 64 s as well.  ``--quick --protocols json`` adds
    that json cell (the end-to-end test does); the protocol settings here make
    it share the closed cell's workload (64 B, 10 connections, depth 1), whose
    raw cell is its baseline.
    """
    kw = dict(
        sizes=(64,),
        conns=(10,),
        open_pcts=(75,),
        open_conns=10,
        protocols=(),
        proto_conns=10,
        proto_depth=1,
        duration_s=0.2,
        warmup_s=0.05,
        interval_s=0.025,
        quick=True,
    )
    kw.update(overrides)
    return Plan(servers=tuple(servers), **kw)
