"""What the pytest-benchmark suite (``test_echo_bench.py``) runs, kept out of the test file.

Why it is built this way: ``sockbench run`` starts the suite as a child
``pytest`` (pytest-benchmark owns the statistics and storage) and talks to it
through the results folder only: ``SOCKBENCH_PLAN`` names ``plan.json``,
``SOCKBENCH_OUT`` the folder (without them, the default matrix into
``results/<UTC time>/``).

Rules:

* Every round's ``LoadResult`` (with its cell and pass) is written to
  ``raw/`` atomically as it ends, so a Ctrl-C loses at most the round in
  flight.  ``progress.jsonl`` gets one typed event per pass, round and cell;
  a file, not a pipe, so the child never blocks on its parent.
* Passes (``SuiteContext.measure``): the machine drifts, so each pass runs one
  round of every open cell in a random order seeded by
  ``random.Random(f"{seed}:{pass}")`` (seed in ``meta.json``); rounds of one
  pass are pairs for ``report.ratios``.  A cell leaves (``stop_reason``) at
  its interval within ``ci``, ``max_rounds``, an open-loop p99 interval that
  ``max_rounds`` could not narrow enough (``out_of_reach``), ``cell_budget_s``
  or an invalid round, after ``min_rounds``; the passes end with no open cell
  or no room in ``run_budget_s``.
* An open-loop cell joins once its server's closed-loop peak cell has
  ``PEAK_ROUNDS`` valid rounds; without that cell, one calibration run
  measures the peak first (``calibration/<server>.json``).
* Server and load processes are kept idle between rounds (``bench.load.pools``);
  a canary is timed after each round (``bench.load.unseen``).  A disturbed
  attempt is set aside (in ``raw/`` under ``store.discarded_name``) and its
  round measured again in a later pass, up to ``plan.remeasure`` times within
  the budgets: a slow stretch of the host outlasts an attempt made at once.
  Each new round of a closed-loop cell has its kept rounds judged again
  (``unseen.rejudge``); one found to have run on a slowed CPU is set aside
  the same way, so no cell leaves with it.
* The tests hand each cell's rounds to pytest-benchmark after the passes
  (``msgclock``; the session fixture ``measured``).  A stop during the passes
  ends them after the round in flight, and the session ends "interrupted".
* A result that cannot be written stops the suite with ``WRITE_FAILED_EXIT``
  and one line down ``SOCKBENCH_STATUS_FD`` (a full disk cannot hold
  ``pytest.log``).
"""

import functools
import json
import math
import os
import random
import secrets
import sys
import time

from sockbench.bench.load.harness import run_load
from sockbench.bench.load.pools import LoadPool, ServerPool
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.load.unseen import Canary, rejudge, with_client_slowdown
from sockbench.bench.report.store import RAW_DIR, CellStats, discarded_name, raw_name
from sockbench.bench.schema import Cell, CellContext, Machine, RunMeta, copy_fields
from sockbench.bench.suite.plan import PEAK_ROUNDS, Plan, default_plan
from sockbench.bench.suite.progress import (
    Calibrated, Calibrating, CellDone, PassStarted, RoundDone, RoundSetAside, RoundStarted, Window,
)
from sockbench.errors import SockbenchError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.servers import registry
from sockbench.servers.tls import DEFAULT_VERSION, TlsConfig
from sockbench.servers.command import Command
from sockbench.timestamps import folder_stamp, iso_utc

__all__ = [
    "ENV_PLAN",
    "ENV_OUT",
    "ENV_STATUS_FD",
    "WRITE_FAILED_EXIT",
    "PROGRESS_FILE",
    "SuiteContext",
    "CellRun",
    "stop_reason",
    "out_of_reach",
    "pass_order",
    "new_meta",
    "update_meta",
]

ENV_PLAN = "SOCKBENCH_PLAN"
ENV_OUT = "SOCKBENCH_OUT"
#: the pipe down which the suite says, in one line, what it could not write (set by ``sockbench run``)
ENV_STATUS_FD = "SOCKBENCH_STATUS_FD"
#: the suite's exit status when a result could not be written (sysexits' EX_IOERR; pytest's own are 0-5)
WRITE_FAILED_EXIT = 74
PROGRESS_FILE = "progress.jsonl"


