"""The files a results folder offers to the tools people already use: ``.hgrm``, ``results.csv`` and the
CI-charting export.

Why it is built this way: the report is for reading; these files are for
other programs, so each one is written exactly in the format its tool reads,
from the same ``store.Results`` the report is built from (``sockbench report
DIR`` rewrites them too), and every writer has a reader here or in the tests
that parses what it wrote.

* ``hgrm/<server>__<workload>.hgrm``: HdrHistogram's percentile distribution
  of the cell's merged histogram (every round, every load process), in
  microseconds, the text ``outputPercentileDistribution`` writes in Java:
  the columns Value, Percentile, TotalCount, 1/(1-Percentile), then the
  ``#[Mean ...]``, ``#[Max ...]`` and ``#[Buckets ...]`` footer, so
  HdrHistogram's plotter (``plotFiles.html``) and hdr-plot read it.  Written
  here, not by the package's ``output_percentile_distribution``, which
  scales the mean but not the standard deviation and prints the count as a
  float; the figures are the package's, computed over the recorded buckets
  only (``stats.recorded_buckets``), since its iterator walks every bucket
  of the layout in Python.
* ``results.csv``: tidy data, one row per cell and round, one column per
  variable: the cell's identity (every field of ``schema.Cell``), the round,
  every result field the schema declares a column for
  (``schema.csv_columns``: throughput, the round's own latency percentiles,
  errors, server and client CPU, client stalls, a udp round's
  datagram accounting, a TLS round's negotiated version, cipher and group
  and handshakes a second; empty where a round has none), and the round's and
  the cell's flags.  A new dimension or field becomes a column without a
  change here.
* ``ci/msgs_per_s.json`` and ``ci/p99_us.json``: github-action-benchmark's
  custom format (``customBiggerIsBetter`` and ``customSmallerIsBetter``: a
  list of ``{name, unit, value, range, extra}``), one entry per cell, the
  cell's median msgs/s (closed loop) and its merged p99 (every cell), so a
  repository can chart every commit with that action.
"""

import csv
import dataclasses
import io
import json
import math
import os

from sockbench.bench.report.stats import recorded_buckets, round_flags
from sockbench.bench.schema import Cell
from sockbench.bench.schema import csv_columns as schema_columns
from sockbench.jsonfile import write_json_atomic

__all__ = [
    "HGRM_DIR", "CSV_FILE", "CI_DIR", "CI_FILES", "hgrm_text", "parse_hgrm", "csv_columns", "csv_rows",
    "ci_entries", "write_formats", "hgrm_name", "read_ci", "percentile_steps", "mean_and_stddev",
]

HGRM_DIR = "hgrm"
CSV_FILE = "results.csv"
CI_DIR = "ci"
#: file name -> (github-action-benchmark tool, what it charts)
CI_FILES = {
    "msgs_per_s.json": ("customBiggerIsBetter", "closed-loop msgs/s, median over rounds"),
    "p99_us.json": ("customSmallerIsBetter", "p99 latency in µs, merged over rounds"),
}
#: the percentile spacing of an .hgrm, as HdrHistogram's own tools write it
TICKS_PER_HALF_DISTANCE = 5


def percentile_steps(h, ticks_per_half_distance=TICKS_PER_HALF_DISTANCE):
    """``[(value, percentile 0-100, total count)]`` as Java's ``PercentileIterator`` steps through ``h``.

    Levels start at 0 and advance by ``100 / (ticks * 2^(floor(log2(100 / (100 - level))) + 1))``, so
    there are ``ticks`` steps per halving of the distance to 100%; a recorded value is reported at
    every level its cumulative count reaches (its highest equivalent value), and the last one again at
    100%.  (The Python package's iterator advances differently: 0, 10, 19, 27.1 ...)
    """
    return _steps(recorded_buckets(h), h.get_total_count(), ticks_per_half_distance)


def _steps(buckets, total, ticks_per_half_distance=TICKS_PER_HALF_DISTANCE):
    """``percentile_steps`` over ``recorded_buckets`` that hold ``total`` counts."""
    if not total:
        return []
    steps = []
    level = 0.0
    cum = 0
    for _, value, count in buckets:
        cum += count
        pct = 100.0 * cum / total
        while level <= pct:
            steps.append((value, level, cum))
            level += 100.0 / (ticks_per_half_distance * 2 ** (int(math.log2(100.0 / (100.0 - level))) + 1))
            if cum >= total:
                break  # Java's iterator leaves the last value after one step, then reports it at 100%
        if cum >= total:
            steps.append((value, 100.0, cum))
            break
    return steps


def mean_and_stddev(h):
    """HdrHistogram's mean and standard deviation of ``h`` (each count at its bucket's middle value), computed as
    its ``get_mean_value`` and ``get_stddev`` compute them, to the last bit, from the recorded buckets alone."""
    return _moments(recorded_buckets(h), h.get_total_count())


def _moments(buckets, total):
    """``mean_and_stddev`` over ``recorded_buckets`` that hold ``total`` counts."""
    if not total:
        return 0.0, 0.0
    middles = [(lowest + ((highest + 1 - lowest) >> 1), count) for lowest, highest, count in buckets]
    mean = float(sum(count * middle for middle, count in middles)) / total
    dev_total = 0.0
    for middle, count in middles:
        dev = middle * 1.0 - mean
        dev_total += (dev * dev) * count
    return mean, math.sqrt(dev_total / total)


