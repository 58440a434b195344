"""What the pytest-benchmark suite (``test_echo_bench.py``) runs, kept out of the test file.

Why it is built this way: ``sockbench run`` starts the suite as a child
``pytest`` process (pytest-benchmark owns the statistics, the storage and
``--benchmark-json``), and talks to it through the results folder only:

* ``SOCKBENCH_PLAN`` names ``plan.json`` (the matrix), ``SOCKBENCH_OUT`` the
  results folder.  Without them (``pytest bench/`` by hand) the suite runs the
  default matrix over every available server into ``results/<UTC time>/``.
* Every round's result (a ``LoadResult`` with the cell it is a round of
  attached, ``sockbench.bench.schema``) is written to ``raw/`` atomically the
  moment it ends, so a Ctrl-C loses at most the round in flight.
* ``progress.jsonl`` gets one typed event (``progress``) per cell start, load
  window, round end and cell end; the parent tails it to draw the progress
  display.  A file, not a pipe: the child never blocks on a parent that
  stopped reading.

A cell's rounds (``run_cell``): rounds are measured until the interval of
the median of the cell's figure is within the plan's ``ci``, between
``min_rounds`` and ``max_rounds``, within the cell's time budget
(``Plan.cell_share_s``: the run budget is shared out as the run goes).  A
round whose result says ``disturbed`` (foreign load on its CPUs) is measured
again, at most ``plan.remeasure`` times (``REMEASURE_DISTURBED``, 2) and only while the cell's
budget has room (so a machine that stays busy costs a bounded time); the attempts set aside stay in ``raw/`` under a name the
report does not count as a round (``store.discarded_name``), and a round
still disturbed after them is kept, and flagged DISTURBED wherever it shows.
The minimum rounds always run, whatever the budget says.

A result that cannot be written (a full disk, a folder gone read-only) stops
the suite at once, with exit status ``WRITE_FAILED_EXIT``: measuring on
would only produce more results with nowhere to go.  The one line saying
what could not be written and where goes down ``SOCKBENCH_STATUS_FD``, a pipe
from ``sockbench run``, because on a full disk ``pytest.log`` cannot hold it;
every result written before stays in ``raw/``, whole (atomic writes).

The open-loop sweep needs each server's peak: it is the best valid closed-loop
median the same server reached at the sweep's message size in this session
(the closed cells of a server run before its open cells).  When those cells
were filtered out, one closed-loop calibration run measures it
(``calibration/<server>.json``).
"""

import functools
import json
import os
import sys
import time

from sockbench.bench.load.harness import run_load
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.report.store import RAW_DIR, CellStats, discarded_name, raw_name
from sockbench.bench.schema import Cell, CellContext, Machine, RunMeta, copy_fields
from sockbench.bench.suite.plan import Plan, default_plan
from sockbench.bench.suite.progress import Calibrated, Calibrating, CellDone, CellStarted, RoundDone, Window
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


def new_meta(plan, argv=None):
    """``meta.json`` of a new run: the machine, the commit, the plan; status ``running``."""
    m = Machine(**machine_info())
    return RunMeta(started_at=iso_utc(), status="running", commit=m.git_commit, dirty=m.git_dirty, machine=m,
                   plan=plan, planned_cells=len(plan.cells()),
                   argv=list(argv) if argv is not None else list(sys.argv)).to_json()


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
    """Why a cell's rounds stop now (``stable``, ``max-rounds``, ``budget``, ``invalid``, ``fixed``), or None.

    ``stats`` is the ``CellStats`` of the rounds kept so far, ``elapsed_s`` the time the cell has taken,
    ``budget_s`` its time budget, ``round_s`` what one of its load runs took on average (default: the
    plan's estimate).  The minimum rounds always run; then, in this order: a fixed plan
    stops, an invalid round stops (more rounds cannot make the cell valid), a stable interval stops,
    ``max_rounds`` stops, and a next round that would end past the budget is not started.
    """
    n = len(stats.results)
    if n < plan.min_rounds:
        return None
    if not plan.adaptive:
        return "fixed"
    if stats.invalid:
        return "invalid"
    if stats.interval().half_width <= plan.ci:
        return "stable"
    if n >= plan.max_rounds:
        return "max-rounds"
    if elapsed_s + (round_s or plan.round_estimate_s(stats.cell)) > budget_s:
        return "budget"
    return None


class CellRun:
    """What one cell's rounds came to: the kept rounds, the attempts set aside, why it stopped, its budget."""

    def __init__(self, cell, budget_s, ci_target=None, clock=time.monotonic):
        self.cell = cell
        self.budget_s = budget_s
        self.ci_target = ci_target
        self.results = []
        self.discarded = []
        self.stopped = None
        self.clock = clock
        self.started = clock()

    @property
    def elapsed_s(self):
        return self.clock() - self.started

    @property
    def attempts(self):
        return len(self.results) + len(self.discarded)

    def stats(self):
        return CellStats(self.cell, list(self.results), list(self.discarded), ci_target=self.ci_target)


def _load_runner(plan):
    """``run_load``, or with ``sockbench run --cluster`` (the plan's ``extra["cluster"]``) the load from several
    hosts through that Dask scheduler."""
    cluster = plan.extra.get("cluster")
    if not cluster:
        return run_load
    # deferred: the coordinator imports Dask's client only when a cluster run asks for it
    from sockbench.bench.load.cluster import run_cluster_load

    return functools.partial(run_cluster_load, scheduler=cluster["scheduler"], hosts=cluster.get("hosts"))


