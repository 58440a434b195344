"""The report's dimension sections (transports, workers) and UDP's loss, from synthetic results folders.

Each section is checked where it must appear (a run with more than one value
of its dimension) and where it must not (one value); the loss of a udp cell
is checked in every place it is shown: the workload tables, the transport
table, the flags, ``results.csv`` and the cell's summary.
"""

import csv
import os
import re

import pytest
from PIL import Image

from report_fixture import TRANSPORT_CPU, UDP_LOSS, WORKER_CPU, make_results, worker_factor
from sockbench.bench.report.dimensions import transport_section, workers_section
from sockbench.bench.report.document import FLAG_HELP, build_report
from sockbench.bench.report import render
from sockbench.bench.report.plots import _colors
from sockbench.bench.report.store import load_results
from sockbench.bench.report.summary import build_summary
from sockbench.bench.suite.plan import Plan
from sockbench.thresholds import LOSSY_SHARE

SERVERS = ("selectors", "uvloop", "cython")
TRANSPORTS = ("tcp", "tcp6", "unix", "udp")
#: selectors loses more than the LOSSY share over udp, the others less
LOSSY_LOSS = 0.03


def _plan(**kw):
    return Plan(servers=SERVERS, sizes=(64,), conns=(100,), open_pcts=(75,), protocols=(), duration_s=1.0,
                warmup_s=0.2, interval_s=0.1, server_cpus=(0,), client_cpus=(1,), **kw)


@pytest.fixture(scope="module")
def transports(tmp_path_factory):
    d = make_results(str(tmp_path_factory.mktemp("transports")), plan=_plan(transports=TRANSPORTS),
                     loss={"selectors": LOSSY_LOSS})
    return d, build_report(d)


@pytest.fixture(scope="module")
def one_transport(tmp_path_factory):
    d = make_results(str(tmp_path_factory.mktemp("tcp")), plan=_plan())
    return d, build_report(d)


def _section_text(md, title):
    start = md.index(f"\n## {title}\n")
    end = md.index("\n## ", start + 1)
    return md[start:end]


def test_the_transport_table_has_a_row_per_server_and_transport_with_ratios_to_tcp(transports):
    d, report = transports
    section = report["sections"]["transports"]
    assert section is not None and section.base == "tcp" and section.values == list(TRANSPORTS)
    assert [(r[0][0], r[0][1]) for r in section.rows] == [(s, t) for s in SERVERS for t in TRANSPORTS]
    cols = section.columns
    for row, _, c in section.rows:
        assert c.cell.size == 64 and c.cell.conns == 100 and c.cell.mode == "closed"  # the headline workload
        if row[1] == "tcp":
            assert row[cols.index("vs tcp")] == row[cols.index("CPU vs tcp")] == "(baseline)"
        else:
            # the fixture's unix costs 0.65x tcp's CPU per message (and its msgs/s the inverse)
            want = TRANSPORT_CPU[row[1]]
            assert abs(float(row[cols.index("CPU vs tcp")].rstrip("×")) - want) < 0.03
            assert abs(float(row[cols.index("vs tcp")].rstrip("×")) - 1 / want) < 0.06
        loss = row[cols.index("loss")]
        if row[1] == "udp":
            assert loss.startswith(f"{c.loss_share:.2%}")
        else:
            assert loss == "–"
        assert ("LOSSY" in row[cols.index("flags")]) == (row[1] == "udp" and row[0] == "selectors")


def test_the_transport_sentences_answer_the_ipc_question_and_the_verdict_repeats_it(transports):
    d, report = transports
    md = open(report["md"]).read()
    text = _section_text(md, "Transports")
    assert "For processes on one host, Unix domain sockets cost 0.6" in text
    assert "the server CPU per message of loopback TCP" in text
    assert "Loopback TCP over IPv6 cost about the same server CPU per message as loopback TCP" in text
    assert f"with up to {LOSSY_LOSS:.2%} of the datagrams lost (selectors)" in text
    summary = _section_text(md, "Summary")
    assert "For processes on one host, Unix domain sockets cost" in summary
    assert summary.count("For processes on one host") == 1  # one sentence in the verdict, not all of them
    assert "(plots/transports.png)" in text
    with Image.open(os.path.join(d, "plots", "transports.png")) as im:
        assert im.format == "PNG" and im.size[0] >= 600
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_the_summary_and_grid_plots_compare_servers_on_tcp_alone(transports):
    d, report = transports
    md = open(report["md"]).read()
    summary = _section_text(md, "Summary")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| server")]
    assert sorted(r.split(" | ")[0].strip("| ") for r in rows) == sorted(SERVERS)
    results = report["results"]
    assert results.transports() == list(TRANSPORTS) and results.base_transport() == "tcp"
    summary = build_summary(results)
    assert all(r.headline.cell.transport == "tcp" for r in summary.rows)
    assert [r.headline.cell.transport for r in summary.rows if r.open_cell] and all(
        r.open_cell.cell.transport == "tcp" for r in summary.rows)


