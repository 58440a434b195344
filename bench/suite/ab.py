"""``sockbench ab A B``: two targets measured side by side, round by round, and a verdict on B against A.

Why it is built this way: ``compare`` judges two runs made at different
times, so it must widen its intervals by the machine's drift until only large
changes show.  ``ab`` measures both in one session, as asv's ``continuous``
does: each pass runs one round of A and one of B at every workload, in a
random order drawn from the seed (``meta.json``; orders in
``progress.jsonl``).  The two rounds of a workload in one pass are a pair,
and B/A is the Hodges-Lehmann estimate of the pairs' log ratios with its
Wilcoxon signed-rank interval (``report.ratios``): the machine's drift weighs
on both and leaves the ratio alone.

Rules:

* The verdict is ``compare``'s rule on that interval against ``--fail-above``.
  Passes go on until every workload is decided at 99% (stricter, so that
  looking after each pass does not spend the stated 95%), between
  ``min_pairs`` and ``max_pairs``, within ``budget_s``; the verdict is then
  given at 95% over every pair.
* A disturbed round is measured again as in a run; a pair still disturbed is
  left out and counted.  An invalid round makes its workload ``invalid``.
* Exit 1 when any workload is slower or invalid, else 0; bad input is one
  line, exit 2, before anything is measured.
* A target is a registered name or a ``--command`` (started pinned, kept,
  with its CPU), a running ``HOST:PORT``/``unix:PATH`` (no CPU figures), or
  ``--rev BASE HEAD NAME`` (``servers.environments``: built once per commit
  and cached); the load generator is always this checkout's.  Both must speak the same
  transport and protocol (the registry, or a valid probe load).
* The folder is a run's (``raw/`` with cells ``A-<target>``/``B-<target>``,
  ``progress.jsonl``, ``meta.json`` with ``kind`` ``sockbench-ab`` and A as
  ``baseline``) plus ``ab.json``, the verdicts.
"""

import dataclasses
import json
import math
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass

from sockbench.bench.load.harness import run_load
from sockbench.bench.load.pools import LoadPool, ServerPool
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.load.unseen import Canary, with_client_slowdown
from sockbench.bench.report.compare import UNDECIDED, verdict
from sockbench.bench.report.ratios import ratio
from sockbench.bench.report.stats import CONFIDENCE, CellStats
from sockbench.bench.report.store import RAW_DIR, discarded_name, raw_name
from sockbench.bench.schema import Cell, CellContext, Machine, RunMeta, RunPlan
from sockbench.bench.suite.plan import REMEASURE_DISTURBED
from sockbench.children import signal_of
from sockbench.bench.suite.progress import PassStarted, RoundDone, RoundStarted
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.timestamps import folder_stamp, iso_utc
from sockbench.units import format_size

__all__ = ["AbPlan", "AbSide", "AbRun", "AbRow", "check_targets", "verdict_rows", "prepare_out", "describe",
           "DEFAULT_SIZES", "DEFAULT_CONNS", "STOP_LEVEL", "AB_FILE", "INVALID"]

#: the default workloads: closed loop, raw, depth 1, each size at each connection count (server-bound ones,
#: where a server's own cost per message decides its msgs/s)
DEFAULT_SIZES = (64, 1024)
DEFAULT_CONNS = (100,)
#: the level at which every workload must be decided for the rounds to stop before ``max_pairs``
STOP_LEVEL = 0.99
AB_FILE = "ab.json"
INVALID = "invalid"
#: how long the probe load of an endpoint lasts
PROBE_S = 0.05