class SuiteContext:
    """The session state of one suite run: plan, folder, peaks, the run budget, progress."""

    def __init__(self, plan, out, run=None, clock=time.monotonic):
        self.plan = plan
        self.out = out
        self.cells = plan.cells()
        self.index = {c.id: i for i, c in enumerate(self.cells)}
        self.peaks = {}
        #: the load run, ``run_load(spec, on_window=...)``, and the clock of the budgets (a test gives its own)
        self.run = run or _load_runner(plan)
        self.clock = clock
        #: True when the suite runs by hand and so keeps meta.json itself (else ``sockbench run`` does)
        self.owns_meta = False
        #: the process that started the suite (``sockbench run``): when it is gone at the end, the suite
        #: settles meta.json itself
        self.parent = os.getppid()
        self.started = clock()
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
            status = {0: "complete", 2: "interrupted"}.get(int(exitstatus), "failed")
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

    def tls_config(self, cell):
        """The ``TlsConfig`` of a TLS cell (the plan's setting; resumption as the cell says), or None."""
        if not cell.tls:
            return None
        t = self.plan.tls_setting
        return TlsConfig(cert=t.get("cert"), key=t.get("key"), version=t.get("version") or DEFAULT_VERSION,
                         cipher=t.get("cipher"), resumption=cell.resumed)

    # --- the open-loop peak ----------------------------------------------------------
    def record(self, stats):
        """Remember a finished closed-loop grid cell's median as a candidate peak.

        Only raw cells at the grid's depth count: the open loop keeps one
        message in flight per connection, and speaks raw.
        """
        c = stats.cell
        if (c.mode == "closed" and c.size == self.plan.open_size and c.protocol == "raw" and c.depth == self.plan.depth
                and not stats.invalid and stats.median > 0):
            key = (c.server, c.transport, c.workers, c.python, c.tls)
            self.peaks[key] = max(self.peaks.get(key, 0.0), stats.median)

    def peak(self, server, transport="tcp", workers=1, python="", tls=False):
        """The server's peak msgs/s at the sweep's size over ``transport`` with ``workers`` processes under
        interpreter ``python`` (over TLS with ``tls``): measured already, or calibrated now."""
        key = (server, transport, workers, python, tls)
        if key in self.peaks:
            return self.peaks[key], "closed-loop cells"
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
        return self.peaks[key], "a calibration run"

    def _window(self, start_ns, end_ns):
        # the runner draws nothing while a load runs (see runner._watch)
        self.event(Window(start_ns=start_ns, end_ns=end_ns))

    # --- one cell: rounds until its figure is stable ----------------------------------
    def cell_budget(self, cell):
        """``cell``'s time budget now: ``Plan.cell_share_s`` of what is left of the run budget."""
        i = self.index.get(cell.id, -1)
        remaining = self.cells[i + 1:] if i >= 0 else []
        left = (self.plan.run_budget_s or 0.0) - (self.clock() - self.started)
        return self.plan.cell_share_s(cell, remaining, left)

    def run_cell(self, cell, rate=None, peak=None):
        """Measure ``cell``'s rounds until ``stop_reason`` says stop; every attempt is written to raw/ at once.

        Returns the ``CellRun``: kept rounds in order, the disturbed attempts set aside, why it stopped.
        """
        self.event(CellStarted(cell=cell.id, index=self.index.get(cell.id, -1), desc=cell.describe()))
        run = CellRun(cell, self.cell_budget(cell), self.plan.ci if self.plan.adaptive else None, self.clock)
        while True:
            self._round(run, rate, peak)
            stats = run.stats()
            run.stopped = stop_reason(self.plan, stats, run.elapsed_s, run.budget_s, run.elapsed_s / run.attempts)
            if run.stopped:
                break
        iv = stats.interval()
        self.event(CellDone(cell=cell.id, index=self.index.get(cell.id, -1), rounds=len(run.results),
                            remeasured=stats.remeasured, figure=stats.figure_name, median=iv.median,
                            interval=iv.text(), stopped=run.stopped, flags=tuple(stats.flags())))
        return run

    def _round(self, run, rate, peak):
        """One round: measured, and measured again while it is disturbed and the rules allow."""
        cell = run.cell
        round_no = len(run.results) + 1
        attempt = 0
        while True:
            attempt += 1
            # the runner keeps its display still while the load runs (see runner._watch)
            # what is busy on the CPUs is named once a cell; every round's foreign CPU time is measured
            r = self.run(self.spec(cell, rate=rate, name_busy=round_no == attempt == 1), on_window=self._window)
            r = r.with_cell(CellContext.of(cell, round_no, None, self.index.get(cell.id, -1), peak))
            again = r.disturbed and attempt <= self.plan.remeasure and self._may_remeasure(run)
            name = discarded_name(cell, round_no, attempt) if again else raw_name(cell, round_no)
            self.write(os.path.join(self.out, RAW_DIR, name), r.to_json())
            self.event(RoundDone(cell=cell.id, round=round_no, attempt=attempt, kept=not again,
                                 msgs_per_s=r.throughput.msgs_per_s, p99_us=r.latency_us.p99, valid=r.valid,
                                 client_bound=r.client_bound, disturbed=r.disturbed))
            if again:
                run.discarded.append(r)
                continue
            run.results.append(r)
            return r

    def _may_remeasure(self, run):
        """A disturbed attempt is measured again only while the cell's budget has room for one more load run."""
        per_run = run.elapsed_s / (run.attempts + 1)  # the attempt in hand is not counted in run yet
        return run.elapsed_s + per_run <= run.budget_s