def test_every_table_with_a_udp_cell_shows_its_loss_and_lossy_is_flagged(transports):
    d, report = transports
    md = open(report["md"]).read()
    blocks = md.split("\n### ")
    udp_tables = [b for b in blocks if b.split("\n", 1)[0].endswith("over udp")]
    assert len(udp_tables) == 2  # closed 64 B and open 75%
    for b in udp_tables:
        header = next(line for line in b.splitlines() if line.startswith("| server"))
        assert "| loss | flags |" in header
        assert f"| {UDP_LOSS:.2%} (1 dup, " in b and f"| {LOSSY_LOSS:.2%} (1 dup, " in b
    stream = [b for b in blocks if b.startswith(("closed loop", "open loop")) and "over udp" not in b.split("\n", 1)[0]]
    assert stream and all("| loss |" not in b for b in stream)
    assert "LOSSY" in md and f"more than {LOSSY_SHARE:.0%} of the datagrams sent" in md
    warned = [line for line in md.splitlines() if "LOSSY" in line and "selectors" in line]
    assert warned


def test_results_csv_and_the_cell_summary_carry_the_loss(transports):
    d, report = transports
    rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
    udp = [r for r in rows if r["transport"] == "udp"]
    assert udp and all(r["datagrams_sent"] and r["datagrams_lost"] for r in udp)
    for r in udp:
        share = float(r["loss_share"])
        want = LOSSY_LOSS if r["server"] == "selectors" else UDP_LOSS
        assert abs(share - want) < 0.0005
        assert int(r["datagrams_lost"]) == round(share * int(r["datagrams_sent"]))
    assert all(r["loss_share"] == r["datagrams_sent"] == "" for r in rows if r["transport"] != "udp")
    results = load_results(d)
    for c in results.cells.values():
        j = c.summary().to_json()
        if c.cell.transport == "udp":
            assert j["datagrams"]["sent"] == sum(r.datagrams.sent for r in c.results)
            assert j["datagrams"]["duplicates"] == 1 and j["datagrams"]["out_of_order"] > 0
            assert ("LOSSY" in j["flags"]) == (c.server == "selectors")
        else:
            assert "datagrams" not in j


def test_one_transport_and_one_worker_count_have_no_such_sections(one_transport):
    d, report = one_transport
    md = open(report["md"]).read()
    assert report["sections"] == {"transports": None, "workers": None, "pythons": None, "tls": None}
    assert "\n## Transports" not in md and "\n## Workers" not in md
    assert "| loss |" not in md and "LOSSY" not in md
    assert not os.path.exists(os.path.join(d, "plots", "transports.png"))
    assert not os.path.exists(os.path.join(d, "plots", "workers.png"))
    results = load_results(d)
    assert transport_section(results) is None and workers_section(results) is None


def test_eleven_servers_get_eleven_colours():
    names = [f"server{i}" for i in range(20)]
    colours = _colors(names)
    assert len(set(colours.values())) == 20


def test_every_flag_has_a_badge_colour():
    """A flag without its CSS class renders as white text on white: LOSSY, like every flag, has its colour."""
    for flag in FLAG_HELP:
        assert f".{flag}{{background:" in render._CSS, flag


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    plan = Plan(servers=("selectors", "cython"), sizes=(64,), conns=(100,), open_pcts=(), protocols=(), duration_s=1.0,
                warmup_s=0.2, interval_s=0.1, server_cpus=(0, 1), client_cpus=(2,), workers=(1, 2, 4))
    d = make_results(str(tmp_path_factory.mktemp("workers")), plan=plan)
    return d, build_report(d)


def test_the_workers_section_scales_per_server_and_says_when_the_workers_shared(workers):
    d, report = workers
    assert report["sections"]["transports"] is None
    section = report["sections"]["workers"]
    assert section.values == [1, 2, 4] and section.base == 1
    assert [(r[0][0], r[0][1]) for r in section.rows] == [(s, w) for s in ("selectors", "cython") for w in ("1", "2", "4")]
    cols = section.columns
    for row, _, c in section.rows:
        assert c.cell.workers == int(row[1]) and c.cell.transport == "tcp"
        if row[1] != "1":
            want = worker_factor(int(row[1]), 2)
            assert abs(float(row[cols.index("vs 1 worker")].rstrip("×")) - want) < 0.08
            assert abs(float(row[cols.index("CPU vs 1 worker")].rstrip("×")) - WORKER_CPU) < 0.06
    md = open(report["md"]).read()
    text = _section_text(md, "Workers")
    assert "The server had 2 CPUs (CPU 0,1): at 4 workers the workers shared them" in text
    assert re.search(r"With 4 server processes instead of 1, msgs/s is 1\.[78]\d× \(\w+\) to 1\.[78]\d×", text)
    assert "what 1 process gave" in text
    assert "(plots/workers.png)" in text
    with Image.open(os.path.join(d, "plots", "workers.png")) as im:
        assert im.format == "PNG" and len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    # the summary compares the servers with one process each
    assert all(r.headline.cell.workers == 1 for r in build_summary(report["results"]).rows)
