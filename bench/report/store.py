"""Read a results folder back: validate every raw result, group rounds into cells, summarise.

Why it is built this way: the report, the plots and ``sockbench compare`` all
start from the same folder, and all of them must survive a run that was cut
short (Ctrl-C) or a folder that was damaged.  So the one source of truth is
``raw/*.json``: one schema-1 result per load run, written atomically by the
suite the moment the run ends.  ``meta.json`` (machine, commit, plan) is
optional; pytest-benchmark's JSON is never needed to rebuild a report.

Latency percentiles of a cell come from the exact merge of its rounds' HDR
histograms (``hdr``), never from an average of per-round percentiles.
Throughput is summarised pyperf-style: the median over rounds, with the
standard deviation as the spread; a spread of 10% of the median or more marks
the cell *unstable*.

Layout of a results folder::

    DIR/meta.json                 machine, commit, plan, status (optional)
    DIR/plan.json                 the matrix the run was asked for (optional)
    DIR/raw/<server>__<workload>__r<k>.json    one schema-1 result per round
"""

import base64
import glob
import json
import math
import os
import statistics
from dataclasses import dataclass, field

from sockbench.bench.suite.plan import Cell
from sockbench.errors import SockbenchError
from sockbench.jsonfile import write_json_atomic
from sockbench.thresholds import UNSTABLE_SPREAD

__all__ = [
    "RAW_DIR",
    "UNSTABLE_SPREAD",
    "CellStats",
    "Results",
    "load_results",
    "write_json_atomic",
    "raw_name",
    "decode_hdr",
    "merged_hdr",
    "machine_line",
]

RAW_DIR = "raw"
_PROTO_ORDER = {"raw": 0, "frame": 1, "json": 2}
REQUIRED_KEYS = ("server", "workload", "throughput", "latency_us", "errors", "valid")


def raw_name(cell, round_no):
    return f"{cell.server}__{cell.workload_id}__r{round_no}.json"


def decode_hdr(text):
    """An ``hdr`` field (the base64 text of HdrHistogram's ``encode()``) -> a histogram, or None.

    Values are in nanoseconds, as the harness records them (``sockbench.bench.load.hdr``).
    """
    from hdrh.histogram import HdrHistogram

    if not text:
        return None
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        base64.b64decode(raw, validate=True)
        return HdrHistogram.decode(raw)
    except Exception:
        return None


def merged_hdr(runs):
    """The exact merge of every run's histogram (None if none carries one)."""
    hists = [h for h in (decode_hdr(r.get("hdr")) for r in runs) if h is not None]
    if not hists:
        return None
    from hdrh.histogram import HdrHistogram

    first = hists[0]
    total = HdrHistogram(
        first.lowest_trackable_value, first.highest_trackable_value, first.significant_figures
    )
    for h in hists:
        total.add(h)
    return total


def _num(x, default=0.0):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _median(values):
    return statistics.median(values) if values else float("nan")


