"""The workload matrix of a benchmark run: which cells, in which order, how many rounds, for how long.

Why it is built this way: ``sockbench run`` (the parent, which draws the
progress) and the pytest-benchmark suite (the child, which runs the load) must
agree on the same cells and rules.  The parent writes one ``Plan`` to
``plan.json`` and hands its path through ``SOCKBENCH_PLAN``; both call
``Plan.cells()``, so "done/total" counts what the suite really runs.

Rules:

* Cells go server by server: the closed-loop grid, then the open-loop sweep
  at fractions of that server's closed-loop peak (an open cell joins the
  passes once the peak cell has ``PEAK_ROUNDS`` rounds), then the protocol
  section (one closed workload in each protocol the server ``speaks``, raw
  included, reusing a grid cell when it is the same).  Transports (``serves``)
  and TLS (``serves_tls``; plus the TLS section when on) multiply the matrix;
  a server lacking one is skipped and ``notes()`` says so.
* Rounds: until the 95% interval of the cell's median lies within ``ci``
  (``ci_p99`` for an open-loop p99: a tail moves more from round to round than
  a rate), between ``min_rounds`` (6 by default: the fewest that give a 95%
  interval of a median) and ``max_rounds``, within ``cell_budget_s`` and the
  run's ``run_budget_s``; an open-loop cell whose p99 interval ``max_rounds``
  could not narrow to ``ci_p99`` leaves at once (``session.out_of_reach``).
* A round is long enough that one scheduler hiccup (``HICCUP_S``, one tick
  of a CONFIG_HZ=250 kernel) cannot make its figure: closed loop,
  ``HICCUP_S / duration_s`` stays under half of ``ci``; open loop at load p,
  ``HICCUP_S / (1 - p)`` of the window stays under ``HICCUP_SHARE`` of its
  messages (``round_duration``).
* ``default_plan`` is what can be measured that way in 5 minutes (64 B x 100
  connections closed, 50% open, the protocol section); ``full_plan`` is the
  whole grid without a run budget; ``quick_plan`` is the CI smoke matrix (3
  short rounds, no interval).
* A cell is the schema's ``Cell``; its id names mode, size, connections, then
  protocol, transport and TLS (``closed-64B-c100-d16-json``, ``...-unix``, ``...-tls``).
"""

import json
import math
from dataclasses import dataclass

from sockbench.bench.schema import Cell, RunPlan, SchemaError
from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS
from sockbench.errors import UsageError
from sockbench.servers.protocols import PROTOCOLS
from sockbench.thresholds import HICCUP_S
from sockbench.units import format_size, parse_size

__all__ = [
    "Cell",
    "Plan",
    "default_plan",
    "full_plan",
    "quick_plan",
    "parse_size",
    "format_size",
    "HICCUP_S",
    "HICCUP_SHARE",
    "ROUND_OVERHEAD_S",
    "MAX_OPEN_DURATION_S",
    "REMEASURE_DISTURBED",
    "PEAK_ROUNDS",
]

#: a disturbed round is measured again at most this many times; then it is kept, flagged DISTURBED
REMEASURE_DISTURBED = 2
#: an open-loop cell joins the passes once its server's closed-loop peak cell has this many valid rounds (or has
#: left): their median is the peak it is offered a share of (it sets a rate, not a figure to quote); two, so that
#: an open-loop cell, whose rounds last longest, gets its pass from the third on (with three, two default runs
#: left every open-loop cell at 5 rounds, too few for an interval)
PEAK_ROUNDS = 2
#: the share of an open-loop round's messages one hiccup may delay: under the 1% beyond the p99
HICCUP_SHARE = 0.008
#: the open-loop rule's longest round (a load near 100% of the peak would ask for minutes)
MAX_OPEN_DURATION_S = 10.0
#: what a round costs besides its warmup and window: starting and stopping its server and load
#: processes (the load processes start while the server does; what is busy on the CPUs is named at a cell's
#: first round only): measured 0.3 s on the 2-core machine (0.13 s to the window, 0.17 s from its end)
ROUND_OVERHEAD_S = 0.3