@dataclass(frozen=True)
class AbPlan:
    """What ``ab`` measures and when it stops."""

    sizes: tuple = DEFAULT_SIZES
    conns: tuple = DEFAULT_CONNS
    depth: int = 1
    protocol: str = "raw"
    transport: str = "tcp"
    duration_s: float = 0.3
    warmup_s: float = 0.1
    interval_s: float = 0.05
    min_pairs: int = 8
    max_pairs: int = 40
    budget_s: float = 120.0
    threshold: float = 0.05
    seed: int | None = None
    server_cpus: tuple = (0,)
    client_cpus: tuple = (1,)
    remeasure: int = REMEASURE_DISTURBED

    def __post_init__(self):
        if self.min_pairs < 6:
            raise UsageError(f"--min-pairs must be at least 6 (the fewest pairs with a 95% interval), not {self.min_pairs}")
        if self.max_pairs < self.min_pairs:
            raise UsageError(f"--max-pairs ({self.max_pairs}) is below --min-pairs ({self.min_pairs})")
        if not 0 < self.threshold < 1:
            raise UsageError(f"--fail-above must be above 0% and below 100%, not {self.threshold:.1%}")
        if not self.budget_s > 0:
            raise UsageError("--budget must be positive")
        if not self.sizes or not self.conns:
            raise UsageError("ab needs at least one size and one connection count")

    def workloads(self):
        """The workloads as cells without a server: every size at every connection count."""
        return [Cell("", "closed", size, conns, self.depth, protocol=self.protocol, transport=self.transport)
                for size in self.sizes for conns in self.conns]

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class AbSide:
    """One of the two targets, as measured: its side (``A``/``B``), its ``servers.targets.Target``, extra serve
    arguments (a test's ``--burn-us``)."""

    side: str
    target: object
    extra: tuple = ()

    @property
    def label(self):
        return f"{self.side}-{self.target.label}"

    def cell(self, workload):
        return dataclasses.replace(workload, server=self.label)


def check_targets(a, b, plan):
    """The transport both targets speak (``plan.transport`` unless an endpoint says otherwise), after checking
    that both speak it and ``plan.protocol``; one line, exit 2, when they do not."""
    fixed = {s.target.endpoint.transport for s in (a, b) if not s.target.started}
    if len(fixed) > 1:
        ta, tb = a.target.endpoint.transport, b.target.endpoint.transport
        raise UsageError(f"A ({a.target.text}) speaks {ta} and B ({b.target.text}) {tb}: ab compares two targets "
                         f"over one transport")
    transport = fixed.pop() if fixed else plan.transport
    if transport == "udp":
        raise UsageError("ab compares stream targets (tcp, tcp6, unix); udp rounds lose datagrams to the machine")
    for s in (a, b):
        if transport not in s.target.transports:
            other = b if s is a else a
            why = f"B ({other.target.text}) is {transport}" if not other.target.started else f"--transport is {transport}"
            raise UsageError(f"{s.side} ({s.target.describe()}) does not serve {transport} ({why}); it serves "
                             f"{', '.join(s.target.transports)}")
        protocols = s.target.protocols
        if protocols is not None and plan.protocol not in protocols:
            raise UsageError(f"{s.side} ({s.target.describe()}) does not speak --protocol {plan.protocol}; it speaks "
                             f"{', '.join(protocols)}")
    return transport


@dataclass
class AbRow:
    """The verdict at one workload: medians, B/A (a ``ratios.PairedRatio``), the change interval, the verdict."""

    workload: Cell
    a_median: float
    b_median: float
    ratio: object
    change_ci: tuple
    verdict: str
    pairs: int
    left_out: int = 0
    reason: str | None = None

    def to_json(self):
        r = self.ratio
        fin = (lambda v: v if v is not None and math.isfinite(v) else None)
        return {"workload": self.workload.workload_id, "a_median": fin(self.a_median), "b_median": fin(self.b_median),
                "ratio": fin(r.estimate) if r else None, "ci": [fin(r.lo), fin(r.hi)] if r else None,
                "confidence": r.confidence if r else None, "change_ci": [fin(x) for x in self.change_ci],
                "verdict": self.verdict, "pairs": self.pairs, "left_out_pairs": self.left_out, "reason": self.reason}