def new_meta(plan, argv=None, **more):
    """``meta.json`` of a new run: the machine, the commit, the plan; status ``running``; ``more`` other
    ``RunMeta`` fields (``baseline``)."""
    m = Machine(**machine_info())
    return RunMeta(started_at=iso_utc(), status="running", commit=m.git_commit, dirty=m.git_dirty, machine=m,
                   plan=plan, planned_cells=len(plan.cells()),
                   argv=list(argv) if argv is not None else list(sys.argv), **more).to_json()


def update_meta(out, **changes):
    """Set ``changes`` in ``meta.json`` (each a ``RunMeta`` field), keeping the rest as it is."""
    RunMeta.check_keys(changes)
    path = os.path.join(out, "meta.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    meta.update(changes)
    write_json_atomic(path, meta)
    return meta


def stop_reason(plan, stats, elapsed_s, budget_s, round_s=None):
    """Why a cell leaves the rotation now (``stable``, ``max-rounds``, ``out-of-reach``, ``budget``, ``invalid``,
    ``fixed``), or None.

    ``stats`` is the ``CellStats`` of the rounds kept so far, ``elapsed_s`` the time the cell's rounds have
    taken, ``budget_s`` its time budget, ``round_s`` what one of its load runs took on average (default: the
    plan's estimate).  The minimum rounds always run; then, in this order: a fixed plan
    stops, an invalid round stops (more rounds cannot make the cell valid), a stable interval stops,
    ``max_rounds`` stops, an open-loop p99 whose interval ``max_rounds`` could not narrow to its target stops
    (``out_of_reach``), and a next round that would end past the budget is not started.
    """
    n = len(stats.results)
    if n < plan.min_rounds:
        return None
    if not plan.adaptive:
        return "fixed"
    if stats.invalid:
        return "invalid"
    if stats.interval().half_width <= plan.ci_for(stats.cell.mode):
        return "stable"
    if n >= plan.max_rounds:
        return "max-rounds"
    if stats.cell.mode == "open" and out_of_reach(stats.interval().half_width, n, plan.ci_for("open"),
                                                   plan.max_rounds):
        return "out-of-reach"
    if elapsed_s + (round_s or plan.round_estimate_s(stats.cell)) > budget_s:
        return "budget"
    return None


def out_of_reach(half_width, n, target, max_rounds):
    """An interval of half-width ``half_width`` after ``n`` rounds that ``max_rounds`` could not bring within
    ``target``: a median's interval narrows as 1/sqrt(n), so it would take ``n * (half_width / target) ** 2``.

    Applied to the open loop's p99 only, whose rounds spread 14-64% on the 2-core VM (README, principle 4):
    replayed over the open-loop cells of ten default runs, it stops 116 of the 117 that ended wider than their
    target, one of the 3 that reached it, and frees about 29 rounds (40 s) a run for the closed-loop cells,
    which ended WIDE-CI only at the budget.  A closed-loop rate's interval at 6 rounds is its whole range, too
    crude to project: there it would have stopped 16 of the 232 cells that converged.
    """
    return math.isfinite(half_width) and half_width > target and n * (half_width / target) ** 2 > max_rounds


def pass_order(seed, pass_no, cell_ids):
    """The order of one pass: ``cell_ids`` shuffled by a generator seeded with the run's seed and the pass."""
    order = sorted(cell_ids)
    random.Random(f"{seed}:{pass_no}").shuffle(order)
    return order


class CellRun:
    """What one cell's rounds came to: the kept rounds, the attempts set aside, why it left the rotation, and
    for an open-loop cell the rate it was offered and the peak that set it."""

    def __init__(self, cell, budget_s, ci_target=None):
        self.cell = cell
        self.budget_s = budget_s
        self.ci_target = ci_target
        self.results = []
        self.discarded = []
        self.stopped = None
        #: the seconds its load runs took, one after the other (its rounds are spread over the run)
        self.elapsed_s = 0.0
        self.rate = self.peak = self.peak_from = None
        #: the pass it joined the rotation at (an open-loop cell joins once its peak is known)
        self.joined = None
        #: why it has no rounds, when it could not be measured (an open-loop cell without a peak)
        self.error = None

    def tries(self, round_no):
        """The attempts made at round ``round_no`` so far: those set aside and the one kept (one set aside leaves
        its number to a later pass)."""
        return sum(1 for r in self.results + self.discarded if r.round_no == round_no)

    def next_round(self):
        """The round number the next attempt is at: the lowest with no kept round."""
        taken = {r.round_no for r in self.results}
        k = 1
        while k in taken:
            k += 1
        return k

    @property
    def attempts(self):
        return len(self.results) + len(self.discarded)

    @property
    def open(self):
        return self.stopped is None

    def stats(self):
        return CellStats(self.cell, list(self.results), list(self.discarded), ci_target=self.ci_target)


def _load_runner(plan):
    """``run_cluster_load`` bound to the scheduler with ``sockbench run --cluster`` (the plan's
    ``extra["cluster"]``), else None: a local run keeps its processes between rounds (``SuiteContext``)."""
    cluster = plan.extra.get("cluster")
    if not cluster:
        return None
    # deferred: the coordinator imports Dask's client only when a cluster run asks for it
    from sockbench.bench.load.cluster import run_cluster_load

    return functools.partial(run_cluster_load, scheduler=cluster["scheduler"], hosts=cluster.get("hosts"))


class SuiteContext:
    """The session state of one suite run: plan, folder, peaks, the passes, the run budget, progress."""

    def __init__(self, plan, out, run=None, clock=time.monotonic, seed=None):
        self.plan = plan
        self.out = out
        self.cells = plan.cells()
        self.index = {c.id: i for i, c in enumerate(self.cells)}
        self.peaks = {}
        #: the load run, ``run(spec, on_window=...)``, and the clock of the budgets (a test gives its own);
        #: None: ``run_load`` with the processes kept between rounds (``_local_run``)
        self.run = run or _load_runner(plan) or self._local_run
        self.clock = clock
        #: the seed of every pass's order: the plan's (``--seed``), else drawn now; recorded in meta.json
        self.seed = seed if seed is not None else plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        #: True when the suite runs by hand and so keeps meta.json itself (else ``sockbench run`` does)
        self.owns_meta = False
        #: set when a Ctrl-C (or SIGTERM) stopped the passes
        self.interrupted = False
        self.runs = None
        self.passes = 0
        #: the process that started the suite (``sockbench run``): when it is gone at the end, the suite
        #: settles meta.json itself
        self.parent = os.getppid()
        self.started = clock()
        self._loads = self._servers = self._canary = None
        os.makedirs(os.path.join(out, RAW_DIR), exist_ok=True)
        self._progress = open(os.path.join(out, PROGRESS_FILE), "a", buffering=1)

    @classmethod
    def from_env(cls):
        plan_path = os.environ.get(ENV_PLAN)
        out = os.environ.get(ENV_OUT)
        if plan_path:
            plan = Plan.load(plan_path)
        else:
            names = registry.available_names()
            plan = default_plan(names, speaks={n: list(registry.get(n).protocols) for n in names},
                                serves={n: list(registry.get(n).transports) for n in names})
        if not out:
            out = os.path.join("results", folder_stamp())
        os.makedirs(out, exist_ok=True)
        if not os.path.exists(os.path.join(out, "plan.json")):
            plan.save(os.path.join(out, "plan.json"))
        owns_meta = not os.path.exists(os.path.join(out, "meta.json"))
        if owns_meta:
            write_json_atomic(os.path.join(out, "meta.json"), new_meta(plan))
        ctx = cls(plan, out)
        ctx.owns_meta = owns_meta
        return ctx

    def close(self):
        self._close_processes()
        if not self._progress.closed:
            try:
                self._progress.close()
            except OSError:
                pass  # progress is for the display only; the results it would describe are in raw/ already

    def finish(self, exitstatus):
        """At session end: close the progress file; run by hand, or orphaned by a runner that was killed,
        also settle meta.json's status."""
        self.close()
        orphaned = not self.owns_meta and os.getppid() != self.parent
        if self.owns_meta or orphaned:
            status = "interrupted" if self.interrupted else {0: "complete", 2: "interrupted"}.get(int(exitstatus), "failed")
            try:
                update_meta(self.out, status=status, finished_at=iso_utc())
            except OSError:
                pass  # the folder is gone or full: raw/ holds what was measured all the same

    def event(self, ev):
        """Append one ``progress`` event to progress.jsonl."""
        try:
            self._progress.write(json.dumps(ev.to_json()) + "\n")
        except OSError as e:
            self.write_failed(self._progress.name, e)

    def write(self, path, obj):
        """Write one JSON file of the results folder atomically; a failure stops the suite (``write_failed``)."""
        try:
            write_json_atomic(path, obj)
        except OSError as e:
            self.write_failed(path, e)

    def write_failed(self, path, error):
        """Stop the suite because ``path`` could not be written: one line to the runner, exit ``WRITE_FAILED_EXIT``."""
        # pytest is loaded in the suite's process; `sockbench run`, which imports this module, needs it not
        import pytest

        line = f"cannot write {path}: {error.strerror or error}"
        fd = os.environ.get(ENV_STATUS_FD)
        if fd:
            try:
                os.write(int(fd), (line + "\n").encode())
            except (OSError, ValueError):
                pass  # the runner is gone or the fd is not ours: the exit status still says it
        pytest.exit(line, returncode=WRITE_FAILED_EXIT)

    def spec(self, cell, rate=None, size=None, conns=None, mode=None, name_busy=True):
        """The ``LoadSpec`` of one round of ``cell``: the cell's dimensions under their own names, the plan's timing."""
        p = self.plan
        command = Command.from_json(p.commands[cell.server]) if cell.server in p.commands else None
        return copy_fields(
            LoadSpec, cell, server=None if command is not None else cell.server, command=command,
            server_python=p.python_of(cell.python), python=cell.python or None, mode=mode or cell.mode,
            conns=conns or cell.conns, size=size or cell.size, rate=rate,
            duration_s=p.round_duration(cell), warmup_s=p.warmup_s, procs=min(p.procs, conns or cell.conns),
            server_cpus=tuple(p.server_cpus), client_cpus=tuple(p.client_cpus), interval_s=p.interval_s,
            name_busy=name_busy, tls=self.tls_config(cell), engine=p.engine_for(cell),
        )

    # --- the processes kept between rounds -------------------------------------------------
    def _local_run(self, spec, on_window=None):
        """One round with the server and the load processes kept between rounds, and the canary after it."""
        if self._loads is None:
            self._loads = LoadPool(size=self.plan.procs)
            self._servers = ServerPool(self.plan.server_cpus)
            self._canary = Canary(set(self.plan.server_cpus) | set(self.plan.client_cpus))
        with self._servers.use(spec) as server:
            return run_load(spec, on_window=on_window, pool=self._loads, server=server, canary=self._canary)

    def _release(self, cell):
        """Stop the server process of ``cell`` once no open cell needs it."""
        if self._servers is None:
            return
        key = ServerPool.key_of(self.spec(cell))
        if not any(r.open and ServerPool.key_of(self.spec(r.cell)) == key for r in self.runs.values()):
            self._servers.release(self.spec(cell))

    def _close_processes(self):
        for keeper in (self._servers, self._loads):
            if keeper is not None:
                keeper.close()
        self._servers = self._loads = None

    def tls_config(self, cell):
        """The ``TlsConfig`` of a TLS cell (the plan's setting; resumption as the cell says), or None."""
        if not cell.tls:
            return None
        t = self.plan.tls_setting
        return TlsConfig(cert=t.get("cert"), key=t.get("key"), version=t.get("version") or DEFAULT_VERSION,
                         cipher=t.get("cipher"), resumption=cell.resumed)

    # --- the open-loop peak ----------------------------------------------------------
    def peak_cell(self, cell):
        """The closed-loop cell whose median is ``cell``'s (an open-loop cell's) peak: raw, the sweep's workload."""
        p = self.plan
        return Cell(cell.server, "closed", p.open_size, p.open_conns, p.depth, transport=cell.transport,
                    workers=cell.workers, python=cell.python, tls=cell.tls)

    def record(self, stats):
        """Remember a closed-loop grid cell's median as a candidate peak.

        Only raw cells at the grid's depth count: the open loop keeps one
        message in flight per connection, and speaks raw.
        """
        c = stats.cell
        if (c.mode == "closed" and c.size == self.plan.open_size and c.protocol == "raw" and c.depth == self.plan.depth
                and not stats.invalid and stats.median > 0):
            key = (c.server, c.transport, c.workers, c.python, c.tls)
            self.peaks[key] = max(self.peaks.get(key, 0.0), stats.median)

    def calibrate(self, server, transport="tcp", workers=1, python="", tls=False):
        """The server's peak msgs/s at the sweep's size over ``transport`` with ``workers`` processes under
        interpreter ``python`` (over TLS with ``tls``), measured by one calibration run."""
        key = (server, transport, workers, python, tls)
        cal = Cell(server, "closed", self.plan.open_size, self.plan.open_conns, transport=transport, workers=workers,
                   python=python, tls=tls)
        self.event(Calibrating(server=server))
        r = self.run(self.spec(cal), on_window=self._window)
        name = (server + ("" if transport == "tcp" else f"-{transport}") + ("" if workers == 1 else f"-w{workers}")
                + (f"-py{python}" if python else "") + ("-tls" if tls else ""))
        self.write(os.path.join(self.out, "calibration", f"{name}.json"), r.to_json())
        self.event(Calibrated(server=server, msgs_per_s=r.throughput.msgs_per_s, valid=r.valid))
        if not r.valid or not r.throughput.msgs_per_s > 0:
            raise RuntimeError(f"calibration of {server} over {transport} failed: {r.invalid_reason}")
        self.peaks[key] = r.throughput.msgs_per_s
        return self.peaks[key]

    def _join(self, run, pass_no):
        """Let open-loop ``run`` join the rotation at ``pass_no`` if its peak is known now; True if it did."""
        cell = run.cell
        peak_run = self.runs.get(self.peak_cell(cell).id)
        key = (cell.server, cell.transport, cell.workers, cell.python, cell.tls)
        if peak_run is not None:
            valid = [r for r in peak_run.results if r.valid and (r.throughput.msgs_per_s or 0) > 0]
            if len(valid) < PEAK_ROUNDS and peak_run.open:
                return False
            if valid:
                stats = CellStats(peak_run.cell, valid)
                self.peaks[key] = stats.median
                run.peak_from = f"closed-loop cell ({len(valid)} rounds)"
        if key not in self.peaks:
            try:
                self.calibrate(cell.server, cell.transport, cell.workers, cell.python, cell.tls)
            except (RuntimeError, SockbenchError) as e:
                # no peak, no rate: the cell is not measured, and its test says why
                run.error = str(e)
                self._leave(run, "no-peak")
                return True
            run.peak_from = "a calibration run"
        run.peak = self.peaks[key]
        run.rate = run.peak * cell.load_pct / 100.0
        run.joined = pass_no
        return True

    def _window(self, start_ns, end_ns):
        # the runner draws nothing while a load runs (see runner._watch)
        self.event(Window(start_ns=start_ns, end_ns=end_ns))

    # --- the passes ---------------------------------------------------------------------
    def measure(self, cells=None):
        """Measure ``cells`` (default: the plan's) in passes until none is open; ``{cell id: CellRun}``.

        Every attempt is written to raw/ at once.  A Ctrl-C stops the passes after the round in flight
        (``interrupted``): what was measured is returned.
        """
        if self.runs is not None:
            return self.runs
        cells = list(self.cells if cells is None else cells)
        adaptive = self.plan.adaptive
        self.runs = {c.id: CellRun(c, self.plan.cell_budget_s, self.plan.ci_for(c.mode) if adaptive else None)
                     for c in cells}
        self.started = self.clock()
        self.write_seed()
        try:
            self._passes()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self._close_processes()
        return self.runs

    def write_seed(self):
        meta = os.path.join(self.out, "meta.json")
        if os.path.exists(meta):
            try:
                update_meta(self.out, seed=self.seed)
            except OSError as e:
                self.write_failed(meta, e)

    def _passes(self):
        waiting = [r for r in self.runs.values() if r.cell.mode == "open"]
        while True:
            pass_no = self.passes + 1
            for run in list(waiting):
                if self._join(run, pass_no):
                    waiting.remove(run)
            rotation = [r for r in self.runs.values() if r.open and r not in waiting]
            if not rotation:
                return  # (a waiting cell joins at the latest when its peak cell leaves, so none is left waiting)
            self.passes = pass_no
            order = pass_order(self.seed, pass_no, [r.cell.id for r in rotation])
            self.event(PassStarted(pass_no=pass_no, seed=self.seed, order=tuple(order)))
            for position, cell_id in enumerate(order):
                run = self.runs[cell_id]
                if not run.open:
                    continue
                if self._out_of_budget(run):
                    self._leave(run, "budget")
                    continue
                self._round(run, pass_no, name_busy=position == 0)
                stats = run.stats()
                reason = stop_reason(self.plan, stats, run.elapsed_s, run.budget_s, run.elapsed_s / run.attempts)
                if reason:
                    self._leave(run, reason, stats)

    def _out_of_budget(self, run):
        """The run budget has no room for ``run``'s next round (its minimum rounds always run)."""
        if self.plan.run_budget_s is None or len(run.results) < self.plan.min_rounds:
            return False
        per_round = run.elapsed_s / run.attempts if run.attempts else self.plan.round_estimate_s(run.cell)
        return self.clock() - self.started + per_round > self.plan.run_budget_s

    def _leave(self, run, reason, stats=None):
        run.stopped = reason
        stats = stats or run.stats()
        iv = stats.interval()
        self.event(CellDone(cell=run.cell.id, index=self.index.get(run.cell.id, -1), rounds=len(run.results),
                            remeasured=stats.remeasured, figure=stats.figure_name, median=iv.median,
                            interval=iv.text(), stopped=reason, flags=tuple(stats.flags())))
        self.record(stats)
        self._release(run.cell)

    def _round(self, run, pass_no, name_busy=False):
        """One attempt at ``run``'s next round: kept and returned, or set aside (None) when it was disturbed and the
        rules allow its round to be measured again in a later pass."""
        cell = run.cell
        round_no = run.next_round()
        attempt = run.tries(round_no) + 1
        self.event(RoundStarted(cell=cell.id, index=self.index.get(cell.id, -1), desc=cell.describe(),
                                pass_no=pass_no, round=round_no, attempt=attempt))
        t0 = self.clock()
        # what is busy on the CPUs is named at a pass's first round and before a round measured again
        r = self.run(self.spec(cell, rate=run.rate, name_busy=name_busy or attempt > 1), on_window=self._window)
        run.elapsed_s += self.clock() - t0
        r = r.with_cell(CellContext.of(cell, round_no, None, self.index.get(cell.id, -1), run.peak, pass_no))
        r = with_client_slowdown(r, run.results)  # its CPUs slowed, by the client's own measure (unseen)
        again = r.disturbed and attempt <= self.plan.remeasure and self._may_remeasure(run)
        name = discarded_name(cell, round_no, attempt) if again else raw_name(cell, round_no)
        self.write(os.path.join(self.out, RAW_DIR, name), r.to_json())
        self.event(RoundDone.of(cell.id, r, attempt, kept=not again))
        if again:
            run.discarded.append(r)
            return None
        run.results.append(r)
        self._rejudge(run)
        return r

    def _rejudge(self, run):
        """Set aside the kept rounds of ``run`` that all its clean rounds show ran on a slowed CPU
        (``unseen.rejudge``), while their round may be measured again; the others are kept and flagged."""
        cell = run.cell
        for i, judged in reversed(rejudge(run.results)):  # from the last, so that each index still holds
            k = judged.round_no
            path = os.path.join(self.out, RAW_DIR, raw_name(cell, k))
            attempt = run.tries(k)  # the kept attempt's number, which its new name takes
            if attempt <= self.plan.remeasure and self._may_remeasure(run):
                aside = os.path.join(self.out, RAW_DIR, discarded_name(cell, k, attempt))
                self.write(aside, judged.to_json())
                try:
                    os.remove(path)
                except OSError as e:
                    self.write_failed(path, e)
                del run.results[i]
                run.discarded.append(judged)
                self.event(RoundSetAside(cell=cell.id, round=k, client_slowdown=judged.interference.client_slowdown))
            else:
                self.write(path, judged.to_json())
                run.results[i] = judged

    def _may_remeasure(self, run):
        """A disturbed attempt is measured again only while the cell's and the run's budgets have room for it."""
        per_run = run.elapsed_s / (run.attempts + 1)  # the attempt in hand is not counted in run yet
        if run.elapsed_s + per_run > run.budget_s:
            return False
        return self.plan.run_budget_s is None or self.clock() - self.started + per_run <= self.plan.run_budget_s
