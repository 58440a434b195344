"""A polling client's stalls (its CPU taken from it) in the report: the open-loop table's column, the sentence
under it, and ``results.csv``, on a synthetic results folder whose open rounds say how often their client stalled.

The loop's count is tested by stopping a real load process (tests/e2e/test_client_stalls.py), the merge over
load processes and hosts in test_cluster_merge.py.
"""

import csv
import glob
import json
import os

import pytest

from report_fixture import make_results
from sockbench.bench.report.document import OPEN_COLUMNS, build_report, stalls_sentence, table_rows
from sockbench.bench.report.store import load_results


#: uvloop's open rounds: round k of a cell saw k stalls, the longest 1.5 ms in round 6 (selectors' saw none)
def _stalled(k):
    return {"polling": True, "stalls": k, "stall_s": 0.0007 * k, "longest_stall_s": 0.00025 * k}


@pytest.fixture(scope="module")
def stalled(tmp_path_factory):
    d = make_results(str(tmp_path_factory.mktemp("stalls")), servers=("selectors", "uvloop"))
    for path in glob.glob(os.path.join(d, "raw", "*open*.json")):
        with open(path) as f:
            r = json.load(f)
        k = r["cell"]["round"] if r["server"] == "uvloop" else 0
        r["client"].update(_stalled(k))
        with open(path, "w") as f:
            json.dump(r, f)
    return d


@pytest.mark.slow
def test_the_open_table_shows_each_cells_stalls_and_says_so_under_it(stalled):
    results = load_results(stalled)
    opened = [wid for wid, cell in results.workloads().items() if cell.mode == "open"]
    assert opened
    col = OPEN_COLUMNS.index("client stalls")
    for wid in opened:
        rows = {c.server: cells for cells, _, c in table_rows(results, wid)}
        assert len(rows["uvloop"]) == len(OPEN_COLUMNS)
        # every round of the cell: 1 + 2 + ... + 6 stalls, the longest in round 6
        assert rows["uvloop"][col] == "21, longest 1.5 ms" and rows["selectors"][col] == "0"
        cells = [c for c in results.cells.values() if c.workload_id == wid]
        assert stalls_sentence(cells) == (
            "The client's CPU was taken from it 21 times for 0.5 ms or more (longest 1.5 ms) during these windows: "
            "a p99 near that length says as much about this machine as about the server.")
    # a closed-loop table has no such column and no such sentence
    closed = [c for c in results.cells.values() if c.cell.mode == "closed"]
    assert all(c.client_stalls is None for c in closed) and stalls_sentence(closed) is None
    md = open(build_report(stalled)["md"]).read()
    assert md.count("The client's CPU was taken from it 21 times") == len(opened)
    assert "| p99 vs lowest | client stalls |" in md and "| 21, longest 1.5 ms |" in md
    # results.csv: each round's own figures (every open cell of a server stalled alike)
    with open(os.path.join(stalled, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    got = {}
    for r in rows:
        got.setdefault((r["server"], r["mode"], int(r["round"])), set()).add(
            (r["client_stalls"], r["client_stall_s"], r["client_longest_stall_s"]))
    assert got[("uvloop", "open", 6)] == {("6", str(0.0007 * 6), "0.0015")}
    assert got[("selectors", "open", 2)] == {("0", "0.0", "0.0")} and got[("uvloop", "closed", 6)] == {("", "", "")}


@pytest.mark.slow
def test_no_stall_seen_means_no_sentence(tmp_path):
    d = make_results(str(tmp_path / "quiet"), servers=("uvloop",))
    results = load_results(d)
    opened = [c for c in results.cells.values() if c.cell.mode == "open"]
    # the fixture's client does not poll: nothing measured, the column says so and no sentence is written
    assert opened and stalls_sentence(opened) is None
    wid = opened[0].workload_id
    assert table_rows(results, wid)[0][0][OPEN_COLUMNS.index("client stalls")] == "–"
    assert "The client's CPU was taken from it" not in open(build_report(d)["md"]).read()


@pytest.mark.slow
def test_the_threads_that_held_the_pinned_cpus_are_named_under_the_open_table(tmp_path):
    from sockbench.bench.report.document import held_sentence

    d = make_results(str(tmp_path / "held"), servers=("selectors", "uvloop"))
    for path in glob.glob(os.path.join(d, "raw", "*open*.json")):
        with open(path) as f:
            r = json.load(f)
        k = r["cell"]["round"]
        # round k: kdamond held the server's CPU k ms, the agent the client's 2 ms
        r["interference"] = {**(r.get("interference") or {}), "server_held_s": k / 1000, "client_held_s": 0.002,
                             "held_s": k / 1000 + 0.002,
                             "held_by": [{"thread": "kdamond.0", "pid": 84, "s": k / 1000},
                                         {"thread": "tokio-rt-worker", "pid": 1, "s": 0.002}]}
        with open(path, "w") as f:
            json.dump(r, f)
    results = load_results(d)
    opened = [c for c in results.cells.values() if c.cell.mode == "open"]
    rounds = len(opened[0].results)
    assert opened and all(c.held is not None for c in opened)
    typical, most, named = opened[0].held
    assert most == pytest.approx(rounds / 1000 + 0.002) and named[0][:2] == ("kdamond.0", 84)
    sentence = held_sentence(opened)
    assert sentence.startswith("Other threads held the pinned CPUs in slices of 0.1 ms or more for ")
    assert "kdamond.0 (pid 84, " in sentence and "tokio-rt-worker (pid 1, " in sentence
    assert sentence.index("kdamond.0") < sentence.index("tokio-rt-worker")
    assert "may measure them as much as the server" in open(build_report(d)["md"]).read()
    # closed-loop cells and rounds that did not read it: nothing said
    assert held_sentence([c for c in results.cells.values() if c.cell.mode == "closed"]) is None
