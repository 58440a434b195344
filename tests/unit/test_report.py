"""Tests of the report, the plots, ``sockbench compare`` and the ``sockbench run`` main job.

Everything but the end-to-end tests works on a synthetic results folder
(``report_fixture``): schema-1 results with real HDR histograms, fast and
deterministic.  The end-to-end tests run the real pipeline (pytest-benchmark
suite -> harness -> servers -> report) on the ``--quick`` matrix, cut to two
servers so the unit run stays short.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from report_fixture import PROTO_COST_US, make_results
from sockbench.bench.report.compare import compare, mann_whitney_u
from sockbench.units import parse_percent
from sockbench.bench.suite.plan import Plan, quick_plan
from sockbench.bench.report import plots as plots_mod
from sockbench.bench.report.plots import PLOTS
from sockbench.bench.report.document import build_report, protocol_cost_rows
from sockbench.bench.suite.runner import build_plan
from sockbench.bench.report.store import load_results
from sockbench.cli import main
from sockbench.errors import UsageError
from sockbench.jsonfile import write_json_atomic

E2E_SERVERS = ["asyncio-protocol", "uvloop"]


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
    # one row per workload table, and one per protocol in the protocol-cost table
    assert md.count("| selectors |") == len(results.workloads()) + 3
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
        r["throughput"]["msgs_per_s"] *= (0.7, 1.0, 1.3)[i]
        write_json_atomic(path, r)
    rep = build_report(d)
    md = open(rep["md"]).read()
    html = open(rep["html"]).read()
    assert "**INVALID** uvloop" in md and "mismatch" in md
    assert "**CLIENT-BOUND** uvloop" in md
    assert "**UNSTABLE** selectors" in md
    for flag in ("INVALID", "CLIENT-BOUND", "UNSTABLE"):
        assert f'class="flag {flag}"' in html


def test_interrupted_run_is_reported_as_incomplete(tmp_path):
    d = make_results(str(tmp_path / "cut"), servers=("uvloop",))
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    planned = len(glob.glob(os.path.join(d, "raw", "*.json")))
    meta.update(status="interrupted", planned_runs=planned)
    json.dump(meta, open(meta_path, "w"))
    for path in sorted(glob.glob(os.path.join(d, "raw", "*open*")))[:5]:
        os.unlink(path)
    rep = build_report(d)
    assert f"INCOMPLETE: this run was interrupted; {planned - 5} of {planned}" in open(rep["md"]).read()
    # a cell cut short still gets its row, from the rounds it has
    assert any(len(c.results) < 3 for c in rep["results"].cells.values())


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


@pytest.mark.parametrize("damage", ["truncated", "not-schema-1", "missing-keys", "bad-meta", "bad-workload"])
def test_corrupt_folder(tmp_path, capsys, damage):
    d = make_results(str(tmp_path / "c"), servers=("uvloop",), plan=Plan(servers=("uvloop",), sizes=(64,), conns=(10,), open_pcts=()))
    raw = sorted(glob.glob(os.path.join(d, "raw", "*.json")))[0]
    if damage == "truncated":
        text = open(raw).read()
        open(raw, "w").write(text[: len(text) // 2])
    elif damage == "not-schema-1":
        open(raw, "w").write(json.dumps({"schema": 7}))
    elif damage == "missing-keys":
        r = json.load(open(raw))
        del r["throughput"]
        open(raw, "w").write(json.dumps(r))
    elif damage == "bad-meta":
        open(os.path.join(d, "meta.json"), "w").write("{not json")
    elif damage == "bad-workload":
        r = json.load(open(raw))
        r.pop("cell")
        r["workload"] = {"mode": "closed"}
        open(raw, "w").write(json.dumps(r))
    line = _one_line_error(capsys, ["report", d])
    assert "corrupt" in line or "not a schema-1" in line or "malformed" in line


def test_compare_missing_folder(base, tmp_path, capsys):
    assert "does not exist" in _one_line_error(capsys, ["compare", base, str(tmp_path / "gone")])


def test_bad_fail_above(base, capsys):
    assert "bad --fail-above" in _one_line_error(capsys, ["compare", base, base, "--fail-above", "lots"])


# --- compare ----------------------------------------------------------------------------


def test_mann_whitney_exact_values():
    # complete separation, 3 v 3: 1 of the C(6,3) = 20 splits
    assert mann_whitney_u([4, 5, 6], [1, 2, 3], "less")[1:] == (pytest.approx(0.05), "exact")
    assert mann_whitney_u([4, 5, 6], [1, 2, 3], "greater")[1] == pytest.approx(1.0)
    assert mann_whitney_u([1, 2, 3], [1, 2, 3], "less")[1] > 0.5
    # ties take mid-ranks: U counts a tie as 1/2
    assert mann_whitney_u([1, 2], [2, 3], "greater")[0] == pytest.approx(3.5)


def test_mann_whitney_normal_approximation_agrees_with_exact(monkeypatch):
    a = [float(x) for x in range(10)]
    b = [x + 3.5 for x in a]
    _, exact, m1 = mann_whitney_u(a, b, "greater")
    monkeypatch.setattr("sockbench.bench.report.compare.EXACT_LIMIT", 0)
    _, approx, m2 = mann_whitney_u(a, b, "greater")
    assert (m1, m2) == ("exact", "normal")
    assert approx == pytest.approx(exact, abs=0.01)


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
    assert {r["server"] for r in result["failed"]} == {"uvloop"}
    assert main(["compare", base, slow, "--fail-above", "5%"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "uvloop" in out
    # without --fail-above, compare only reports
    assert main(["compare", base, slow]) == 0


def test_compare_ignores_a_1_percent_slowdown(base, tmp_path, capsys):
    slight = make_results(str(tmp_path / "slight"), slowdown={"uvloop": 0.01}, seed=8)
    result = compare(base, slight, fail_above=0.05)
    assert result["failed"] == []
    assert main(["compare", base, slight, "--fail-above", "5%"]) == 0
    assert "OK: no significant slowdown above 5.0%" in capsys.readouterr().out


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
    result = compare(base, base, fail_above=0.0)
    assert result["failed"] == [] and all(r["verdict"] == "same" for r in result["rows"])


# --- the run plan ---------------------------------------------------------------------------


def test_plan_counts_and_round_trip(tmp_path):
    plan = Plan(servers=("a", "b"))
    assert len(plan.cells()) == 2 * (3 * 3 + 4 + 3)
    assert plan.total_runs() == len(plan.cells()) * 3
    path = str(tmp_path / "plan.json")
    plan.save(path)
    assert Plan.load(path) == plan
    ids = [c.id for c in plan.cells()]
    assert len(set(ids)) == len(ids)
    q = quick_plan(["a"])
    assert q.rounds >= 3 and q.quick
    assert not any(c.protocol != "raw" for c in q.cells())  # the 60 s budget: no protocol section by default


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


@pytest.mark.parametrize("argv, text", [
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


# --- end to end: the real pipeline ----------------------------------------------------------


def _log_tail(out, n=40):
    try:
        with open(os.path.join(out, "pytest.log")) as f:
            return "\n--- pytest.log ---\n" + "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _sockbench(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sockbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_run_quick_end_to_end(tmp_path):
    out = str(tmp_path / "quick")
    # with one json cell per server (not in --quick by default): the framed path end to end
    proc = _sockbench("run", "--quick", "--servers", *E2E_SERVERS, "--protocols", "json", "--out", out)
    stdout, stderr = proc.communicate(timeout=180)  # a hang guard, not a speed target
    assert proc.returncode == 0, stdout + stderr + _log_tail(out)
    assert f"report: {os.path.join(out, 'report.html')}" in stdout
    results = load_results(out)
    plan = Plan.load(os.path.join(out, "plan.json"))
    assert len(results.results) == plan.total_runs() == len(E2E_SERVERS) * 3 * plan.rounds
    for c in results.cells.values():
        assert len(c.results) == plan.rounds and c.median > 0 and not c.invalid, c.cell
        if c.cell.mode == "open":
            peak = c.results[0].cell.peak_msgs_per_s
            assert c.results[0].workload.rate == pytest.approx(peak * c.cell.load_pct / 100)
    for c in results.cells.values():
        assert all(r.workload.protocol == c.cell.protocol == r.cell.protocol for r in c.results)
    assert {c.workload_id for c in results.cells.values() if c.cell.protocol == "json"} == {"closed-64B-c10-json"}
    # every load announced its window before it opened, so the runner kept its display still through it
    events = [json.loads(line) for line in open(os.path.join(out, "progress.jsonl"))]
    rounds = [i for i, ev in enumerate(events) if ev["event"] == "round"]
    assert len(rounds) == plan.total_runs()
    for i in rounds:
        window = next(ev for ev in reversed(events[:i]) if ev["event"] in ("window", "round"))
        assert window["event"] == "window" and window["end_ns"] > window["start_ns"] > 0
    for name, _ in PLOTS:
        with Image.open(os.path.join(out, "plots", name)) as im:
            im.verify()
    ((_, rows),) = protocol_cost_rows(results)
    assert [(r[0][0], r[0][1]) for r in rows] == [(s, p) for s in E2E_SERVERS for p in ("raw", "json")]
    assert json.load(open(os.path.join(out, "meta.json")))["status"] == "complete"
    # pytest-benchmark's own JSON and storage, with everything in extra_info
    pb = json.load(open(os.path.join(out, "pytest-benchmark.json")))
    assert len(pb["benchmarks"]) == len(results.cells)
    for b in pb["benchmarks"]:
        info = b["extra_info"]
        assert len(info["per_round"]) == plan.rounds == b["stats"]["rounds"]
        assert {"msgs_per_s_median", "latency_us", "server_cpu_us_per_msg", "flags", "valid", "client_bound"} <= set(info)
        if info["mode"] == "closed":  # the message clock: ops is msgs/s
            assert b["stats"]["median"] == pytest.approx(1 / info["msgs_per_s_median"], rel=1e-6)
    saved = glob.glob(os.path.join(out, "benchmarks", "*", "0001_sockbench.json"))
    assert saved
    cmp_ = subprocess.run([sys.executable, "-m", "pytest_benchmark.cli", "compare", saved[0], saved[0]],
                          capture_output=True, text=True, timeout=60)
    assert cmp_.returncode == 0, cmp_.stderr


def test_run_ctrl_c_keeps_finished_rounds(tmp_path):
    out = str(tmp_path / "cut")
    proc = _sockbench("run", "--quick", "--servers", *E2E_SERVERS, "--out", out)
    try:
        deadline = time.monotonic() + 60
        while len(glob.glob(os.path.join(out, "raw", "*.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    why = stdout + stderr + _log_tail(out)
    assert proc.returncode == 130, why
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["status"] == "interrupted", why
    assert 2 <= meta["finished_runs"] < meta["planned_runs"], why
    assert "INCOMPLETE: this run was interrupted" in open(os.path.join(out, "report.md")).read()
    # the report can be rebuilt from what was kept
    assert main(["report", out]) == 0


def test_runner_draws_nothing_while_a_load_window_is_open(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from sockbench.bench.suite import runner
    from sockbench.bench.suite.session import PROGRESS_FILE

    plan = quick_plan(["selectors"])
    cell = plan.cells()[0]
    now = time.monotonic_ns()
    window_end = now + 400_000_000  # a load is measured for the next 0.4 s
    events = [{"event": "cell", "cell": cell.id, "index": 0, "desc": "a cell"},
              {"event": "window", "start_ns": now, "end_ns": window_end}]
    events += [{"event": "round", "cell": cell.id, "round": k + 1, "msgs_per_s": 1000.0, "valid": True}
               for k in range(plan.rounds)]
    with open(tmp_path / PROGRESS_FILE, "w") as f:
        f.writelines(json.dumps(ev) + "\n" for ev in events)

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
    assert "a cell: 1,000 msgs/s (median of 3)" in console.file.getvalue()