def _median(values):
    values = sorted(v for v in values if v is not None and math.isfinite(v))
    if not values:
        return float("nan")
    m = len(values) // 2
    return values[m] if len(values) % 2 else (values[m - 1] + values[m]) / 2.0


def verdict_rows(a, b, rounds, threshold, level=CONFIDENCE):
    """One ``AbRow`` per workload from ``rounds`` (``{(side, workload id): [LoadResult]}``), B/A at ``level``."""
    rows = []
    for workload, ra, rb in rounds:
        ca, cb = a.cell(workload), b.cell(workload)
        bad = [r for r in ra + rb if not r.valid]
        clean_a = {r.pass_no: r for r in ra if r.valid and not r.disturbed}
        clean_b = {r.pass_no: r for r in rb if r.valid and not r.disturbed}
        passes = sorted(set(clean_a) & set(clean_b))
        both = sorted({r.pass_no for r in ra} & {r.pass_no for r in rb})
        sa = CellStats(ca, [clean_a[p] for p in passes])
        sb = CellStats(cb, [clean_b[p] for p in passes])
        if bad:
            reason = bad[0].invalid_reason or "a round was invalid"
            rows.append(AbRow(workload, sa.median, sb.median, None, (float("nan"), float("nan")), INVALID,
                              len(passes), len(both) - len(passes), reason))
            continue
        r = ratio(sb, sa, level) if passes else None
        if r is None:
            rows.append(AbRow(workload, float("nan"), float("nan"), None, (float("nan"), float("nan")), UNDECIDED, 0,
                              len(both)))
            continue
        v, change_ci = verdict(r, True, threshold)
        rows.append(AbRow(workload, _median(sa.msgs), _median(sb.msgs), r, change_ci, v, len(passes),
                          len(both) - len(passes)))
    return rows