@dataclass(frozen=True)
class Plan(RunPlan):
    """Everything the suite needs to know to run (and the report to describe) one run: the fields are the
    schema's ``RunPlan`` (``plan.json``), the rules that turn them into cells are here."""

    remeasure: int = REMEASURE_DISTURBED
    hiccup_s: float = HICCUP_S

    def __post_init__(self):
        if not self.servers:
            raise UsageError("no servers to run")
        if self.min_rounds < 1:
            raise UsageError("--min-rounds must be at least 1")
        if self.max_rounds < self.min_rounds:
            raise UsageError(f"--max-rounds ({self.max_rounds}) is below --min-rounds ({self.min_rounds})")
        if not 0 < self.ci < 1:
            raise UsageError(f"--ci must be above 0% and below 100%, not {self.ci:.1%}")
        if self.ci_p99 is not None and not 0 < self.ci_p99 < 1:
            raise UsageError(f"--ci-p99 must be above 0% and below 100%, not {self.ci_p99:.1%}")
        if self.remeasure < 0:
            raise UsageError("the re-measure count cannot be negative")
        if not self.cell_budget_s > 0:
            raise UsageError("--cell-budget must be positive")
        if self.run_budget_s is not None and not self.run_budget_s > 0:
            raise UsageError("the run budget must be positive")
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
        for w in self.workers:
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                raise UsageError(f"bad worker count {w!r}; --workers takes whole numbers of 1 or more")
        if not self.workers or len(set(self.workers)) != len(self.workers):
            raise UsageError(f"--workers names a count twice or none: {' '.join(map(str, self.workers))}")
        if len(set(self.protocols)) != len(self.protocols):
            raise UsageError(f"--protocols names a protocol twice: {' '.join(self.protocols)}")
        if not self.transports:
            raise UsageError(f"--transports needs at least one of {' '.join(TRANSPORTS)}")
        for t in self.transports:
            if t not in TRANSPORTS:
                raise UsageError(f"unknown transport {t!r}; use some of {' '.join(TRANSPORTS)}")
        if len(set(self.transports)) != len(self.transports):
            raise UsageError(f"--transports names a transport twice: {' '.join(self.transports)}")
        if not self.tls or len(set(self.tls)) != len(self.tls) or not all(isinstance(t, bool) for t in self.tls):
            raise UsageError("--tls takes off, on, or both (off on), each once")
        if not self.handshake_resumption or len(set(self.handshake_resumption)) != len(self.handshake_resumption):
            raise UsageError("--tls-resumption takes on, off, or both, each once")
        labels = [p["label"] for p in self.pythons]
        if len(set(labels)) != len(labels):
            raise UsageError(f"--python names one interpreter twice: {' '.join(labels)}")

    def server_pythons(self, server):
        """The interpreter labels ``server``'s cells run under ([""]: sockbench's own, or none of its choosing)."""
        if self.pythons and server in self.python_servers:
            return [p["label"] for p in self.pythons]
        return [""]

    def python_of(self, label):
        """The executable that serves under interpreter ``label`` (None: this one)."""
        return next((p["python"] for p in self.pythons if p["label"] == label), None) if label else None

    @property
    def adaptive(self):
        """True when a cell's rounds depend on its interval (``min_rounds < max_rounds``)."""
        return self.min_rounds < self.max_rounds

    def server_protocols(self, server, transport="tcp"):
        """The protocols of the plan's protocol section that ``server`` speaks ([] if no framed one).

        None over udp: a datagram is one message already, and the servers speak raw only there.
        """
        if transport == "udp":
            return []
        spoken = self.speaks.get(server)
        out = [p for p in self.protocols if spoken is None or p in spoken]
        return out if any(p != "raw" for p in out) else []

    def engine_for(self, cell):
        """The load loop that measures ``cell``: the plan's engine where it applies (raw in plaintext over a stream),
        else epoll's."""
        return self.engine if cell.protocol == "raw" and cell.transport != "udp" and not cell.tls else "epoll"

    def server_transports(self, server):
        """The plan's transports that ``server`` serves, in the plan's order."""
        served = self.serves.get(server)
        return [t for t in self.transports if served is None or t in served]

    def server_tls(self, server, transport):
        """The plan's TLS values that ``server`` runs over ``transport``: no TLS over udp, nor for a server without it."""
        serves = self.serves_tls.get(server, True) and transport in STREAM_TRANSPORTS
        return [t for t in self.tls if not t or serves]

    def notes(self):
        """One line per server and transport the plan skips because the server does not serve it."""
        out = [f"{server} has no {t} form: its {t} cells are skipped" for server in self.servers
               for t in self.transports if t not in self.server_transports(server)]
        if True in self.tls:
            out += [f"{server} serves no TLS here: its TLS cells are skipped" for server in self.servers
                    if not self.serves_tls.get(server, True)]
        return out

    def cells(self):
        out = []
        for server in self.servers:
            for t in self.server_transports(server):
                # a server's cells at each interpreter and worker count, its open loop after its own peak; and over
                # TLS, with an open loop of its TLS peak
                for py in self.server_pythons(server):
                    for w in self.workers:
                        for tls in self.server_tls(server, t):
                            for size in self.sizes:
                                for conns in self.conns:
                                    out.append(Cell(server, "closed", size, conns, self.depth, transport=t, workers=w,
                                                    python=py, tls=tls))
                            for pct in self.open_pcts:
                                out.append(Cell(server, "open", self.open_size, self.open_conns, 1, pct, transport=t,
                                                workers=w, python=py, tls=tls))
                            if tls:
                                continue  # the load speaks raw over TLS: no protocol section there
                            ids = {c.id for c in out}
                            for proto in self.server_protocols(server, t):
                                c = Cell(server, "closed", self.proto_size, self.proto_conns, self.proto_depth,
                                         protocol=proto, transport=t, workers=w, python=py)
                                if c.id not in ids:
                                    out.append(c)
                        self._tls_section(out, server, t, w, py)
        return out

    def _tls_section(self, out, server, transport, workers, python=""):
        """The TLS section's cells of one server, transport, worker count and interpreter, when the plan runs TLS:
        each of ``tls_workloads`` plain and over TLS, and connect mode plain and over TLS (full, resumed); none twice."""
        if True not in self.server_tls(server, transport):
            return
        ids = {c.id for c in out}
        dims = dict(transport=transport, workers=workers, python=python)
        cells = [Cell(server, "closed", size, conns, 1, tls=tls, **dims)
                 for conns, size in self.tls_workloads for tls in (False, True)]
        cells.append(Cell(server, "connect", 64, self.handshake_conns, **dims))
        cells += [Cell(server, "connect", 64, self.handshake_conns, tls=True, resumed=r, **dims)
                  for r in self.handshake_resumption]
        for c in cells:
            if c.id not in ids:
                out.append(c)
                ids.add(c.id)

    def calibrations(self):
        """Servers whose open-loop sweep needs a calibration run (no closed cell at ``open_size``), once per transport."""
        if not self.open_pcts or self.open_size in self.sizes:
            return []
        return [s for s in self.servers for t in self.server_transports(s) for _ in self.workers
                for _ in self.server_pythons(s) for _ in self.server_tls(s, t)]

    # --- how long things take -----------------------------------------------------------
    def round_duration(self, cell):
        """The measured seconds of one round of ``cell`` (the open-loop rule is in the module docstring)."""
        if cell.mode != "open" or not self.hiccup_s:
            return self.duration_s
        idle = 1.0 - cell.load_pct / 100.0
        need = self.hiccup_s / (idle * HICCUP_SHARE) if idle > 0 else math.inf
        return round(max(self.duration_s, min(MAX_OPEN_DURATION_S, need)), 2)

    def round_estimate_s(self, cell):
        """A planning estimate of one round of ``cell``: the load, its warmup, and its start and stop."""
        return ROUND_OVERHEAD_S + self.warmup_s + self.round_duration(cell)

    def cell_estimate_s(self, cell, rounds=None):
        """A planning estimate of ``rounds`` rounds of ``cell`` (default: its minimum)."""
        return (self.min_rounds if rounds is None else rounds) * self.round_estimate_s(cell)

    def min_estimate_s(self):
        """The whole suite at its minimum rounds, calibrations included."""
        cal = Cell("calibration", "closed", self.open_size, self.open_conns)
        return (sum(self.cell_estimate_s(c) for c in self.cells())
                + len(self.calibrations()) * self.round_estimate_s(cal))

    def max_estimate_s(self):
        """The longest the suite may take: every cell at its budget (its last round may end past it), or at its
        most rounds, each measured again as often as allowed, when that is shorter; never less than the minimum."""
        worst = 0.0
        for c in self.cells():
            most = self.cell_estimate_s(c, self.max_rounds * (1 + self.remeasure))
            worst += max(self.cell_estimate_s(c), min(self.cell_budget_s + self.round_estimate_s(c), most))
        if self.run_budget_s:
            worst = min(worst, self.run_budget_s)
        return max(worst, self.min_estimate_s())

    def to_dict(self):
        return self.to_json()

    @classmethod
    def from_dict(cls, d):
        return cls.from_json(d)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                return cls.from_json(json.load(f), path)
        except (OSError, ValueError, TypeError, SchemaError) as e:
            raise UsageError(f"cannot read the run plan {path}: {e}") from None


