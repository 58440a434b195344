"""What the pytest-benchmark suite (``bench/test_echo_bench.py``) runs, kept out of the test file.

Why it is built this way: ``sockbench run`` starts the suite as a child
``pytest`` process (pytest-benchmark owns the rounds, the statistics, the
storage and ``--benchmark-json``), and talks to it through the results folder
only:

* ``SOCKBENCH_PLAN`` names ``plan.json`` (the matrix), ``SOCKBENCH_OUT`` the
  results folder.  Without them (``pytest bench/`` by hand) the suite runs the
  default matrix over every available server into ``results/<UTC time>/``.
* Every round's result (a ``LoadResult`` with the cell it is a round of
  attached, ``sockbench.bench.schema``) is written to ``raw/`` atomically the
  moment it ends, so a Ctrl-C loses at most the round in flight.
* ``progress.jsonl`` gets one line per cell start and per round end; the
  parent tails it to draw the progress display.  A file, not a pipe: the child
  never blocks on a parent that stopped reading.

The open-loop sweep needs each server's peak: it is the best valid closed-loop
median the same server reached at the sweep's message size in this session
(the closed cells of a server run before its open cells).  When those cells
were filtered out, one closed-loop calibration run measures it
(``calibration/<server>.json``).
"""

import json
import os
import sys
import time

from sockbench.bench.load.harness import run_load
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.report.store import RAW_DIR, CellStats, raw_name
from sockbench.bench.schema import Cell, CellContext, Machine
from sockbench.bench.suite.plan import Plan, default_plan
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info
from sockbench.servers import registry
from sockbench.timestamps import folder_stamp, iso_utc

__all__ = [
    "ENV_PLAN",
    "ENV_OUT",
    "PROGRESS_FILE",
    "SuiteContext",
    "new_meta",
    "update_meta",
]

ENV_PLAN = "SOCKBENCH_PLAN"
ENV_OUT = "SOCKBENCH_OUT"
PROGRESS_FILE = "progress.jsonl"


def new_meta(plan, argv=None):
    """``meta.json`` of a new run: the machine, the commit, the plan; status ``running``."""
    m = Machine(**machine_info())
    return {
        "schema": 1,
        "kind": "sockbench-run",
        "started_at": iso_utc(),
        "status": "running",
        "commit": m.git_commit,
        "dirty": m.git_dirty,
        "machine": m.to_json(),
        "plan": plan.to_dict(),
        "planned_runs": plan.total_runs(),
        "argv": list(argv) if argv is not None else list(sys.argv),
    }


def update_meta(out, **changes):
    path = os.path.join(out, "meta.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    meta.update(changes)
    write_json_atomic(path, meta)
    return meta


class SuiteContext:
    """The session state of one suite run: plan, folder, peaks, progress."""

    def __init__(self, plan, out):
        self.plan = plan
        self.out = out
        self.cells = plan.cells()
        self.index = {c.id: i for i, c in enumerate(self.cells)}
        self.peaks = {}
        #: True when the suite runs by hand and so keeps meta.json itself (else ``sockbench run`` does)
        self.owns_meta = False
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
            plan = default_plan(names, speaks={n: list(registry.get(n).protocols) for n in names})
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
            self._progress.close()

    def finish(self, exitstatus):
        """At session end: close the progress file; run by hand, also settle meta.json's status."""
        self.close()
        if self.owns_meta:
            status = {0: "complete", 2: "interrupted"}.get(int(exitstatus), "failed")
            update_meta(self.out, status=status, finished_at=iso_utc())

    def event(self, **kw):
        kw.setdefault("t", time.time())
        self._progress.write(json.dumps(kw) + "\n")

    def spec(self, cell, rate=None, size=None, conns=None, mode=None):
        p = self.plan
        return LoadSpec(
            server=cell.server,
            mode=mode or cell.mode,
            conns=conns or cell.conns,
            size=size or cell.size,
            depth=cell.depth,
            rate=rate,
            duration_s=p.duration_s,
            warmup_s=p.warmup_s,
            procs=min(p.procs, conns or cell.conns),
            server_cpus=tuple(p.server_cpus),
            client_cpus=tuple(p.client_cpus),
            interval_s=p.interval_s,
            protocol=cell.protocol,
        )

    # --- the open-loop peak ----------------------------------------------------------
    def record(self, stats):
        """Remember a finished closed-loop grid cell's median as a candidate peak.

        Only raw cells at the grid's depth count: the open loop keeps one
        message in flight per connection, and speaks raw.
        """
        c = stats.cell
        if (c.mode == "closed" and c.size == self.plan.open_size and c.protocol == "raw" and c.depth == self.plan.depth
                and not stats.invalid and stats.median > 0):
            key = c.server
            self.peaks[key] = max(self.peaks.get(key, 0.0), stats.median)

    def peak(self, server):
        """The server's peak msgs/s at the sweep's size: measured already, or calibrated now."""
        if server in self.peaks:
            return self.peaks[server], "closed-loop cells"
        cal = Cell(server, "closed", self.plan.open_size, self.plan.open_conns)
        self.event(event="calibrate", server=server)
        r = run_load(self.spec(cal), on_window=self._window)
        write_json_atomic(os.path.join(self.out, "calibration", f"{server}.json"), r.to_json())
        self.event(event="round", cell="calibrate:" + server, round=1, msgs_per_s=r.throughput.msgs_per_s, valid=r.valid)
        if not r.valid or not r.throughput.msgs_per_s > 0:
            raise RuntimeError(f"calibration of {server} failed: {r.invalid_reason}")
        self.peaks[server] = r.throughput.msgs_per_s
        return self.peaks[server], "a calibration run"

    def _window(self, start_ns, end_ns):
        # the runner draws nothing while a load runs (see runner._watch)
        self.event(event="window", start_ns=start_ns, end_ns=end_ns)

    # --- one round ---------------------------------------------------------------------
    def start_cell(self, cell):
        self.event(event="cell", cell=cell.id, index=self.index.get(cell.id, -1), desc=cell.describe())

    def run_round(self, cell, round_no, rate=None, peak=None):
        """One load run: run it, tag it with its cell, write it to raw/ at once, report progress; its ``LoadResult``."""
        # the runner keeps its display still while the load runs (see runner._watch)
        r = run_load(self.spec(cell, rate=rate), on_window=self._window)
        r = r.with_cell(CellContext.of(cell, round_no, self.plan.rounds, self.index.get(cell.id, -1), peak))
        write_json_atomic(os.path.join(self.out, RAW_DIR, raw_name(cell, round_no)), r.to_json())
        self.event(event="round", cell=cell.id, round=round_no, msgs_per_s=r.throughput.msgs_per_s,
                   p99_us=r.latency_us.p99, valid=r.valid, client_bound=r.client_bound)
        return r

    def stats(self, cell, results):
        """The ``CellStats`` of a cell's rounds (``LoadResult`` objects)."""
        return CellStats(cell, list(results))
