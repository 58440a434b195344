"""Read a results folder back: validate every raw result, group rounds into cells, summarise.

Why it is built this way: the report, the plots and ``sockbench compare`` all
start from the same folder, and all of them must survive a run that was cut
short (Ctrl-C) or a folder that was damaged.  So the one source of truth is
``raw/*.json``: one result per load run (any of ``schema.READABLE_VERSIONS``),
written atomically by the suite the moment the run ends.  ``meta.json`` (machine, commit, plan) is
optional; pytest-benchmark's JSON is never needed to rebuild a report.

Every raw file is read with ``LoadResult.from_json`` (``sockbench.bench.schema``),
which checks it and says in one line what is wrong with one that is not a
result, and its latency histogram must decode and hold exactly the
``latency_us.count`` samples its summary says; in a folder whose results carry
histograms, one that measured messages must carry one too (the percentiles
come from the merged histograms, so a missing or garbage one would change
them silently; a folder with none at all falls back to the rounds' figures).
One damaged file must not cost the rest of a run: a file that fails either
check is left out of the figures, never deleted, and named with its reason in
``Results.skipped``, which every command prints and the report counts.  The
rounds are grouped by the ``Cell`` each result says it is a round
of, in the order the suite ran them.  The statistics of a cell (medians,
spread, the exact merge of its histograms) are ``stats.CellStats``.

A round that was disturbed (foreign load on its CPUs) and measured again
leaves its set-aside attempts in ``raw/`` too, under ``discarded_name``
(``...__r<k>__disturbed<a>.json``): nothing measured is lost, but they are
not rounds.  They are read into ``CellStats.discarded``, so the report can
say how many rounds were measured again.

Layout of a results folder::

    DIR/meta.json                 machine, commit, plan, status (optional)
    DIR/plan.json                 the matrix the run was asked for (optional)
    DIR/raw/<server>__<workload>__r<k>.json    one result per round
    DIR/raw/<server>__<workload>__r<k>__disturbed<a>.json    attempt a of round k, set aside
"""

import glob
import json
import os
import re
from dataclasses import dataclass, field

from sockbench.bench.report.stats import UNSTABLE_SPREAD, CellStats, decode_hdr, merged_hdr
from sockbench.bench.schema import LoadResult, Machine, RunMeta, SchemaError
from sockbench.errors import SockbenchError
from sockbench.jsonfile import write_json_atomic
from sockbench.servers.protocols import PROTOCOLS

__all__ = [
    "RAW_DIR",
    "UNSTABLE_SPREAD",
    "CellStats",
    "Results",
    "load_results",
    "left_out_lines",
    "write_json_atomic",
    "raw_name",
    "discarded_name",
    "is_discarded",
    "decode_hdr",
    "merged_hdr",
    "machine_line",
]

RAW_DIR = "raw"
#: the protocols in the table's order (servers.protocols owns it)
_PROTO_ORDER = {p: i for i, p in enumerate(PROTOCOLS)}


#: the file name of a set-aside attempt (``discarded_name``)
_DISCARDED_RE = re.compile(r"__r\d+__disturbed\d+\.json$")


def raw_name(cell, round_no):
    return f"{cell.server}__{cell.workload_id}__r{round_no}.json"


def is_discarded(fname):
    """True when a file of raw/ is an attempt set aside (``discarded_name``), not a round."""
    return bool(_DISCARDED_RE.search(os.path.basename(fname)))


def discarded_name(cell, round_no, attempt):
    """The name in raw/ of attempt ``attempt`` of round ``round_no``, set aside because it was disturbed."""
    return f"{cell.server}__{cell.workload_id}__r{round_no}__disturbed{attempt}.json"


