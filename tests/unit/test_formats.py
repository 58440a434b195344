"""The files for other tools, read back: ``.hgrm`` (HdrHistogram's plotter), ``results.csv``, the
github-action-benchmark export, ``sockbench history``, and the command-line conventions."""

import csv
import glob
import json
import os

import pytest

from report_fixture import make_results
from sockbench.bench.report.document import build_report
from sockbench.bench.report.formats import (
    CI_FILES, csv_columns, hgrm_name, hgrm_text, mean_and_stddev, parse_hgrm, percentile_steps,
)
from sockbench.bench.report.history import build_history, history_rows
from sockbench.bench.report.stats import recorded_buckets
from sockbench.bench.report.store import load_results
from sockbench.bench.schema import Cell
from sockbench.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = make_results(str(tmp_path_factory.mktemp("formats")), servers=("selectors", "uvloop"))
    build_report(d)
    return d


def test_hgrm_is_hdrhistograms_percentile_distribution(folder):
    results = load_results(folder)
    for c in results.cells.values():
        h = c.hdr()
        text = open(os.path.join(folder, "hgrm", hgrm_name(c.cell))).read()
        assert text.startswith("       Value     Percentile TotalCount 1/(1-Percentile)\n\n")
        got = parse_hgrm(text)
        assert got["count"] == h.get_total_count() == got["rows"][-1][2]
        # values in µs, the footer scaled alike (the Python writer leaves StdDeviation in ns); mean_and_stddev is
        # the package's get_mean_value and get_stddev to the bit (the test below), without their walk of every bucket
        mean, stddev = mean_and_stddev(h)
        assert got["stddev"] == pytest.approx(stddev / 1000, abs=1e-3)
        assert got["mean"] == pytest.approx(mean / 1000, abs=1e-3)
        assert got["max"] == pytest.approx(h.get_max_value() / 1000, abs=1e-3)
        values = [v for v, _, _ in got["rows"]]
        pcts = [p for _, p, _ in got["rows"]]
        assert values == sorted(values) and pcts == sorted(pcts) and pcts[0] == 0.0 and pcts[-1] == 1.0
        # Java's steps: 5 per halving of the distance to 100%
        assert pcts[:8] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6])
        # every row is a recorded value whose cumulative count reaches its percentile, as Java's iterator reports
        total = h.get_total_count()
        for v, p, cum in got["rows"]:
            assert cum / total >= p - 1e-9 and h.get_count_at_value(round(v * 1000)) > 0
        # the last line has no 1/(1-p) column, every other line has four
        lines = [ln.split() for ln in text.splitlines()[2:] if ln and not ln.startswith("#")]
        assert all(len(f) == 4 for f in lines[:-1]) and len(lines[-1]) == 3
    break_even = percentile_steps(c.hdr())
    assert break_even[-1][1] == 100.0


def test_the_hgrm_figures_are_hdrhistograms_own_to_the_bit(folder):
    # the writer reads the recorded buckets in place; the package's iterator, mean and deviation give the same
    results = load_results(folder)
    for c in list(results.cells.values())[:3]:
        h = c.hdr()
        buckets = recorded_buckets(h)
        assert [(hi, n) for _, hi, n in buckets] == [(it.value_iterated_to, it.count_at_value_iterated_to)
                                                     for it in h.get_recorded_iterator()]
        assert all(h.get_lowest_equivalent_value(hi) == lo for lo, hi, _ in buckets)
        assert mean_and_stddev(h) == (h.get_mean_value(), h.get_stddev())


def test_hgrm_of_one_value():
    from sockbench.bench.load.hdr import new_histogram

    h = new_histogram()
    h.record_value(25_000, 10)
    got = parse_hgrm(hgrm_text(h))
    assert got["count"] == 10 and got["stddev"] == 0.0 and [r[1] for r in got["rows"]] == [0.0, 1.0]