@dataclass
class CellStats:
    """All rounds of one (server, workload), summarised for tables and plots."""

    cell: Cell
    runs: list = field(default_factory=list)
    _hdr: object = field(default=None, repr=False, compare=False)
    _lat: object = field(default=None, repr=False, compare=False)
    _cdf: object = field(default=None, repr=False, compare=False)

    # --- throughput ----------------------------------------------------------------
    @property
    def server(self):
        return self.cell.server

    @property
    def workload_id(self):
        return self.cell.workload_id

    @property
    def msgs(self):
        return [_num(r["throughput"].get("msgs_per_s")) for r in self.runs]

    @property
    def median(self):
        return _median(self.msgs)

    @property
    def stdev(self):
        m = self.msgs
        return statistics.stdev(m) if len(m) >= 2 else 0.0

    @property
    def spread(self):
        """The standard deviation over rounds as a fraction of the median."""
        med = self.median
        return self.stdev / med if med > 0 else 0.0

    @property
    def unstable(self):
        return len(self.runs) >= 2 and self.spread >= UNSTABLE_SPREAD

    @property
    def mb_per_s(self):
        return _median([_num(r["throughput"].get("bytes_per_s")) for r in self.runs]) / 1e6

    @property
    def target_rate(self):
        return _median([_num(r["throughput"].get("target_rate")) for r in self.runs])

    @property
    def achieved_rate(self):
        vals = [_num(r["throughput"].get("achieved_rate", r["throughput"].get("msgs_per_s"))) for r in self.runs]
        return _median(vals)

    # --- latency (exact HDR merge) ----------------------------------------------------
    def hdr(self):
        """The exact merge of every round's histogram (values in nanoseconds), cached."""
        if self._hdr is None:
            self._hdr = (merged_hdr(self.runs),)
        return self._hdr[0]

    def hdr_cdf(self):
        """``(values_us, cumulative_counts)`` of the merged histogram, one walk over it, cached.

        ``values_us[i]`` is the highest value of the i-th recorded bucket, so
        ``percentile_us`` applies HdrHistogram's own rounding rule to it, so it
        equals ``get_value_at_percentile`` at a fraction of its cost.
        """
        if self._cdf is None:
            import numpy as np

            h = self.hdr()
            if h is None or h.get_total_count() == 0:
                self._cdf = (np.array([]), np.array([]))
            else:
                # the counts array, read in place: only the recorded buckets are visited
                counts = np.ctypeslib.as_array(h.counts)[: h.counts_len]
                idx = np.nonzero(counts)[0]
                vals = [h.get_highest_equivalent_value(h.get_value_from_index(int(i))) for i in idx]
                counts = counts[idx]
                cum = np.cumsum(counts.astype(np.int64))
                self._cdf = (np.asarray(vals, dtype=float) / self.hdr_scale, cum)
        return self._cdf

    def percentile_us(self, pct):
        """Latency at percentile ``pct`` (0-100) in microseconds from the merged histogram, or NaN."""
        import numpy as np

        vals, cum = self.hdr_cdf()
        if not len(vals):
            return float("nan")
        total = int(cum[-1])
        target = max(1, min(total, int(min(100.0, pct) / 100.0 * total + 0.5)))
        i = np.searchsorted(cum, target, side="left")
        return float(vals[min(int(i), len(vals) - 1)])

    def latency(self):
        """``{p50, p90, p99, p999, max, mean}`` in microseconds over every round.

        Percentiles come from the merged histogram; the mean is the
        count-weighted mean of the rounds' exact means (HdrHistogram's own mean
        walks every bucket, which is slow and only bucket-accurate).
        """
        if self._lat is not None:
            return self._lat
        h = self.hdr()
        means = [(_num(r["latency_us"].get("mean")), _num(r["latency_us"].get("count"), 1.0)) for r in self.runs]
        weight = sum(w for _, w in means)
        mean = sum(m * w for m, w in means) / weight if weight > 0 else float("nan")
        if h is not None and h.get_total_count() > 0:
            out = {
                "p50": self.percentile_us(50.0),
                "p90": self.percentile_us(90.0),
                "p99": self.percentile_us(99.0),
                "p999": self.percentile_us(99.9),
                "max": h.get_max_value() / self.hdr_scale,
                "mean": mean,
                "count": h.get_total_count(),
                "source": "hdr",
            }
        else:
            # no histogram: fall back to the per-round figures (the median, marked as such)
            out = {}
            for k in ("p50", "p90", "p99", "p999", "max"):
                out[k] = _median([_num(r["latency_us"].get(k)) for r in self.runs])
            out.update(mean=mean, count=0, source="median of rounds")
        self._lat = out
        return out

    @property
    def hdr_scale(self):
        """Histogram units per microsecond: 1000 (nanoseconds, the harness's unit) unless a run says ``hdr_unit: us``."""
        units = {str(r.get("hdr_unit", "ns")) for r in self.runs}
        return 1.0 if units == {"us"} else 1000.0

    # --- CPU, memory, errors, flags -----------------------------------------------
    @property
    def cpu_us_per_msg(self):
        """The server's user+sys CPU µs per message, median over rounds."""
        vals = self.cpu_us_per_msg_rounds()
        return _median(vals) if vals else float("nan")

    def _per_msg(self, kinds):
        """Per round: the server's CPU µs per message summed over ``kinds`` (user, sys), rounds without it left out."""
        vals = []
        for r in self.runs:
            per = (r.get("server_proc") or {}).get("us_per_msg") or {}
            if per:
                vals.append(sum(_num(per.get(k)) for k in kinds))
        return vals

    def cpu_us_per_msg_rounds(self):
        return self._per_msg(("user", "sys"))

    def user_us_per_msg_rounds(self):
        return self._per_msg(("user",))

    @property
    def user_us_per_msg(self):
        """The server's user CPU µs per message, median over rounds (the interpreter's share; sys is the kernel's)."""
        vals = self.user_us_per_msg_rounds()
        return _median(vals) if vals else float("nan")

    @property
    def msgs_per_cpu_s(self):
        us = self.cpu_us_per_msg
        return 1e6 / us if us and us > 0 and math.isfinite(us) else float("nan")

    def msgs_per_cpu_s_rounds(self):
        out = []
        for r in self.runs:
            per = (r.get("server_proc") or {}).get("us_per_msg") or {}
            us = _num(per.get("user")) + _num(per.get("sys"))
            if us > 0:
                out.append(1e6 / us)
        return out

    @property
    def rss_peak_bytes(self):
        vals = [_num((r.get("server_proc") or {}).get("rss_peak_bytes")) for r in self.runs]
        return max(vals) if vals else 0.0

    @property
    def client_cpu_util(self):
        return _median([_num((r.get("client") or {}).get("cpu_util")) for r in self.runs])

    @property
    def client_polling(self):
        """True when the client polled (open loop): its CPU is then always ~100%, its busy share is its load."""
        return any((r.get("client") or {}).get("polling") for r in self.runs)

    @property
    def client_load(self):
        """What decides client-bound: the busy share of a polling client, else its CPU utilisation (median)."""
        key = "busy_util" if self.client_polling else "cpu_util"
        return _median([_num((r.get("client") or {}).get(key)) for r in self.runs])

    @property
    def errors_total(self):
        return int(sum(_num((r.get("errors") or {}).get("total")) for r in self.runs))

    @property
    def errors_by_kind(self):
        out = {}
        for r in self.runs:
            for k, v in ((r.get("errors") or {}).get("by_kind") or {}).items():
                out[k] = out.get(k, 0) + int(_num(v))
        return out

    @property
    def client_bound(self):
        return any(bool(r.get("client_bound")) for r in self.runs)

    @property
    def invalid(self):
        return any(not r.get("valid", False) for r in self.runs)

    @property
    def invalid_reasons(self):
        return sorted({str(r.get("invalid_reason")) for r in self.runs if not r.get("valid", False) and r.get("invalid_reason")})

    @property
    def behind(self):
        """Open loop: did the client fall behind its schedule in any round?"""
        return any(bool(r["throughput"].get("behind")) for r in self.runs)

    def flags(self):
        out = []
        if self.invalid:
            out.append("INVALID")
        if self.client_bound:
            out.append("CLIENT-BOUND")
        if self.unstable:
            out.append("UNSTABLE")
        if self.cell.mode == "open" and self.behind:
            out.append("BEHIND")
        return out