@dataclass
class Results:
    """One results folder: its metadata, and its runs grouped into cells."""

    path: str
    meta: RunMeta  # ``meta.json`` (empty when the folder has none)
    cells: dict  # (server, workload_id) -> CellStats, in run order; workload_id carries the protocol
    #: every attempt set aside because it was disturbed (those of a cell with no round are here only)
    discarded: list = field(default_factory=list)
    #: ``(file, reason)`` of every raw file left out because it is unreadable or inconsistent
    skipped: list = field(default_factory=list)

    def skipped_lines(self):
        """One warning line per raw file left out, naming it and saying why, then their count."""
        return left_out_lines(self.skipped)

    @property
    def results(self):
        """Every round of every cell, as ``LoadResult`` objects."""
        return [r for c in self.cells.values() for r in c.results]

    @property
    def runs(self):
        """Every round as a result dict (``LoadResult.to_json()``), for code not yet reading ``results``."""
        return [r for c in self.cells.values() for r in c.runs]

    def servers(self):
        out = []
        for c in self.cells.values():
            if c.server not in out:
                out.append(c.server)
        return out

    def workloads(self):
        """Workload ids in run order, each with its Cell (server left as the first one seen)."""
        out = {}
        for c in self.cells.values():
            out.setdefault(c.workload_id, c.cell)
        return out

    def cell(self, server, workload_id):
        return self.cells.get((server, workload_id))

    @property
    def plan(self):
        """The plan the run was asked for (``meta.json``'s), None when unrecorded."""
        return self.meta.plan

    def grid_depth(self):
        """The depth of the closed-loop grid (the plan's, else the most common raw closed depth)."""
        if self.plan is not None and self.plan.depth:
            return int(self.plan.depth)
        depths = [c.cell.depth for c in self.cells.values() if c.cell.mode == "closed" and c.cell.protocol == "raw"]
        return max(set(depths), key=depths.count) if depths else 1

    def transports(self):
        """The transports measured, in run order."""
        out = []
        for c in self.cells.values():
            if c.cell.transport not in out:
                out.append(c.cell.transport)
        return out

    def base_transport(self):
        """The transport the summary, the grid's tables and plots 1-6 are about: tcp when measured, else the first."""
        ts = self.transports()
        return "tcp" if "tcp" in ts or not ts else ts[0]

    def worker_counts(self):
        """The server process counts measured, ascending."""
        return sorted({c.cell.workers for c in self.cells.values()})

    def base_workers(self):
        """The worker count the summary and plots 1-6 are about: one server process when measured, else the fewest."""
        counts = self.worker_counts()
        return 1 if 1 in counts or not counts else counts[0]

    def pythons(self):
        """The interpreters the servers ran under (``--python`` labels), in the plan's order, else run order; [] for
        a run on sockbench's own interpreter alone."""
        seen = []
        for c in self.cells.values():
            if c.cell.python and c.cell.python not in seen:
                seen.append(c.cell.python)
        plan = self.meta.plan
        planned = [p.get("label") for p in (plan.pythons if plan is not None else ())]
        return [p for p in planned if p in seen] + [p for p in seen if p not in planned]

    def base_python(self):
        """The interpreter the summary and the grid's plots are about: the first one named (None: the run had none)."""
        ps = self.pythons()
        return ps[0] if ps else None

    def in_base(self, c):
        """True when ``c`` (a CellStats) is over the base transport with the base worker count and interpreter.

        The other transports, worker counts and interpreters, and TLS, are dimensions of their own sections
        (``dimensions.py``); the summary and the grid's plots compare servers on one of each.  A server that
        has no interpreter of sockbench's choosing (a ``--command``) is in every interpreter's base.
        """
        return (c.cell.transport == self.base_transport() and c.cell.workers == self.base_workers()
                and c.cell.python in ("", self.base_python() or "") and not c.cell.tls)

    def has_tls(self):
        """True when the run measured cells over TLS (``sockbench run --tls on``): the report's TLS section."""
        return any(c.cell.tls for c in self.cells.values())

    def protocol_sections(self):
        """Workloads measured in raw and in at least one framed protocol, in run order.

        Returns ``[(base workload id, [protocols in order, raw first], {(server, protocol): CellStats})]``.
        """
        groups = {}
        for c in self.cells.values():
            groups.setdefault(c.cell.base_workload_id, {})[(c.server, c.cell.protocol)] = c
        out = []
        for base, cells in groups.items():
            protos = []
            for _, p in cells:
                if p not in protos:
                    protos.append(p)
            if "raw" not in protos or len(protos) < 2:
                continue
            servers = {s for s, p in cells if p != "raw"}
            cells = {k: v for k, v in cells.items() if k[0] in servers}
            protos = ["raw"] + sorted((p for p in protos if p != "raw"), key=lambda p: (_PROTO_ORDER.get(p, 9), p))
            out.append((base, protos, cells))
        return out

    def machine_record(self):
        """The machine of the run: ``meta.json``'s, else the first result's (``Machine()`` when unknown)."""
        m = self.meta.machine
        if m is not None and m != Machine():
            return m
        for r in self.results:
            if r.machine is not None:
                return r.machine
        return Machine()

    def machine(self):
        """``machine_record()`` as a dict, in the one spelling of its keys."""
        return self.machine_record().to_json()

    def commit(self):
        c = self.meta.commit
        if not c:
            for r in self.results:
                if r.machine is not None and r.machine.git_commit:
                    return str(r.machine.git_commit)[:12] + ("+dirty" if r.machine.git_dirty else "")
            return "unknown"
        return str(c)[:12] + ("+dirty" if self.meta.dirty else "")

    def footnote(self):
        return f"{machine_line(self.machine_record())} · commit {self.commit()} · {self.meta.started_at or _first_started(self.results)}"


def left_out_lines(skipped):
    """Warning lines for ``(file, reason)`` pairs of raw files left out: one per file, then their count."""
    lines = [f"left out {fname}: {why}" for fname, why in skipped]
    if skipped:
        n = len(skipped)
        lines.append(f"{n} raw file{'s' if n != 1 else ''} left out (unreadable or inconsistent; nothing deleted)")
    return lines


def _first_started(results):
    times = sorted(str(r.started_at) for r in results if r.started_at)
    return times[0] if times else "time unknown"