class AbRun:
    """The passes of ``ab``: ``run()`` measures until decided or out of budget and returns the ``AbRow``s."""

    def __init__(self, a, b, plan, out, log=print, run=None, clock=time.monotonic, argv=None):
        self.a, self.b, self.plan, self.out = a, b, plan, out
        self.log = log
        self.clock = clock
        self.seed = plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        self.workloads = plan.workloads()
        self.rounds = {(s.side, w.workload_id): [] for s in (a, b) for w in self.workloads}
        self.discarded = 0
        self.passes = 0
        self.interrupted = None  # the stop signal that ended the passes, if one did
        self.run_load = run or self._local_run
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self._loads = self._servers = self._canary = None
        self._progress = None

    # --- the folder ------------------------------------------------------------------------
    def meta(self):
        """``meta.json`` (``RunMeta``): the targets, the seed, A as the report's baseline, and a ``RunPlan`` of the
        two as servers (``extra["ab"]`` holds the ab settings), so that ``sockbench report`` reads the folder."""
        m = Machine(**machine_info())
        p = self.plan
        plan = RunPlan(servers=(self.a.label, self.b.label), sizes=p.sizes, conns=p.conns, depth=p.depth,
                       open_pcts=(), protocols=(), transports=(p.transport,), min_rounds=p.min_pairs,
                       max_rounds=p.max_pairs, duration_s=p.duration_s, warmup_s=p.warmup_s, interval_s=p.interval_s,
                       server_cpus=p.server_cpus, client_cpus=p.client_cpus, remeasure=p.remeasure,
                       extra={"ab": p.to_dict()}, seed=self.seed)
        targets = {s.side: {"text": s.target.text, "label": s.label, "describe": s.target.describe(),
                            "revision": s.target.environment.rev if s.target.environment is not None else None}
                   for s in (self.a, self.b)}
        return RunMeta(kind="sockbench-ab", started_at=iso_utc(), status="running", commit=m.git_commit,
                       dirty=m.git_dirty, machine=m, plan=plan, argv=self.argv, seed=self.seed,
                       baseline=self.a.label, targets=targets).to_json()

    def _write(self, path, obj):
        try:
            write_json_atomic(path, obj)
        except OSError as e:
            raise SockbenchError(f"cannot write {path}: {e.strerror or e}; the rounds already in "
                                 f"{os.path.join(self.out, RAW_DIR)} are kept") from None

    def _event(self, ev):
        try:
            if self._progress is not None:
                self._progress.write(json.dumps(ev.to_json()) + "\n")
        except OSError:
            pass  # progress is for reading back the order; the rounds are in raw/ already

    # --- the rounds ------------------------------------------------------------------------
    def spec(self, side, workload, name_busy=False):
        p = self.plan
        t = side.target
        return LoadSpec(
            server=t.name if t.kind == "name" else None, command=t.command, target=None if t.started else t.endpoint,
            mode="closed", conns=workload.conns, size=workload.size, depth=workload.depth,
            duration_s=p.duration_s, warmup_s=p.warmup_s, procs=1, server_cpus=tuple(p.server_cpus),
            client_cpus=tuple(p.client_cpus), interval_s=p.interval_s, protocol=p.protocol,
            transport=workload.transport, name_busy=name_busy,
        )

    def _local_run(self, side, spec):
        if self._loads is None:
            self._loads = LoadPool()
            self._servers = ServerPool(self.plan.server_cpus)
            cpus = set(self.plan.client_cpus) | (set(self.plan.server_cpus) if any(
                s.target.started for s in (self.a, self.b)) else set())
            self._canary = Canary(cpus)
        if not side.target.started:
            return run_load(spec, pool=self._loads, canary=self._canary)
        with self._servers.use(spec, side.target.environment, side.extra) as server:
            return run_load(spec, pool=self._loads, server=server, canary=self._canary)

    def probe(self):
        """Check an address target with a short load in the plan's protocol: it must answer, and validly (one line,
        exit 2, when it does not: nothing is measured yet)."""
        for side in (self.a, self.b):
            if side.target.started:
                continue
            w = self.workloads[0]
            spec = dataclasses.replace(self.spec(side, w), conns=1, duration_s=PROBE_S, warmup_s=0.0,
                                       interval_s=PROBE_S)
            try:
                r = self.run_load(side, spec)
            except SockbenchError as e:
                raise UsageError(f"{side.side} ({side.target.text}): {e}") from None
            if not r.valid:
                raise UsageError(f"{side.side} ({side.target.text}) does not answer as an echo server speaking "
                                 f"{self.plan.protocol} over {w.transport}: {r.invalid_reason}")

    def _round(self, side, workload, pass_no, name_busy):
        cell = side.cell(workload)
        kept = self.rounds[(side.side, workload.workload_id)]
        round_no = len(kept) + 1
        attempt = 0
        while True:
            attempt += 1
            self._event(RoundStarted(cell=cell.id, index=-1, desc=cell.describe(), pass_no=pass_no, round=round_no,
                                     attempt=attempt))
            r = self.run_load(side, self.spec(side, workload, name_busy=name_busy or attempt > 1))
            r = r.with_cell(CellContext.of(cell, round_no, None, None, None, pass_no))
            r = with_client_slowdown(r, kept)  # its CPUs slowed, by the client's own measure (unseen)
            again = r.disturbed and attempt <= self.plan.remeasure and self._time_left() > 0
            name = discarded_name(cell, round_no, attempt) if again else raw_name(cell, round_no)
            self._write(os.path.join(self.out, RAW_DIR, name), r.to_json())
            self._event(RoundDone.of(cell.id, r, attempt, kept=not again))
            if again:
                self.discarded += 1
                continue
            kept.append(r)
            return r

    def _time_left(self):
        return self.plan.budget_s - (self.clock() - self.started)

    def _grouped(self):
        return [(w, self.rounds[("A", w.workload_id)], self.rounds[("B", w.workload_id)]) for w in self.workloads]

    def rows(self, level=CONFIDENCE):
        return verdict_rows(self.a, self.b, self._grouped(), self.plan.threshold, level)

    def _decided(self):
        """True when every workload is decided at ``STOP_LEVEL`` (or invalid: more rounds cannot mend it)."""
        return all(r.verdict != UNDECIDED for r in self.rows(STOP_LEVEL))

    def run(self):
        """Probe, then the passes, then the verdicts at 95%: ``[AbRow]``.  A Ctrl-C stops after the round in flight.

        The results folder is made once the probes have passed (``prepare_out`` checked it could be).
        """
        self.started = self.clock()
        try:
            self.probe()
            os.makedirs(os.path.join(self.out, RAW_DIR), exist_ok=True)
            self._write(os.path.join(self.out, "meta.json"), self.meta())
            self._progress = open(os.path.join(self.out, "progress.jsonl"), "a", buffering=1)
            self.started = self.clock()
            self._passes()
        except KeyboardInterrupt as e:
            self.interrupted = signal_of(e)  # Ctrl-C or SIGTERM: the pairs measured are judged and written
        finally:
            for keeper in (self._servers, self._loads):
                if keeper is not None:
                    keeper.close()
            if self._progress is not None:
                self._progress.close()
        rows = self.rows()
        status = "interrupted" if self.interrupted else "complete"
        kept = sum(len(v) for v in self.rounds.values())
        self._update_meta(status=status, finished_at=iso_utc(), elapsed_s=round(self.clock() - self.started, 1),
                          finished_rounds=kept, finished_runs=kept + self.discarded)
        self._write(os.path.join(self.out, AB_FILE), {
            "a": self.a.label, "b": self.b.label, "threshold": self.plan.threshold, "confidence": CONFIDENCE,
            "seed": self.seed, "passes": self.passes, "discarded": self.discarded, "status": status,
            "rows": [r.to_json() for r in rows]})
        return rows

    def _update_meta(self, **changes):
        RunMeta.check_keys(changes)
        path = os.path.join(self.out, "meta.json")
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        meta.update(changes)
        self._write(path, meta)

    def _passes(self):
        p = self.plan
        while self.passes < p.max_pairs:
            pass_no = self.passes + 1
            rng = random.Random(f"{self.seed}:{pass_no}")
            order = list(self.workloads)
            rng.shuffle(order)
            sides = [(w, (self.a, self.b) if rng.random() < 0.5 else (self.b, self.a)) for w in order]
            self._event(PassStarted(pass_no=pass_no, seed=self.seed,
                                    order=tuple(s.cell(w).id for w, pair in sides for s in pair)))
            first = True
            for w, pair in sides:
                for side in pair:
                    self._round(side, w, pass_no, name_busy=first)
                    first = False
            self.passes = pass_no
            self.log(self._pass_line())
            if pass_no >= p.min_pairs and self._decided():
                return
            per_pass = (self.clock() - self.started) / pass_no
            if self._time_left() < per_pass and pass_no >= p.min_pairs:
                return

    def _pass_line(self):
        parts = []
        for row in self.rows():
            w = row.workload
            what = f"{format_size(w.size)}x{w.conns}"
            if row.ratio is None:
                parts.append(f"{what} {row.verdict}")
            else:
                parts.append(f"{what} B/A {row.ratio.estimate:.3f} {row.verdict}")
        return f"pass {self.passes}: " + "; ".join(parts)


def prepare_out(out):
    """The results folder of an ``ab`` (default ``results/ab-<UTC time>``): new or empty, and writable.

    Checked now, made by ``AbRun.run`` once the targets answered (a folder left behind by bad input is noise).
    """
    out = out or os.path.join("results", f"ab-{folder_stamp()}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"{out} already holds files (or is a file); pick a new --out folder")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out} cannot be created: {parent} is not writable")
    return out


def describe(workload):
    """A workload without a server: ``64B x 100 conns`` (``· depth 16 · json`` ...)."""
    return " · ".join([f"{format_size(workload.size)} x {workload.conns} conn{'' if workload.conns == 1 else 's'}"]
                      + workload._parts("describe"))