def hgrm_text(h, scale=1000.0):
    """HdrHistogram's percentile distribution of histogram ``h``, values divided by ``scale`` (ns -> µs)."""
    sig = h.significant_figures
    out = io.StringIO()
    out.write("%12s %14s %10s %14s\n\n" % ("Value", "Percentile", "TotalCount", "1/(1-Percentile)"))
    line = f"%12.{sig}f %2.12f %10d %14.2f\n"
    last = f"%12.{sig}f %2.12f %10d\n"
    buckets, total = recorded_buckets(h), h.get_total_count()
    for value, pct, cum in _steps(buckets, total):
        if pct < 100.0:
            out.write(line % (value / scale, pct / 100.0, cum, 1.0 / (1.0 - pct / 100.0)))
        else:
            out.write(last % (value / scale, pct / 100.0, cum))
    mean, stddev = _moments(buckets, total)
    out.write(f"#[Mean    = %12.{sig}f, StdDeviation   = %12.{sig}f]\n" % (mean / scale, stddev / scale))
    out.write(f"#[Max     = %12.{sig}f, Total count    = %12d]\n" % (h.get_max_value() / scale, h.get_total_count()))
    out.write("#[Buckets = %12d, SubBuckets     = %12d]\n" % (h.bucket_count, h.sub_bucket_count))
    return out.getvalue()


def parse_hgrm(text):
    """An .hgrm as ``{"rows": [(value, percentile 0-1, total count)], "mean", "stddev", "max", "count"}``.

    Read the way HdrHistogram's plotter reads one: the lines of numbers, then the bracketed footer.
    """
    rows, foot = [], {}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#["):
            for part in s[2:-1].split(","):
                key, _, val = part.partition("=")
                foot[key.strip()] = float(val)
            continue
        fields = s.split()
        if len(fields) in (3, 4):
            try:
                rows.append((float(fields[0]), float(fields[1]), int(fields[2])))
            except ValueError:
                continue  # the header line
    return {"rows": rows, "mean": foot.get("Mean"), "stddev": foot.get("StdDeviation"), "max": foot.get("Max"),
            "count": int(foot["Total count"]) if "Total count" in foot else None}


def hgrm_name(cell):
    return f"{cell.server}__{cell.workload_id}.hgrm"


# --- results.csv -------------------------------------------------------------------------------------

def _cell_fields():
    """The Cell fields that identify a cell, server first (a field added to Cell becomes a column by itself)."""
    names = [f.name for f in dataclasses.fields(Cell)]
    return ["server"] + [n for n in names if n != "server"]


#: the report's own columns after the measured ones: the round's and the cell's flags
_FLAGS = ("flags", "cell_flags")


def csv_columns():
    """The identity, the round, every result field the schema declares a column for, the flags."""
    return _cell_fields() + ["round"] + [name for name, _ in schema_columns()] + list(_FLAGS)


def _v(x):
    """A CSV value: empty for unknown, plain numbers otherwise."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    return x


def csv_rows(results):
    """One dict per (cell, round), keyed by ``csv_columns()``, in run order."""
    rows = []
    measured = schema_columns()
    for c in results.cells.values():
        ident = {name: getattr(c.cell, name) for name in _cell_fields()}
        cell_flags = " ".join(c.flags())
        for r in c.results:
            row = {**ident, "round": r.round_no, **{name: get(r) for name, get in measured},
                   "flags": " ".join(round_flags(r)), "cell_flags": cell_flags}
            rows.append({k: _v(v) for k, v in row.items()})
    return rows


# --- github-action-benchmark -----------------------------------------------------------------------


def _extra(c):
    flags = " ".join(c.flags())
    return f"{len(c.results)} rounds" + (f"; flags: {flags}" if flags else "")


def ci_entries(results):
    """``{file name: [entry, ...]}`` in github-action-benchmark's custom format (``CI_FILES``)."""
    bigger, smaller = [], []
    for c in results.cells.values():
        name = c.cell.id
        if c.cell.mode == "closed" and math.isfinite(c.median):
            rng = f"± {c.stdev:.4g}"
            bigger.append({"name": name, "unit": "msgs/s", "value": round(c.median, 3), "range": rng,
                           "extra": _extra(c)})
        p99 = c.latency_summary().p99
        if p99 is not None and math.isfinite(p99):
            p99s = [r.latency_us.p99 for r in c.results if r.latency_us.p99 is not None]
            rng = f"{min(p99s):.4g}-{max(p99s):.4g} over rounds" if p99s else ""
            smaller.append({"name": name, "unit": "us", "value": round(p99, 3), "range": rng, "extra": _extra(c)})
    return {"msgs_per_s.json": bigger, "p99_us.json": smaller}


# --- writing them all --------------------------------------------------------------------------------


def write_formats(results, path):
    """Write ``hgrm/``, ``results.csv`` and ``ci/`` into the results folder ``path``; returns the paths written."""
    written = []
    hdir = os.path.join(path, HGRM_DIR)
    os.makedirs(hdir, exist_ok=True)
    for old in os.listdir(hdir):
        if old.endswith(".hgrm"):
            os.unlink(os.path.join(hdir, old))
    for c in results.cells.values():
        h = c.hdr()
        if h is None or h.get_total_count() == 0:
            continue
        p = os.path.join(hdir, hgrm_name(c.cell))
        with open(p, "w") as f:
            f.write(hgrm_text(h, c.hdr_scale))
        written.append(p)
    p = os.path.join(path, CSV_FILE)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=csv_columns(), lineterminator="\n")
        w.writeheader()
        w.writerows(csv_rows(results))
    written.append(p)
    cdir = os.path.join(path, CI_DIR)
    os.makedirs(cdir, exist_ok=True)
    for fname, entries in ci_entries(results).items():
        p = os.path.join(cdir, fname)
        write_json_atomic(p, entries)
        written.append(p)
    return written


def read_ci(path):
    """A github-action-benchmark file back as its list of entries (for tests and scripts)."""
    with open(path) as f:
        return json.load(f)