#: the interval target of an open-loop cell's p99 in the default and full runs (``RunPlan.ci_p99``)
CI_P99 = 0.10


def default_plan(servers, **overrides):
    """The 5-minute matrix: 64 B x 100 connections closed, open loop at 50%, frame and json at that workload.

    ``run_budget_s`` 270 s: the suite's share of 5 minutes (the suite starts in ~2 s, the report takes ~3 s; the
    rest is a margin for the last round of a cell overrunning its estimate).
    """
    kw = dict(
        sizes=(64,),
        conns=(100,),
        open_pcts=(50,),
        open_conns=100,
        proto_size=64,
        proto_conns=100,
        proto_depth=1,
        run_budget_s=270.0,
        cell_budget_s=30.0,
        ci_p99=CI_P99,
    )
    kw.update(overrides)
    return Plan(servers=tuple(servers), **kw)


def full_plan(servers, **overrides):
    """The full grid: 3 sizes x 3 connection counts closed, 4 open-loop loads, 3 protocols at 100 x 64 B x 16.

    The same rounds rule as the default, with no run budget: it takes well over 5 minutes.
    """
    kw = dict(full=True, ci_p99=CI_P99)
    kw.update(overrides)
    return Plan(servers=tuple(servers), **kw)


def quick_plan(servers, **overrides):
    """The CI smoke matrix: one closed cell and one open-loop load, exactly 3 short rounds; no protocol section.

    Sized to finish within a minute on a busy 2-core machine: one open-loop
    load (75%), since each run pays its server's and load's start and stop.
    ``--quick --protocols json`` adds one json cell sharing the closed cell's
    workload (64 B, 10 connections, depth 1), whose raw cell is its baseline.
    The rounds are fixed (3 of 0.2 s, ``hiccup_s`` 0): the figures prove the
    pipeline and are not for quoting.  A run budget of 40 s bounds the rounds
    measured again on a busy machine.
    """
    kw = dict(
        sizes=(64,),
        conns=(10,),
        open_pcts=(75,),
        open_conns=10,
        protocols=(),
        proto_conns=10,
        proto_depth=1,
        min_rounds=3,
        max_rounds=3,
        duration_s=0.2,
        warmup_s=0.05,
        interval_s=0.025,
        hiccup_s=0.0,
        run_budget_s=40.0,
        quick=True,
    )
    kw.update(overrides)
    return Plan(servers=tuple(servers), **kw)
