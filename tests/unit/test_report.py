"""Tests of the report, the plots, ``sockbench compare`` and the ``sockbench run`` plan and progress display.

Everything here works on a synthetic results folder (``report_fixture``):
schema-2 results with real HDR histograms, fast and deterministic.  The
end-to-end runs of the real pipeline are in ``tests/e2e/test_run.py``; the
statistics behind ``compare`` and the rounds rule are proved in
``test_compare_stats.py`` and ``test_rounds.py``.
"""

import glob
import json
import os
import re
import time

import pytest
from PIL import Image

from report_fixture import PROTO_COST_US, make_results
from sockbench.bench.report.compare import DRIFT_MIN_SERVERS, UNDECIDED, server_drift, compare, client_stalls_differ, widened
from sockbench.bench.report.stats import RatioInterval, ratio_interval
from sockbench.units import parse_percent
from sockbench.bench.suite.plan import Plan, default_plan, full_plan, quick_plan
from sockbench.bench.suite.progress import CellDone, PassStarted, RoundDone, RoundSetAside, RoundStarted, Window
from sockbench.bench.report import plots as plots_mod
from sockbench.bench.report.plots import PLOTS
from sockbench.bench.report.document import COLUMNS, build_report, protocol_cost_rows, table_rows
from sockbench.bench.suite.runner import build_plan
from sockbench.bench.report.store import load_results
from sockbench.cli import main
from sockbench.errors import UsageError
from sockbench.jsonfile import write_json_atomic

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_results(str(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def report(base):
    return build_report(base)


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sockbench: ") and "Traceback" not in err
    return lines[0]


# --- the report from a fixture folder --------------------------------------------------------


def test_every_plot_is_a_readable_png(report, base):
    assert [p[0] for p in report["plots"]] == [name for name, _ in PLOTS]
    assert all(skipped is None for _, _, skipped in report["plots"])
    for name, _ in PLOTS:
        path = os.path.join(base, "plots", name)
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert w >= 600 and h >= 400
            # not a blank canvas: a drawn plot has many distinct colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_html_is_self_contained(report):
    with open(report["html"]) as f:
        html = f.read()
    assert html.count('src="data:image/png;base64,') == len(PLOTS)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for server in ("selectors", "asyncio-protocol", "uvloop"):
        assert server in html
    assert "fixture-host" in html and "0123abc" in html  # machine and commit in the header


def test_markdown_has_a_table_per_workload_and_every_plot(report, base):
    with open(report["md"]) as f:
        md = f.read()
    results = load_results(base)
    assert md.count("\n### ") >= len(results.workloads())
    # one row per workload table, one per protocol in the protocol-cost table, and its summary row
    assert md.count("| selectors |") == len(results.workloads()) + 3 + 1
    for name, _ in PLOTS:
        assert f"(plots/{name})" in md
    assert "1.00× (fastest)" in md
    assert "None: every run was valid" in md


def test_markdown_and_html_have_the_same_sections(report):
    from html import unescape

    from markdown_it import MarkdownIt  # comes with rich

    md = MarkdownIt("commonmark").enable("table").render(open(report["md"]).read())
    html = open(report["html"]).read()
    for tag in ("h1", "h2", "h3"):
        titles = [[unescape(t) for t in re.findall(f"<{tag}>(.*?)</{tag}>", text)] for text in (md, html)]
        assert titles[0] == titles[1] and titles[0], tag
    for tag in ("<table", "<li>", "<img"):
        assert md.count(tag) == html.count(tag), tag
    assert md.count("<tr") == html.count("<tr") + 1  # a Markdown table needs a header row: the settings' one


def test_latency_comes_from_the_merged_histogram(base):
    results = load_results(base)
    cell = next(iter(results.cells.values()))
    merged = cell.hdr()
    assert merged.get_total_count() == sum(r.latency_us.count for r in cell.results)
    for pct in (50.0, 99.0, 99.9):
        assert cell.percentile_us(pct) == merged.get_value_at_percentile(pct) / 1000.0
    # the merged p99 lies within the rounds' p99s, and is not their average by construction
    p99s = [r.latency_us.p99 for r in cell.results]
    assert min(p99s) * 0.99 <= cell.latency_summary().p99 <= max(p99s) * 1.01


@pytest.mark.slow
def test_warnings_stand_out(tmp_path):
    d = make_results(str(tmp_path / "flags"), servers=("selectors", "uvloop"))
    raws = sorted(glob.glob(os.path.join(d, "raw", "uvloop__closed-64B-c10__r*.json")))
    bad = json.load(open(raws[0]))
    bad.update(valid=False, invalid_reason="3 connection(s) echoed bytes that were not sent (mismatch)")
    bad["errors"] = {"total": 3, "by_kind": {"mismatch": 3}}
    write_json_atomic(raws[0], bad)
    cb = json.load(open(raws[1]))
    cb["client_bound"] = True
    write_json_atomic(raws[1], cb)
    for i, path in enumerate(sorted(glob.glob(os.path.join(d, "raw", "selectors__closed-1KiB-c1__r*.json")))):
        r = json.load(open(path))
        r["throughput"]["msgs_per_s"] *= (0.7, 1.0, 1.3)[i % 3]
        write_json_atomic(path, r)
    starved = sorted(glob.glob(os.path.join(d, "raw", "selectors__closed-64B-c100__r*.json")))[2]
    r = json.load(open(starved))
    r.update(valid=False, invalid_reason="starved: 43 of 100 connections completed no message")
    r["fairness"].update(min=0, starved=43)
    write_json_atomic(starved, r)
    rep = build_report(d)
    md = open(rep["md"]).read()
    html = open(rep["html"]).read()
    assert "**INVALID** uvloop" in md and "mismatch" in md
    assert "**CLIENT-BOUND** uvloop" in md
    assert "**UNSTABLE** selectors" in md
    assert "**STARVED** selectors, closed loop · 64B messages · 100 connections: up to 43 of 100 connections" in md
    assert "starved: 43 of 100 connections completed no message" in md
    # the unstable cell's interval is still wider than ±3% after its rounds
    assert "**WIDE-CI** selectors, closed loop · 1KiB messages · 1 connection: interval" in md
    for flag in ("INVALID", "STARVED", "CLIENT-BOUND", "UNSTABLE", "WIDE-CI"):
        assert f'class="flag {flag}"' in html


@pytest.mark.slow
def test_one_degraded_round_is_an_outlier_not_an_unstable_cell(tmp_path):
    # a thread-per-connection server sometimes echoes half as fast for a whole round: the median does not move,
    # so the cell is not UNSTABLE, but the round is shown as an OUTLIER with its figure
    d = make_results(str(tmp_path / "outlier"), servers=("selectors", "uvloop"))
    paths = sorted(glob.glob(os.path.join(d, "raw", "uvloop__closed-64B-c10__r*.json")))
    steady = (1.00, 1.01, 0.99, 1.02, 0.98, 1.00)
    for path, k in zip(paths, (0.5,) + steady[1:]):
        r = json.load(open(path))
        r["throughput"]["msgs_per_s"] = 100_000.0 * k
        write_json_atomic(path, r)
    cs = load_results(d).cell("uvloop", "closed-64B-c10")
    assert cs.spread > 0.15  # the standard deviation: one round sets it
    assert cs.robust_spread < 0.03 and not cs.unstable
    assert cs.outlier_rounds == [50_000.0]
    assert "OUTLIERS" in cs.flags() and "UNSTABLE" not in cs.flags()
    s = cs.summary().to_json()
    assert s["outlier_rounds"] == 1 and s["unstable"] is False and "OUTLIERS" in s["flags"]
    md = open(build_report(d)["md"]).read()
    assert "**OUTLIERS** uvloop, closed loop · 64B messages · 10 connections: 1 of 6 rounds (50,000 msgs/s, median" in md
    # rounds spread wide are UNSTABLE, and their far rounds are that spread, not outliers
    for path, k in zip(paths, (0.7, 1.0, 1.3, 0.7, 1.0, 1.3)):
        r = json.load(open(path))
        r["throughput"]["msgs_per_s"] = 100_000.0 * k
        write_json_atomic(path, r)
    cs = load_results(d).cell("uvloop", "closed-64B-c10")
    assert cs.unstable and "UNSTABLE" in cs.flags() and "OUTLIERS" not in cs.flags()


@pytest.mark.slow
def test_disturbed_rounds_are_flagged_everywhere_and_counted(tmp_path):
    d = make_results(str(tmp_path / "busy"), servers=("selectors", "uvloop"), disturbed=("uvloop",), discarded=2)
    results = load_results(d)
    uv = [c for c in results.cells.values() if c.server == "uvloop"]
    # the set-aside attempts are kept in raw/, but they are not rounds
    assert all(len(c.results) == 6 and len(c.discarded) == 12 and c.remeasured == 6 for c in uv)
    assert all("DISTURBED" in c.flags() for c in uv)
    assert not any("DISTURBED" in c.flags() for c in results.cells.values() if c.server == "selectors")
    rep = build_report(d)
    md = open(rep["md"]).read()
    assert "**DISTURBED** uvloop, closed loop · 64B messages · 100 connections: 6 of 6 rounds (foreign load up to: " \
           "server CPUs 30%, client CPUs 0%)" in md
    n = len(uv)
    assert f"re-measured because foreign load disturbed them ({12 * n} attempts set aside in raw/); {6 * n} kept " \
           f"disturbed (flagged DISTURBED)" in md
    # every table row of uvloop says so, and never "ok"
    for wid in results.workloads():
        for cells, flags, c in table_rows(results, wid):
            if c.server == "uvloop":
                assert "DISTURBED" in cells[COLUMNS.index("flags")] and cells[COLUMNS.index("rounds")] == "6 (6 re-measured)"
    assert "| uvloop | json |" in md and re.search(r"\| uvloop \| json \|[^\n]*DISTURBED", md)
    # and every plot legend: the label of a disturbed server carries the flag
    labels = []
    real_plot = plots_mod.plt.Axes.plot

    def spy(ax, *a, **k):
        labels.append(k.get("label"))
        return real_plot(ax, *a, **k)

    plots_mod.plt.Axes.plot = spy
    try:
        plots_mod.make_plots(results, os.path.join(d, "plots"))
    finally:
        plots_mod.plt.Axes.plot = real_plot
    assert "uvloop (DISTURBED)" in labels and "selectors" in labels
    assert plots_mod._label("uvloop", uv) == "uvloop (DISTURBED)"


@pytest.mark.slow
def test_interrupted_run_is_reported_as_incomplete(tmp_path):
    d = make_results(str(tmp_path / "cut"), servers=("uvloop",))
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    planned = len(load_results(d).cells)
    meta.update(status="interrupted", planned_cells=planned)
    json.dump(meta, open(meta_path, "w"))
    rounds = len(glob.glob(os.path.join(d, "raw", "*.json")))
    # the run stopped in the 75% cell's last round: the 90% cell never started
    opens = sorted(glob.glob(os.path.join(d, "raw", "*open*")))
    for path in opens[-7:]:
        os.unlink(path)
    rep = build_report(d)
    md = open(rep["md"]).read()
    assert (f"INCOMPLETE: this run was interrupted; {planned - 1} of {planned} cells were measured ({rounds - 7} "
            f"rounds)" in md)
    # a cell cut short still gets its row, from the rounds it has
    assert sorted(len(c.results) for c in rep["results"].cells.values())[0] == 5


@pytest.mark.slow
def test_interrupted_old_run_counts_load_runs(tmp_path):
    d = make_results(str(tmp_path / "old"), servers=("uvloop",), rounds=3)
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    planned = len(glob.glob(os.path.join(d, "raw", "*.json")))
    meta.update(status="interrupted", planned_runs=planned)  # a meta.json written before cells were counted
    json.dump(meta, open(meta_path, "w"))
    for path in sorted(glob.glob(os.path.join(d, "raw", "*open*")))[:5]:
        os.unlink(path)
    rep = build_report(d)
    assert f"INCOMPLETE: this run was interrupted; {planned - 5} of {planned}" in open(rep["md"]).read()


@pytest.mark.slow
def test_report_cli(base, capsys):
    assert main(["report", base]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "report.md" in out


# --- bad input: one line, non-zero exit ---------------------------------------------------


def test_missing_folder(tmp_path, capsys):
    line = _one_line_error(capsys, ["report", str(tmp_path / "nope")])
    assert "does not exist" in line


def test_empty_folder_and_file(tmp_path, capsys):
    assert "holds no results" in _one_line_error(capsys, ["report", str(tmp_path)])
    f = tmp_path / "file.json"
    f.write_text("{}")
    assert "not a results folder" in _one_line_error(capsys, ["report", str(f)])


def _bad_workload(r):
    r.pop("cell")
    r["workload"] = {"mode": "closed"}


def _one_more_count(r):
    r["latency_us"]["count"] += 1


#: the damages that leave a raw file JSON: what each does to the result read from it
_JSON_DAMAGES = {
    "missing-keys": lambda r: r.pop("throughput"),
    "bad-workload": _bad_workload,
    "hdr-missing": lambda r: r.pop("hdr"),
    "hdr-garbage": lambda r: r.update(hdr="bm90IGEgaGlzdG9ncmFt"),
    "hdr-count": _one_more_count,
}


def _damage(raw, damage):
    if damage == "truncated":
        text = open(raw).read()
        open(raw, "w").write(text[: len(text) // 2])
    elif damage == "not-schema-1":
        open(raw, "w").write(json.dumps({"schema": 7}))
    elif damage == "not-an-object":
        open(raw, "w").write("[1, 2]")
    else:
        r = json.load(open(raw))
        _JSON_DAMAGES[damage](r)
        open(raw, "w").write(json.dumps(r))


DAMAGES = ["truncated", "not-schema-1", "not-an-object", "missing-keys", "bad-workload", "hdr-missing", "hdr-garbage",
           "hdr-count"]


def _small(path):
    return make_results(path, servers=("uvloop",), plan=Plan(servers=("uvloop",), sizes=(64,), conns=(10,), open_pcts=()))


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_raw_file_is_named_and_left_out(tmp_path, capsys, damage):
    d = _small(str(tmp_path / "c"))
    clean = load_results(d)
    raws = sorted(glob.glob(os.path.join(d, "raw", "*.json")))
    raw = raws[0]
    _damage(raw, damage)
    before = open(raw, "rb").read()
    assert main(["report", d]) == 0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"sockbench: warning: left out {raw}: ")
    assert lines[1] == "sockbench: warning: 1 raw file left out (unreadable or inconsistent; nothing deleted)"
    # nothing deleted or rewritten; every other round is reported
    assert open(raw, "rb").read() == before
    results = load_results(d)
    assert [f for f, _ in results.skipped] == [raw]
    assert len(results.results) == len(clean.results) - 1 == len(raws) - 1
    md = open(os.path.join(d, "report.md")).read()
    assert "1 raw file left out of every figure" in md and os.path.basename(raw).replace("_", "\\_") in md
    # the percentiles are the other rounds' exact merge, untouched by the damaged file
    server, workload, rnd = os.path.basename(raw)[:-len(".json")].split("__")
    others = [r for r in clean.cell(server, workload).results if f"r{r.round_no}" != rnd]
    assert results.cell(server, workload).hdr().get_total_count() == sum(r.latency_us.count for r in others) > 0


def test_a_folder_without_any_histogram_is_read_from_the_rounds_figures(tmp_path, capsys):
    d = _small(str(tmp_path / "c"))
    for raw in glob.glob(os.path.join(d, "raw", "*.json")):
        _damage(raw, "hdr-missing")
    results = load_results(d)
    assert results.skipped == [] and len(results.results) == len(glob.glob(os.path.join(d, "raw", "*.json")))
    assert {c.latency_summary().source for c in results.cells.values()} == {"median of rounds"}


def test_every_raw_file_damaged_is_one_line(tmp_path, capsys):
    d = _small(str(tmp_path / "c"))
    for raw in glob.glob(os.path.join(d, "raw", "*.json")):
        _damage(raw, "truncated")
    line = _one_line_error(capsys, ["report", d])
    assert "no readable round" in line and "not valid JSON" in line


def test_compare_leaves_out_a_damaged_file_and_says_so(tmp_path, capsys):
    a, b = _small(str(tmp_path / "a")), _small(str(tmp_path / "b"))
    raw = sorted(glob.glob(os.path.join(b, "raw", "*.json")))[0]
    _damage(raw, "hdr-garbage")
    main(["compare", a, b])
    captured = capsys.readouterr()
    assert f"sockbench: warning: left out {raw}: corrupt: its hdr histogram cannot be decoded" in captured.err
    assert "1 raw file left out" in captured.err
    assert "uvloop" in captured.out  # the rest is compared


def test_corrupt_meta_is_one_line(tmp_path, capsys):
    d = _small(str(tmp_path / "c"))
    open(os.path.join(d, "meta.json"), "w").write("{not json")
    assert "corrupt" in _one_line_error(capsys, ["report", d])


def test_compare_missing_folder(base, tmp_path, capsys):
    assert "does not exist" in _one_line_error(capsys, ["compare", base, str(tmp_path / "gone")])


def test_bad_fail_above(base, capsys):
    assert "bad --fail-above" in _one_line_error(capsys, ["compare", base, base, "--fail-above", "lots"])


# --- compare ----------------------------------------------------------------------------


def test_parse_percent():
    assert parse_percent("5%") == pytest.approx(0.05)
    assert parse_percent("12.5") == pytest.approx(0.125)
    with pytest.raises(UsageError):
        parse_percent("-3%")


def test_compare_detects_a_20_percent_slowdown(base, tmp_path, capsys):
    slow = make_results(str(tmp_path / "slow"), slowdown={"uvloop": 0.20}, seed=7)
    result = compare(base, slow, fail_above=0.05)
    uv = [r for r in result["rows"] if r["server"] == "uvloop" and r["metric"] == "msgs/s"]
    assert uv and all(r["verdict"] == "slower" for r in uv)
    assert all(-0.25 < r["change"] < -0.15 for r in uv)
    # the whole interval of the change lies beyond -5%, and it holds the change of the medians
    assert all(r["change_ci"][1] < -0.05 and r["change_ci"][0] <= r["change"] <= r["change_ci"][1] for r in uv)
    assert {r["server"] for r in result["failed"]} == {"uvloop"}
    # the other servers did not change: no cell of theirs is called slower or faster
    assert all(r["verdict"] in ("same", UNDECIDED) for r in result["rows"] if r["server"] != "uvloop")
    assert main(["compare", base, slow, "--fail-above", "5%"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "uvloop" in out and "Hodges-Lehmann 95% interval" in out
    # without --fail-above, compare only reports
    assert main(["compare", base, slow]) == 0


def test_compare_ignores_a_1_percent_slowdown(base, tmp_path, capsys):
    slight = make_results(str(tmp_path / "slight"), slowdown={"uvloop": 0.01}, seed=8)
    result = compare(base, slight, fail_above=0.05)
    assert result["failed"] == []
    assert not any(r["verdict"] in ("slower", "faster") for r in result["rows"])
    assert main(["compare", base, slight, "--fail-above", "5%"]) == 0
    assert "OK: no cell slower by more than 5.0%" in capsys.readouterr().out


EIGHT = ("selectors", "asyncio-protocol", "uvloop", "cython", "trio", "blocking", "gevent", "asyncio-streams")
#: two runs of the same code on the same machine: each server's block shifted as a whole, as measured
#: back to back here (one server's cells all 5-8% apart, another's 5% the other way; about 2-4% between blocks)
BLOCK_DRIFT = dict(zip(EIGHT, (0.06, -0.04, 0.0, 0.01, -0.02, 0.03, -0.03, 0.02)))


@pytest.mark.slow
def test_a_drift_between_server_blocks_is_not_called_a_change(tmp_path, capsys):
    a = make_results(str(tmp_path / "a"), servers=EIGHT, seed=1)
    b = make_results(str(tmp_path / "b"), servers=EIGHT, seed=2, slowdown=BLOCK_DRIFT)
    result = compare(a, b, fail_above=0.05)
    assert 0.01 < result["drift"] < 0.06 and result["drift_servers"] == 8
    assert result["failed"] == [] and not any(r["verdict"] in ("slower", "faster") for r in result["rows"])
    assert main(["compare", a, b, "--fail-above", "5%"]) == 0
    assert "drift of closed-loop msgs/s between the servers from run A to run B:" in capsys.readouterr().out
    # the rounds alone see the 6% block's shift: their own interval leaves out "no change"
    A, B = load_results(a), load_results(b)
    key = next(k for k, c in A.cells.items() if k[0] == "selectors" and c.cell.mode == "closed")
    assert ratio_interval(A.cells[key].figures(), B.cells[key].figures(), 0.95).hi < 1.0
    # on top of the same drift, one server 20% slower is still called slower, and fails
    b2 = make_results(str(tmp_path / "b2"), servers=EIGHT, seed=3, slowdown=dict(BLOCK_DRIFT, uvloop=0.20))
    result = compare(a, b2, fail_above=0.05)
    uv = [r for r in result["rows"] if r["server"] == "uvloop" and r["metric"] == "msgs/s"]
    assert uv and all(r["verdict"] == "slower" for r in uv)
    assert {r["server"] for r in result["failed"]} == {"uvloop"}


def _stalled(folder, server, workload, stall_s, p99_factor=1.0):
    """Give every round of one open-loop cell a polling client that lost ``stall_s`` to stalls; scale its p99."""
    for path in glob.glob(os.path.join(folder, "raw", f"{server}__{workload}__r*.json")):
        r = json.load(open(path))
        r["client"].update(polling=True, stalls=int(stall_s / 0.002), stall_s=stall_s, longest_stall_s=0.004)
        r["latency_us"]["p99"] *= p99_factor
        write_json_atomic(path, r)


def test_open_loop_p99s_whose_client_stalls_differ_are_marked_and_never_fail(tmp_path, capsys):
    a = make_results(str(tmp_path / "a"), servers=("selectors", "uvloop"), seed=1)
    b = make_results(str(tmp_path / "b"), servers=("selectors", "uvloop"), seed=1)
    cell = next(c for c in load_results(a).cells.values() if c.server == "uvloop" and c.cell.mode == "open")
    window = cell.results[0].workload.duration_s  # each round's
    _stalled(a, "uvloop", cell.workload_id, 0.002 * window)  # 0.2% of the window lost to stalls
    _stalled(b, "uvloop", cell.workload_id, 0.015 * window, p99_factor=1.6)  # 1.5%, and a p99 60% higher
    result = compare(a, b, fail_above=0.05)
    row = next(r for r in result["rows"] if r["server"] == "uvloop" and r["workload"] == cell.workload_id)
    assert row["verdict"] == "slower" and row["stalls_differ"] and not row["disturbed"]
    assert row["marks"] == ["STALLS differ: A 0.2%, B 1.5% of the window"]
    assert result["failed"] == []
    assert main(["compare", a, b, "--fail-above", "5%"]) == 0
    assert "client STALLS that differ" in capsys.readouterr().out
    # the same slowdown with the same stalls on both sides fails
    _stalled(a, "uvloop", cell.workload_id, 0.015 * window)
    assert [r["workload"] for r in compare(a, b, fail_above=0.05)["failed"]] == [cell.workload_id]


def test_client_stalls_differ_needs_a_ratio_and_a_floor():
    assert client_stalls_differ(0.004, 0.012) and client_stalls_differ(0.012, 0.004)
    assert not client_stalls_differ(0.008, 0.012)        # within the ratio
    assert not client_stalls_differ(0.001, 0.004)        # neither could set a p99
    assert not client_stalls_differ(None, 0.02) and not client_stalls_differ(0.02, None)  # a client that did not poll


def test_the_servers_drift_and_the_widened_interval():
    import math
    # fewer servers than it takes to see a drift between them
    assert server_drift({f"s{i}": [0.01] for i in range(DRIFT_MIN_SERVERS - 1)}) is None
    # one server that really changed does not make the drift: the spread is the median absolute deviation
    logs = {"a": [0.0, 0.0], "b": [0.02], "c": [-0.02], "d": [0.0], "e": [math.log(0.8)]}
    assert server_drift(logs) == pytest.approx(1.4826 * 0.02)
    assert server_drift({s: [0.03] for s in "abcd"}) == 0.0  # a shift of every server alike is no spread
    iv = RatioInterval(estimate=1.0, lo=math.exp(-0.03), hi=math.exp(0.04), confidence=0.95, n_a=7, n_b=7)
    w = widened(iv, 0.02, 0.95)
    z = 1.959964
    assert math.log(w.lo) == pytest.approx(-math.hypot(0.03, z * 0.02), rel=1e-5)
    assert math.log(w.hi) == pytest.approx(math.hypot(0.04, z * 0.02), rel=1e-5)
    assert widened(iv, None, 0.95) is iv and widened(iv, 0.0, 0.95) is iv
    open_ended = RatioInterval(estimate=1.0, lo=0.0, hi=math.inf, confidence=1.0, n_a=3, n_b=3)
    assert widened(open_ended, 0.02, 0.95) is open_ended


def test_compare_with_three_rounds_is_undecided(tmp_path):
    a = make_results(str(tmp_path / "a"), servers=("uvloop",), rounds=3)
    b = make_results(str(tmp_path / "b"), servers=("uvloop",), rounds=3, slowdown={"uvloop": 0.2}, seed=5)
    result = compare(a, b, fail_above=0.05)
    # even a 20% slowdown: 3 rounds against 3 allow no 95% interval, so no cell is called either way
    assert {r["verdict"] for r in result["rows"]} == {UNDECIDED} and result["failed"] == []
    assert all(r["ci"] == (0.0, float("inf")) for r in result["rows"])


def test_a_disturbed_cell_never_fails(base, tmp_path, capsys):
    slow = make_results(str(tmp_path / "slow-busy"), slowdown={"uvloop": 0.20}, seed=7, disturbed=("uvloop",))
    result = compare(base, slow, fail_above=0.05)
    uv = [r for r in result["rows"] if r["server"] == "uvloop"]
    assert uv and all(r["disturbed"] and r["marks"] == ["DISTURBED in B"] for r in uv)
    assert result["failed"] == []
    assert main(["compare", base, slow, "--fail-above", "5%"]) == 0
    out = capsys.readouterr().out
    assert "DISTURBED in B" in out and "reported, never failed" in out


def test_protocol_cost_table_and_plot(report, base):
    results = load_results(base)
    ((title, rows),) = protocol_cost_rows(results)
    assert "64B payload · 100 connections · depth 16 · raw, frame, json" in title
    assert [(r[0][0], r[0][1]) for r in rows] == [(s, p) for s in ("selectors", "asyncio-protocol", "uvloop")
                                                   for p in ("raw", "frame", "json")]
    for row, _, c in rows:
        # one 10 ms clock tick over the messages of a (fixture: 1 s) round
        assert float(row[8].replace(",", "")) == pytest.approx(1e4 / c.median, rel=0.05)  # shown to 2 digits
        if row[1] == "raw":
            assert row[5] == row[7] == "(baseline)"
            continue
        raw = results.cell(row[0], "closed-64B-c100-d16")
        assert row[5] == f"{c.cpu_us_per_msg - raw.cpu_us_per_msg:+.3g}"
        assert row[7] == f"{c.user_us_per_msg - raw.user_us_per_msg:+.3g}"
        # the fixture's protocol costs are recovered, within its 2% noise
        assert float(row[7]) == pytest.approx(PROTO_COST_US[row[1]], abs=0.25 + 0.05 * PROTO_COST_US[row[1]])
    md = open(report["md"]).read()
    html = open(report["html"]).read()
    assert "## Cost of each protocol over raw" in md and "<h2>Cost of each protocol over raw</h2>" in html
    assert "| uvloop | json |" in md and "closed loop · 64B messages · 100 connections · depth 16 · json protocol" in md
    with Image.open(os.path.join(base, "plots", "protocol_cost.png")) as im:
        assert im.format == "PNG" and len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    # the grid plots leave the protocol section out: one closed cell per (server, size, conns)
    grid = plots_mod._closed(results)
    assert all(c.cell.protocol == "raw" and c.cell.depth == 1 for c in grid)
    assert len({(c.server, c.cell.size, c.cell.conns) for c in grid}) == len(grid)


def test_no_protocol_section_no_table_no_plot(tmp_path):
    d = make_results(str(tmp_path / "raw"), servers=("uvloop",),
                     plan=Plan(servers=("uvloop",), sizes=(64,), conns=(10,), open_pcts=(), protocols=()))
    rep = build_report(d)
    assert "Cost of each protocol" not in open(rep["md"]).read()
    assert dict((f, why) for f, _, why in rep["plots"])["protocol_cost.png"]


def test_old_results_without_protocol_read_as_raw(base, tmp_path):
    old = str(tmp_path / "old")
    make_results(old, plan=Plan(servers=("selectors", "asyncio-protocol", "uvloop"), duration_s=1.0, warmup_s=0.2,
                                interval_s=0.1, protocols=()))
    for path in glob.glob(os.path.join(old, "raw", "*.json")):
        r = json.load(open(path))
        del r["workload"]["protocol"], r["cell"]["protocol"]
        write_json_atomic(path, r)
    results = load_results(old)
    assert {c.cell.protocol for c in results.cells.values()} == {"raw"}
    # the old folder compares with a new one on every raw cell; the new framed cells are only in B
    result = compare(old, base)
    assert len(result["rows"]) == len(results.cells)
    assert {r["protocol"] for r in result["rows"]} == {"raw"}
    assert all(w.endswith(("-frame", "-json")) or "-d16" in w for w in result["only_b"])
    assert "uvloop:closed-64B-c100-d16-json" in result["only_b"]


def test_compare_keys_include_the_protocol(base, tmp_path):
    d = str(tmp_path / "json-slow")
    make_results(d, seed=9)
    for path in glob.glob(os.path.join(d, "raw", "uvloop__closed-64B-c100-d16-json__r*.json")):
        r = json.load(open(path))
        r["throughput"]["msgs_per_s"] *= 0.8
        write_json_atomic(path, r)
    result = compare(base, d, fail_above=0.05)
    rows = {(r["server"], r["workload"]): r for r in result["rows"]}
    assert rows[("uvloop", "closed-64B-c100-d16-json")]["protocol"] == "json"
    assert rows[("uvloop", "closed-64B-c100-d16-json")]["verdict"] == "slower"
    assert rows[("uvloop", "closed-64B-c100-d16")]["verdict"] != "slower"
    assert [(r["server"], r["workload"]) for r in result["failed"]] == [("uvloop", "closed-64B-c100-d16-json")]


def test_compare_same_folder_is_unchanged(base):
    result = compare(base, base, fail_above=0.05)
    # the interval of a folder against itself is centred on 1 and narrower than ±5% (the fixture's noise is ±2%)
    assert result["failed"] == [] and all(r["verdict"] == "same" for r in result["rows"])
    assert all(r["ratio"] == 1.0 and r["ci"][0] < 1.0 < r["ci"][1] for r in result["rows"])


def test_plan_counts_and_round_trip(tmp_path):
    plan = Plan(servers=("a", "b"))
    assert len(plan.cells()) == 2 * (3 * 3 + 4 + 3)
    assert plan.min_estimate_s() == pytest.approx(sum(plan.cell_estimate_s(c) for c in plan.cells()))
    path = str(tmp_path / "plan.json")
    plan.save(path)
    assert Plan.load(path) == plan
    ids = [c.id for c in plan.cells()]
    assert len(set(ids)) == len(ids)
    q = quick_plan(["a"])
    assert q.min_rounds == q.max_rounds == 3 and q.quick and not q.adaptive
    assert not any(c.protocol != "raw" for c in q.cells())  # the 60 s budget: no protocol section by default
    # a plan.json from before the rounds rule: every cell ran exactly its ``rounds``
    old = plan.to_dict()
    del old["min_rounds"], old["max_rounds"]
    old["rounds"] = 3
    assert (Plan.from_dict(old).min_rounds, Plan.from_dict(old).max_rounds) == (3, 3)


def test_full_plan_is_the_whole_grid():
    full = full_plan(["a", "b"])
    assert full.full and len(full.cells()) == len(Plan(servers=("a", "b")).cells())
    assert (full.sizes, full.conns, full.open_pcts, full.proto_depth) == ((64, 1024, 16384), (1, 10, 100),
                                                                          (25, 50, 75, 90), 16)
    assert full.run_budget_s is None and full.adaptive
    assert build_plan(servers=["uvloop"], full=True).full
    with pytest.raises(UsageError, match="exclude each other"):
        build_plan(servers=["uvloop"], full=True, quick=True)


def test_plan_protocol_section():
    plan = Plan(servers=("uvloop", "cython-protocol"), speaks={"uvloop": ["raw", "frame", "json"], "cython-protocol": ["raw"]})
    ids = [c.id for c in plan.cells()]
    assert [i for i in ids if "-d16" in i] == [
        "uvloop:closed-64B-c100-d16", "uvloop:closed-64B-c100-d16-frame", "uvloop:closed-64B-c100-d16-json"]
    # raw ids are unchanged; a server that speaks raw only gets no section (nothing to subtract raw from)
    assert "uvloop:closed-64B-c100" in ids and not any(i.startswith("cython-protocol:") and "-d16" in i for i in ids)
    json_cell = next(c for c in plan.cells() if c.protocol == "json")
    assert (json_cell.size, json_cell.conns, json_cell.depth) == (64, 100, 16)
    assert json_cell.base_workload_id == "closed-64B-c100-d16" and "json" in json_cell.describe()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(UsageError, match="unknown protocol"):
        Plan(servers=("a",), protocols=("raw", "xml"))


def test_run_protocols_option():
    # --quick --protocols json: the json cell shares the quick closed cell's workload, whose raw cell is reused
    q = build_plan(quick=True, servers=["uvloop"], protocols=["json"])
    assert [c.workload_id for c in q.cells()] == ["closed-64B-c10", "open-64B-c10-75pct", "closed-64B-c10-json"]
    assert build_plan(servers=["uvloop"], protocols=[]).protocols == ()
    assert build_plan(servers=["uvloop"], protocols=["raw"]).protocols == ()  # raw alone: nothing to compare
    assert build_plan(servers=["uvloop"], protocols=["frame"]).protocols == ("raw", "frame")
    assert build_plan(servers=["uvloop"]).speaks == {"uvloop": ["raw", "frame", "json"]}


def test_run_none_as_its_help_documents(capsys):
    # --help promises `none` for both options: the parser takes it
    from sockbench.cli.main import build_parser

    sub = next(a for a in build_parser()._subparsers._group_actions if a.choices)
    helps = {a.dest: a.help for a in sub.choices["run"]._actions}
    assert "none: no open loop" in helps["open_loads"] and "none: no section" in helps["protocols"]
    p = build_plan(servers=["uvloop"], open_pcts=["none"], protocols=["none"])
    assert p.open_pcts == () and p.protocols == ()
    assert [c.mode for c in p.cells()] == ["closed"]
    assert build_plan(servers=["uvloop"], open_pcts=["NONE"]).open_pcts == ()
    assert build_plan(full=True, servers=["uvloop"], protocols=["none"]).protocols == ()


@pytest.mark.parametrize("argv, text", [
    (["run", "--open-loads", "none", "25"], "--open-loads none stands alone"),
    (["run", "--protocols", "json,none"], "--protocols none stands alone"),
    (["run", "--servers", "no-such-server"], "unknown server"),
    (["run", "--sizes", "12q"], "bad size"),
    (["run", "--conns", "ten"], "bad --conns"),
    (["run", "--server-cpus", "999"], "not available here"),
    (["run", "--rounds", "0"], "bad --rounds '0'; use a whole number > 0"),
    (["run", "--protocols", "xml"], "unknown protocol 'xml'"),
])
def test_run_bad_input(capsys, argv, text, tmp_path):
    assert text in _one_line_error(capsys, argv + ["--out", str(tmp_path / "never")])
    assert not os.path.exists(tmp_path / "never")


def test_run_refuses_a_folder_with_results(base, capsys):
    assert "already holds files" in _one_line_error(capsys, ["run", "--quick", "--out", base])


# --- the progress display --------------------------------------------------------------------


def test_runner_draws_nothing_while_a_load_window_is_open(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from sockbench.bench.suite import runner
    from sockbench.bench.suite.session import PROGRESS_FILE

    plan = quick_plan(["selectors"])
    cell = plan.cells()[0]
    now = time.monotonic_ns()
    window_end = now + 400_000_000  # a load is measured for the next 0.4 s
    events = [PassStarted(pass_no=1, seed=3, order=(cell.id,)),
              RoundStarted(cell=cell.id, index=0, desc="a cell", pass_no=1, round=1),
              Window(start_ns=now, end_ns=window_end)]
    events += [RoundDone(cell=cell.id, round=k + 1, attempt=1, kept=True, msgs_per_s=1000.0, p99_us=50.0, valid=True)
               for k in range(plan.min_rounds)]
    events.append(CellDone(cell=cell.id, index=0, rounds=plan.min_rounds, remeasured=0, figure="msgs/s", median=1000.0,
                           interval="none yet (n=3)", stopped="fixed", flags=()))
    with open(tmp_path / PROGRESS_FILE, "w") as f:
        f.writelines(json.dumps(ev.to_json()) + "\n" for ev in events)

    class Child:  # the suite: it exits 0.6 s from now
        returncode = None

        def poll(self):
            if time.monotonic_ns() > now + 600_000_000:
                self.returncode = 0
            return self.returncode

    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    printed = []
    real_print = console.print
    monkeypatch.setattr(console, "print", lambda *a, **k: (printed.append(time.monotonic_ns()), real_print(*a, **k)))
    assert runner._watch(Child(), str(tmp_path), plan, console) is False
    assert printed, "the cell's summary line is printed"
    assert min(printed) >= window_end, "a line was printed while the load window was open"
    out = console.file.getvalue()
    assert "pass 1: 1 cells open, in a random order (seed 3)" in out
    assert f"1/2 cells  {cell.describe()}: 1,000 msgs/s (median of 3, interval none yet (n=3), fixed)" in out


def test_progress_counts_cells_runs_and_time_left():
    from sockbench.bench.suite.runner import _Follow

    plan = default_plan(["uvloop", "cython"], speaks={"uvloop": ["raw", "frame", "json"], "cython": ["raw"]})
    cells = plan.cells()
    follow = _Follow(plan, live=False, started=100.0)
    assert follow.left_s(now=100.0) == pytest.approx(min(plan.min_estimate_s(), plan.run_budget_s))
    follow.on_event(RoundStarted(cell=cells[0].id, index=0, desc="first", pass_no=1, round=1))
    assert follow.current == f"pass 1 [1/{len(cells)}] first"
    for k in range(3):
        follow.on_event(RoundDone(cell=cells[0].id, round=k + 1, attempt=1, kept=True, msgs_per_s=1e5, p99_us=None,
                                  valid=True))
    follow.on_event(RoundDone(cell=cells[0].id, round=4, attempt=1, kept=False, msgs_per_s=1e5, p99_us=None, valid=True,
                              disturbed=True))
    assert (follow.runs, follow.remeasured, follow.kept[cells[0].id]) == (4, 1, 3)
    follow.on_event(RoundSetAside(cell=cells[0].id, round=2, client_slowdown=1.3))  # judged slow once more came
    assert (follow.runs, follow.remeasured, follow.kept[cells[0].id]) == (4, 2, 2)
    follow.on_event(CellDone(cell=cells[0].id, index=0, rounds=7, remeasured=1, figure="msgs/s", median=1e5,
                             interval="±1.0%", stopped="stable", flags=("DISTURBED",)))
    assert follow.cells_done == 1 and cells[0].id in follow.done
    assert follow.lines[-1].endswith("(median of 7, interval ±1.0%, stable, 1 re-measured) DISTURBED")
    # the first cell took twice its estimate: the rest are expected to as well, within the run budget
    took = 2 * plan.cell_estimate_s(cells[0])
    rest = plan.min_estimate_s() - plan.cell_estimate_s(cells[0])
    assert follow.left_s(now=100.0 + took) == pytest.approx(min(2 * rest, plan.run_budget_s - took))