@dataclass
class Results:
    """One results folder: its metadata, and its runs grouped into cells."""

    path: str
    meta: dict
    cells: dict  # (server, workload_id) -> CellStats, in run order; workload_id carries the protocol

    @property
    def runs(self):
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

    def grid_depth(self):
        """The depth of the closed-loop grid (the plan's, else the most common raw closed depth)."""
        plan = self.meta.get("plan") or {}
        if plan.get("depth"):
            return int(plan["depth"])
        depths = [c.cell.depth for c in self.cells.values() if c.cell.mode == "closed" and c.cell.protocol == "raw"]
        return max(set(depths), key=depths.count) if depths else 1

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

    def machine(self):
        m = dict(self.meta.get("machine") or {})
        if not m:
            for r in self.runs:
                if isinstance(r.get("machine"), dict):
                    m = dict(r["machine"])
                    break
        return m

    def commit(self):
        c = self.meta.get("commit")
        if not c:
            for r in self.runs:
                mc = r.get("machine") or {}
                if isinstance(mc, dict) and (mc.get("git_commit") or mc.get("commit")):
                    c = str(mc.get("git_commit") or mc.get("commit"))[:12]
                    return c + ("+dirty" if mc.get("git_dirty") else "")
            return "unknown"
        return str(c)[:12] + ("+dirty" if self.meta.get("dirty") else "")

    def footnote(self):
        return f"{machine_line(self.machine())} · commit {self.commit()} · {self.meta.get('started_at', _first_started(self.runs))}"