def test_results_csv_is_tidy(folder):
    results = load_results(folder)
    with open(os.path.join(folder, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == csv_columns()
    # every field of a cell is a column: a new dimension appears without a change to the writer
    assert set(f for f in Cell.__dataclass_fields__) <= set(rows[0])
    assert len(rows) == len(results.results)
    assert {(r["server"], r["mode"], int(r["size"]), int(r["conns"]), int(r["round"])) for r in rows} == {
        (c.cell.server, c.cell.mode, c.cell.size, c.cell.conns, r.round_no) for c in results.cells.values() for r in c.results}
    for r in rows:
        assert float(r["msgs_per_s"]) > 0 and float(r["p99_us"]) >= float(r["p50_us"]) > 0
        assert r["valid"] in ("true", "false")
        assert (r["target_rate"] != "") == (r["mode"] == "open")


def test_ci_export_is_github_action_benchmarks_custom_format(folder):
    results = load_results(folder)
    closed = [c for c in results.cells.values() if c.cell.mode == "closed"]
    for fname, (tool, _) in CI_FILES.items():
        entries = json.load(open(os.path.join(folder, "ci", fname)))
        assert entries and all(set(e) == {"name", "unit", "value", "range", "extra"} for e in entries)
        assert all(isinstance(e["value"], float) and e["value"] > 0 for e in entries)
        names = {e["name"] for e in entries}
        if tool == "customBiggerIsBetter":
            assert {e["unit"] for e in entries} == {"msgs/s"} and names == {c.cell.id for c in closed}
        else:
            assert {e["unit"] for e in entries} == {"us"} and names == {c.cell.id for c in results.cells.values()}


def test_history_orders_folders_by_time_and_labels_commits(tmp_path, capsys):
    new = make_results(str(tmp_path / "b"), servers=("selectors", "uvloop"), slowdown={"uvloop": 0.2}, seed=2)
    old = make_results(str(tmp_path / "a"), servers=("selectors", "uvloop"))
    meta = json.load(open(os.path.join(new, "meta.json")))
    meta.update(started_at="2026-12-01T00:00:00Z", commit="feedbeef", dirty=True)
    json.dump(meta, open(os.path.join(new, "meta.json"), "w"))
    h = build_history([new, old])  # given newest first: ordered by time all the same
    assert [commit for _, _, commit in h.folders] == ["0123abc", "feedbeef+dirty"]
    assert h.cells and all(":closed-" in c for c in h.cells)
    uv = next(c for c in h.cells if c.startswith("uvloop:"))
    assert h.points[(1, uv)].median < 0.9 * h.points[(0, uv)].median  # the 20% slowdown shows
    columns, rows = history_rows(h)
    assert columns[:2] == ["started", "commit"] and len(rows) == 2
    png = str(tmp_path / "h.png")
    assert main(["history", old, new, "--cells", "*:open-*", "--out", png]) == 0
    out = capsys.readouterr().out
    assert "feedbeef+dirty" in out and "open-64B-c100-25pct" in out and os.path.getsize(png) > 10_000
    assert main(["history", old, "--cells", "nope:*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sockbench: history: no cell matches")


def test_history_warns_about_each_file_it_leaves_out(tmp_path, capsys):
    a = make_results(str(tmp_path / "a"), servers=("uvloop",))
    b = make_results(str(tmp_path / "b"), servers=("uvloop",), seed=2)
    bad = sorted(glob.glob(os.path.join(b, "raw", "*.json")))[:2]
    for raw in bad:
        open(raw, "w").write("{ not json")
    png = str(tmp_path / "h.png")
    assert main(["history", a, b, "--out", png]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    # one line per file, named under its folder, then the count, as report and compare say it
    assert len(err) == 3 and "Traceback" not in "\n".join(err), err
    for line, raw in zip(err, bad):
        assert line.startswith(f"sockbench: warning: left out {raw}: not valid JSON"), err
    assert err[2] == "sockbench: warning: 2 raw files left out (unreadable or inconsistent; nothing deleted)"
    assert [f for f, _ in build_history([a, b]).skipped] == bad


def test_version_json_and_one_prefix(folder, capsys):
    from sockbench import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sockbench {__version__}"
    assert main(["servers", "--json"]) == 0
    servers = json.loads(capsys.readouterr().out)
    assert {"blocking", "uvloop", "cython"} <= {s["name"] for s in servers}
    assert all(set(s) == {"name", "available", "reason", "model", "protocols", "transports", "plugin", "tls"} for s in servers)
    assert main(["compare", folder, folder, "--json"]) == 0
    cmp_ = json.loads(capsys.readouterr().out)
    assert cmp_["rows"] and all(r["ratio"] == 1.0 for r in cmp_["rows"])
    for argv in (["nope"], ["load", "--mode"], ["compare"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sockbench: ") and "sockbench: sockbench" not in err and "sockbench load: " not in err


@pytest.mark.slow
def test_piped_output_is_not_wrapped(folder, capsys):
    # under pytest stdout is not a terminal: a long line must come out whole
    assert main(["report", folder]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("report.html") and os.sep in line for line in lines)
    assert all(not line.startswith(" " * 9) or "report.md" in line for line in lines)