def machine_line(m):
    """One short line that identifies the machine (a ``Machine``, or a machine dict in any of its spellings)."""
    if isinstance(m, dict):
        m = Machine.from_json(m)
    return m.line()


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SockbenchError(f"{path} is corrupt ({what} is not valid JSON: {e}); delete it or re-run") from None
    except OSError as e:
        raise SockbenchError(f"cannot read {path}: {e.strerror}") from None


class _LeftOut(Exception):
    """A raw file that is not a usable result; its one argument says why."""


def _read_result(fname):
    """One raw file as a ``LoadResult``, its histogram checked against its summary; else ``_LeftOut(why)``."""
    try:
        with open(fname) as f:
            d = json.load(f)
    except ValueError as e:
        raise _LeftOut(f"not valid JSON ({e})") from None
    except OSError as e:
        raise _LeftOut(f"cannot be read ({e.strerror or e})") from None
    if not isinstance(d, dict):
        raise _LeftOut("not a sockbench result (not a JSON object)")
    try:
        r = LoadResult.from_json(d, fname)
    except SchemaError as e:
        msg = str(e)
        raise _LeftOut(msg[len(fname) + 1:] if msg.startswith(fname + " ") else msg) from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise _LeftOut(f"not a sockbench result ({type(e).__name__}: {e})") from None
    count = r.latency_us.count
    if not r.hdr:
        return r  # whether that is missing depends on the folder: see load_results
    h = decode_hdr(r.hdr)
    if h is None:
        raise _LeftOut("corrupt: its hdr histogram cannot be decoded")
    if h.get_total_count() != (count or 0):
        raise _LeftOut(f"inconsistent: its hdr histogram holds {h.get_total_count()} samples, "
                       f"latency_us.count says {count}")
    return r


def load_results(path):
    """Load and validate a results folder; a folder-level problem is one SockbenchError line.

    A raw file that cannot be read, is not a result, or whose histogram does not match its summary is
    left out and listed in ``Results.skipped``; only a folder with no readable round is refused.
    """
    if not os.path.exists(path):
        raise SockbenchError(f"results folder {path} does not exist")
    if not os.path.isdir(path):
        raise SockbenchError(f"{path} is not a results folder (it is a file)")
    meta = RunMeta()
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
        d = _read_json(meta_path, "meta.json")
        if not isinstance(d, dict):
            raise SockbenchError(f"{meta_path} is corrupt (not a JSON object)")
        meta = RunMeta.from_json(d, meta_path)
    files = sorted(glob.glob(os.path.join(path, RAW_DIR, "*.json")))
    if not files:
        raise SockbenchError(
            f"{path} holds no results (no {RAW_DIR}/*.json): not a sockbench results folder, or a run that finished no load run"
        )
    cells = {}
    order = []
    discarded = []
    skipped = []
    target = _ci_target(meta)  # mode -> the interval target (None: fixed rounds)
    read = []
    for fname in files:
        try:
            read.append((fname, _read_result(fname)))
        except _LeftOut as e:
            skipped.append((fname, str(e)))
    # the harness writes a histogram with every result: where the folder's results carry them, the
    # percentiles are their merge, and one that measured messages but has none would be dropped from it
    with_hdr = any(r.hdr for _, r in read)
    for fname, r in read:
        if with_hdr and not r.hdr and r.latency_us.count:
            skipped.append((fname, f"inconsistent: latency_us.count is {r.latency_us.count} but it has no hdr "
                                   f"histogram (the folder's other results have one)"))
            continue
        if is_discarded(fname):
            discarded.append(r)
            continue
        cell = r.identity()
        key = (cell.server, cell.workload_id)
        if key not in cells:
            cells[key] = CellStats(cell, ci_target=target(cell.mode))
            order.append((_run_order(r), key))
        cells[key].results.append(r)
    skipped.sort()
    if not cells:
        if skipped:
            raise SockbenchError(f"{path} holds no readable round: all {len(skipped)} raw file(s) are unreadable or "
                                 f"inconsistent (first: {skipped[0][0]}: {skipped[0][1]})")
        raise SockbenchError(f"{path} holds no rounds, only {len(discarded)} attempt(s) set aside as disturbed")
    for r in discarded:
        cell = r.identity()
        if (cell.server, cell.workload_id) in cells:
            cells[(cell.server, cell.workload_id)].discarded.append(r)
    # run order: the order the suite ran them, from each cell's first start time
    ordered = {}
    for _, key in sorted(order, key=lambda t: t[0]):
        cs = cells[key]
        cs.results.sort(key=lambda r: r.round_no)
        ordered[key] = cs
    return Results(os.path.abspath(path), meta, ordered, discarded, skipped)


def _ci_target(meta):
    """``mode -> target``: the plan's ``ci_for(mode)`` when its cells ran rounds until stable (``min_rounds <
    max_rounds``), else None."""
    plan = meta.plan
    if plan is not None and plan.min_rounds < plan.max_rounds and plan.ci:
        return lambda mode: float(plan.ci_for(mode))
    return lambda mode: None


def _run_order(r):
    index = r.cell.index if r.cell is not None and r.cell.index is not None else 10**9
    return (int(index), "" if r.started_at is None else str(r.started_at), r.round_no)