def _first_started(runs):
    times = sorted(str(r.get("started_at")) for r in runs if r.get("started_at"))
    return times[0] if times else "time unknown"


def machine_line(m):
    """One short line that identifies the machine, from whatever keys it carries."""
    parts = []
    cpu = m.get("cpu_model") or m.get("cpu") or m.get("processor")
    if cpu:
        parts.append(str(cpu))
    ncpu = m.get("cpu_count") or m.get("cores") or m.get("cpus")
    if ncpu:
        parts.append(f"{ncpu} CPUs")
    osname = " ".join(str(x) for x in (m.get("os"), m.get("kernel")) if x)
    if osname:
        parts.append(osname)
    py = m.get("python") or m.get("python_version")
    if py:
        parts.append(("Python " + str(py)) if not str(py).lower().startswith(("python", "cpython")) else str(py))
    host = m.get("hostname") or m.get("node")
    if host:
        parts.insert(0, str(host))
    return ", ".join(parts) if parts else "machine unknown"


def _cell_of(result, fname):
    c = result.get("cell")
    w = result["workload"]
    try:
        if isinstance(c, dict) and c.get("server"):
            return Cell(
                str(c["server"]),
                str(c.get("mode", w.get("mode"))),
                int(c.get("size", w.get("size"))),
                int(c.get("conns", w.get("conns"))),
                int(c.get("depth", w.get("depth", 1)) or 1),
                int(c.get("load_pct", 0) or 0),
                _protocol(c.get("protocol", w.get("protocol"))),
            ), int(c.get("round", 0))
        return Cell(str(result["server"]), str(w["mode"]), int(w["size"]), int(w["conns"]), int(w.get("depth") or 1),
                    protocol=_protocol(w.get("protocol"))), 0
    except (KeyError, TypeError, ValueError) as e:
        raise SockbenchError(f"{fname} has a malformed workload ({e!r}); it is not a sockbench result") from None


def _protocol(value):
    """A result's protocol; results written before the protocol dimension carry none and were raw."""
    if value in (None, ""):
        return "raw"
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"bad protocol {value!r}")
    return value


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SockbenchError(f"{path} is corrupt ({what} is not valid JSON: {e}); delete it or re-run") from None
    except OSError as e:
        raise SockbenchError(f"cannot read {path}: {e.strerror}") from None


def load_results(path):
    """Load and validate a results folder; any problem is one SockbenchError line."""
    if not os.path.exists(path):
        raise SockbenchError(f"results folder {path} does not exist")
    if not os.path.isdir(path):
        raise SockbenchError(f"{path} is not a results folder (it is a file)")
    meta = {}
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
        meta = _read_json(meta_path, "meta.json")
        if not isinstance(meta, dict):
            raise SockbenchError(f"{meta_path} is corrupt (not a JSON object)")
    files = sorted(glob.glob(os.path.join(path, RAW_DIR, "*.json")))
    if not files:
        raise SockbenchError(
            f"{path} holds no results (no {RAW_DIR}/*.json): not a sockbench results folder, or a run that finished no load run"
        )
    cells = {}
    order = []
    for fname in files:
        r = _read_json(fname, "the result")
        if not isinstance(r, dict) or r.get("schema") != 1:
            raise SockbenchError(f"{fname} is not a schema-1 sockbench result")
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise SockbenchError(f"{fname} is corrupt: it lacks {', '.join(missing)}")
        if not isinstance(r["throughput"], dict) or not isinstance(r["latency_us"], dict):
            raise SockbenchError(f"{fname} is corrupt: throughput/latency_us are not objects")
        cell, rnd = _cell_of(r, fname)
        key = (cell.server, cell.workload_id)
        if key not in cells:
            cells[key] = CellStats(cell)
            order.append((_run_order(r, rnd), key))
        cells[key].runs.append((rnd, r))
    # run order: the order the suite ran them, from each cell's first start time
    ordered = {}
    for _, key in sorted(order, key=lambda t: t[0]):
        cs = cells[key]
        cs.runs = [r for _, r in sorted(cs.runs, key=lambda t: t[0])]
        ordered[key] = cs
    return Results(os.path.abspath(path), meta, ordered)


def _run_order(result, rnd):
    c = result.get("cell") or {}
    return (int(c.get("index", 10**9)) if isinstance(c, dict) else 10**9, str(result.get("started_at", "")), rnd)
