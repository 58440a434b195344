"""The result schema: files of schema 1, 2 and 3 read, write back as the current schema with every value kept, anything
else is refused in one line.

``tests/data/sample_v1`` (the former ``results/sample``) is a real run of schema 1 (327 load runs, every mode and
protocol the suite runs), so it is the reference: each of its raw files must
come back from ``LoadResult.from_json`` ... ``to_json`` key for key and value
for value, the parts schema 2 adds being ``None`` (not measured), and the
folder must still load, report and compare with the same figures as its raw
JSON gives when read by hand.
"""

import dataclasses
import glob
import json
import os
import shutil
import statistics

import pytest
from hdrh.histogram import HdrHistogram

from sockbench.bench.report.compare import compare
from sockbench.bench.report.document import build_report
from sockbench.bench.report.store import load_results, machine_line
from sockbench.bench.schema import (
    ERROR_KINDS, HISTORY, READABLE_VERSIONS, SCHEMA_VERSION, Cell, CellContext, Errors, Fairness, Interference,
    Latency, LoadResult, Machine, Part, ProcResult, RoundSummary, RunMeta, RunPlan, SchemaError, jain_index,
)
from sockbench.errors import SockbenchError
from sockbench.machine import machine_info

#: the former committed sample (schema 1: 327 load runs, every mode and protocol), kept so that reading
#: version-1 files stays tested after results/sample was regenerated in schema 2
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "sample_v1")
SAMPLE_FILES = sorted(glob.glob(os.path.join(SAMPLE, "raw", "*.json")))


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def sample_dicts():
    return {os.path.basename(p): _load(p) for p in SAMPLE_FILES}


def test_the_sample_holds_every_mode_and_protocol(sample_dicts):
    assert len(sample_dicts) == 327
    modes = {(d["workload"]["mode"], d["workload"]["protocol"]) for d in sample_dicts.values()}
    assert {("closed", "raw"), ("open", "raw"), ("closed", "frame"), ("closed", "json")} <= modes


#: what schema 2 adds to a machine, unknown in a schema-1 file
_MACHINE_V2 = ("isolcpus", "nohz_full", "governor", "smt", "aslr", "loadavg")


def _as_v2(d):
    """A schema-1 result dict as schema 2 writes it back: the same values, the new parts null, the transport tcp,
    one worker."""
    out = {**d, "schema": SCHEMA_VERSION, "interference": None, "fairness": None}
    out["workload"] = {**d["workload"], "transport": "tcp", "workers": 1}
    if d.get("cell") is not None:
        out["cell"] = {**d["cell"], "transport": "tcp", "workers": 1, "pass_no": None}
    if d.get("machine") is not None:
        out["machine"] = {**d["machine"], **{k: None for k in _MACHINE_V2}}
    return out


def test_every_sample_file_round_trips_exactly(sample_dicts):
    for name, d in sample_dicts.items():
        assert d["schema"] == 1
        r = LoadResult.from_json(d, name)
        assert r.interference is None and r.fairness is None and not r.disturbed and r.starved == 0
        assert r.to_json() == _as_v2(d), name
        # and the JSON text is the same, key order included (what `sockbench load --json -` prints)
        assert json.dumps(r.to_json(), sort_keys=True) == json.dumps(_as_v2(d), sort_keys=True)
        assert LoadResult.from_json(json.loads(json.dumps(r.to_json()))) == r, name


def test_a_schema_2_result_round_trips_with_its_new_parts(sample_dicts):
    d = _as_v2(sample_dicts["asyncio-protocol__closed-64B-c10__r1.json"])
    d["interference"] = {"server_foreign": 0.012, "client_foreign": 0.31, "server_steal": 0.0, "client_steal": 0.0,
                         "loadavg_1m": 1.25, "disturbed": True, "server_throttled": 0.0, "client_throttled": None,
                         "loaded_idle": 0.04, "canary": 1.01, "client_slowdown": 1.02, "unseen": False}
    d["fairness"] = {"conns": 10, "min": 0, "median": 1520.5, "max": 1710, "jain": 0.87, "starved": 1}
    d["cell"]["pass_no"] = 3  # schema 4: the pass of an interleaved run
    d["machine"].update(isolcpus=[], nohz_full=[1], governor={"0": "performance", "1": "powersave"}, smt=False,
                        aslr="Full randomization", loadavg=[1.25, 0.5, 0.25])
    r = LoadResult.from_json(json.loads(json.dumps(d)))
    assert r.to_json() == d and json.dumps(r.to_json(), sort_keys=True) == json.dumps(d, sort_keys=True)
    assert r.interference == Interference(0.012, 0.31, 0.0, 0.0, 1.25, True, 0.0, None, 0.04, 1.01, 1.02) and r.disturbed
    assert r.pass_no == 3 and r.cell.pass_no == 3 and r.interference.canary == 1.01 and not r.interference.unseen
    assert r.fairness == Fairness(10, 0, 1520.5, 1710, 0.87, 1) and r.starved == 1
    assert r.machine.nohz_full == [1] and r.machine.governor["1"] == "powersave"
    with pytest.raises(SchemaError, match="^F has a malformed fairness"):
        LoadResult.from_json({**d, "fairness": {"conns": 10}}, "F")
    with pytest.raises(SchemaError, match="^F is corrupt: interference is not an object"):
        LoadResult.from_json({**d, "interference": 0.3}, "F")


def test_jain_index_and_the_fairness_of_counts():
    assert jain_index([5, 5, 5, 5]) == 1.0
    assert jain_index([8, 0, 0, 0]) == 0.25  # one has everything: 1/n
    assert jain_index([1, 3]) == pytest.approx(16 / (2 * 10))
    assert jain_index([0, 0]) == 0.0 and jain_index([]) is None
    f = Fairness.of([0, 4, 2, 10, 0])
    assert (f.conns, f.min, f.median, f.max, f.starved) == (5, 0, 2.0, 10, 2)
    assert f.jain == pytest.approx(16 ** 2 / (5 * 120))
    assert Fairness.of([3, 4]).median == 3.5 and Fairness.of([3, 4]).starved == 0


def test_typed_fields_carry_the_file_values(sample_dicts):
    d = sample_dicts["asyncio-protocol__open-64B-c100-25pct__r1.json"]
    r = LoadResult.from_json(d)
    assert r.throughput.msgs_per_s == d["throughput"]["msgs_per_s"] == 26765.0
    assert r.throughput.target_rate == d["throughput"]["target_rate"]
    assert r.latency_us == Latency(**d["latency_us"])
    assert r.service_us.p99 == d["service_us"]["p99"] and r.cycle_us is None
    assert r.errors.total == 0 and tuple(r.errors.by_kind) == tuple(sorted(ERROR_KINDS))
    assert r.server_proc.us_per_msg.user == d["server_proc"]["us_per_msg"]["user"]
    assert r.client.load == d["client"]["busy_util"]  # a polling client: its busy share
    assert r.timeseries.sent == d["timeseries"]["sent"]
    assert r.machine.cpu_model == "AMD EPYC" and r.machine.usable_cpus == [0, 1]
    assert r.identity() == Cell("asyncio-protocol", "open", 64, 100, 1, 25, "raw")
    assert r.identity().workload_id == d["cell"]["workload_id"] and r.round_no == 1
    assert r.cell.peak_msgs_per_s == d["cell"]["peak_msgs_per_s"]


def test_mode_only_keys_are_left_out_where_they_do_not_apply(sample_dicts):
    d = sample_dicts["asyncio-protocol__closed-64B-c10__r1.json"]
    out = LoadResult.from_json(d).to_json()
    assert "service_us" not in out and "cycle_us" not in out and "cell" in out
    assert "target_rate" not in out["throughput"] and "sent" not in out["timeseries"]
    assert out["hdr_service"] is None  # always present: null outside open loop


def test_the_sample_folder_loads_with_the_figures_its_raw_json_gives(sample_dicts):
    res = load_results(SAMPLE)
    assert len(res.results) == len(res.runs) == 327
    by_cell = {}
    for d in sample_dicts.values():
        c = d["cell"]
        by_cell.setdefault((c["server"], c["workload_id"]), []).append(d)
    assert set(res.cells) == set(by_cell)
    for key, cs in res.cells.items():
        raw = sorted(by_cell[key], key=lambda d: d["cell"]["round"])
        assert [r.round_no for r in cs.results] == [d["cell"]["round"] for d in raw]
        assert cs.runs == [_as_v2(d) for d in raw]  # the dict view is the files themselves, as schema 2
        assert cs.median == statistics.median(d["throughput"]["msgs_per_s"] for d in raw)
        per_msg = [d["server_proc"]["us_per_msg"]["user"] + d["server_proc"]["us_per_msg"]["sys"] for d in raw]
        assert cs.cpu_us_per_msg == statistics.median(per_msg)
        merged = HdrHistogram(1, 100 * 10**9, 3)
        for d in raw:
            merged.decode_and_add(d["hdr"])
        assert cs.latency_summary().p99 == merged.get_value_at_percentile(99.0) / 1000.0
        assert cs.latency_summary().count == merged.get_total_count()
        assert cs.errors_total == sum(d["errors"]["total"] for d in raw)
    first = next(iter(res.cells.values()))
    assert first.summary().to_json()["msgs_per_s_median"] == first.median
    assert res.commit() == "e41568831088" and "AMD EPYC" in res.footnote()


@pytest.mark.slow
def test_the_sample_folder_reports_and_compares(tmp_path):
    copy = str(tmp_path / "sample")
    shutil.copytree(SAMPLE, copy, ignore=shutil.ignore_patterns("plots", "report.*"))
    rep = build_report(copy)
    assert os.path.getsize(rep["md"]) > 0 and os.path.getsize(rep["html"]) > 0 and len(rep["plots"]) == 7
    out = compare(SAMPLE, copy)
    assert len(out["rows"]) == len(load_results(SAMPLE).cells)
    # 3 rounds against 3 allow no 95% interval: no verdict either way, and nothing fails
    assert {r["verdict"] for r in out["rows"]} == {"undecided (needs more rounds)"}
    assert compare(SAMPLE, copy, fail_above=0.05)["failed"] == []
    assert not out["only_a"] and not out["only_b"] and not out["notes"]


# --- legacy tolerance (from_json only) ----------------------------------------------------------


def _minimal():
    """A hand-made result with the required keys only, as an outside script might write one."""
    return {"schema": 1, "server": "uvloop", "workload": {"mode": "closed", "conns": 10, "size": 64},
            "throughput": {"msgs_per_s": 1000.0}, "latency_us": {"p50": 10.0}, "errors": {"total": 0}, "valid": True}


def test_legacy_files_read_with_their_documented_normalisations():
    r = LoadResult.from_json(_minimal())
    # no protocol: raw; no depth: one in flight; no hdr_unit: nanoseconds; absent parts: empty
    assert r.workload.protocol == "raw" and r.workload.depth == 1 and r.hdr_unit == "ns"
    assert r.identity() == Cell("uvloop", "closed", 64, 10) and r.round_no == 0
    assert r.server_proc.us_per_msg.user is None and r.client.polling is None and r.machine is None
    assert r.latency_us.count is None  # an unknown count stays unknown (the store weighs such a round as 1)
    out = r.to_json()
    assert out["workload"]["protocol"] == "raw" and out["workload"]["depth"] == 1
    assert out["server_proc"]["us_per_msg"] == {"user": None, "sys": None} and out["machine"] is None
    assert "cell" not in out and "service_us" not in out
    # written back, it reads as the same result
    assert LoadResult.from_json(out) == r


def test_a_framed_cell_without_the_suite_context_keys_on_its_workload():
    d = _minimal()
    d["workload"].update(protocol="json", depth=16)
    assert LoadResult.from_json(d).identity().workload_id == "closed-64B-c10-d16-json"
    d["cell"] = {"server": "uvloop", "round": 2}  # a partial context: the rest from the workload
    r = LoadResult.from_json(d)
    assert r.identity() == Cell("uvloop", "closed", 64, 10, 16, protocol="json") and r.round_no == 2


def test_machine_keys_in_other_spellings_read_into_one():
    m = Machine.from_json({"cpu": "Xeon", "cpu_count": 8, "python_version": "3.12.1", "node": "box",
                           "commit": "abc", "os": "Linux", "unknown_key": 1})
    assert (m.cpu_model, m.cores, m.python, m.hostname, m.git_commit) == ("Xeon", 8, "3.12.1", "box", "abc")
    assert machine_line({"processor": "Xeon", "cpus": 8, "node": "box"}) == "box, Xeon, 8 CPUs"
    # the one spelling wins over an alias
    assert Machine.from_json({"cpu_model": "EPYC", "cpu": "Xeon"}).cpu_model == "EPYC"
    assert machine_line({}) == "machine unknown"


def test_machine_is_exactly_machine_info():
    info = machine_info()
    assert Machine(**info).to_json() == info
    assert Machine.from_json(info) == Machine(**info)


# --- what is not a result: one SchemaError line ---------------------------------------------------


@pytest.mark.parametrize("data,message", [
    ({"schema": 7}, "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    ([1, 2], "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    ("garbage", "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    (None, "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    ({**_minimal(), "schema": 5}, "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    ({**_minimal(), "schema": "1"}, "F is not a schema-1 or schema-2 or schema-3 or schema-4 sockbench result"),
    ({k: v for k, v in _minimal().items() if k not in ("throughput", "valid")}, "F is corrupt: it lacks throughput, valid"),
    ({**_minimal(), "latency_us": [1]}, "F is corrupt: throughput/latency_us are not objects"),
    ({**_minimal(), "workload": "closed"}, "F has a malformed workload (not an object); it is not a sockbench result"),
    ({**_minimal(), "workload": {"mode": "closed"}}, "F has a malformed workload (KeyError('conns')); it is not a sockbench result"),
    ({**_minimal(), "workload": {"mode": "closed", "conns": "ten", "size": 64}}, "F has a malformed workload"),
    ({**_minimal(), "workload": {"mode": "closed", "conns": 1, "size": 64, "protocol": "no such"}}, "F has a malformed workload"),
    ({**_minimal(), "cell": {"server": "x", "size": "big"}}, "F has a malformed workload"),
    ({**_minimal(), "client": 3}, "F is corrupt: client is not an object"),
    ({**_minimal(), "errors": {"total": 1, "by_kind": [1]}}, "F is corrupt: errors.by_kind is not an object"),
])
def test_anything_else_is_one_schema_error_line(data, message):
    with pytest.raises(SchemaError) as e:
        LoadResult.from_json(data, "F")
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text
    assert isinstance(e.value, SockbenchError) and e.value.exit_code == 1


def _parts(cls=LoadResult, seen=None):
    """Every declared part reachable from ``cls``."""
    seen = seen if seen is not None else {}
    seen[cls] = None
    for f in dataclasses.fields(cls):
        read = f.metadata.get("read")
        part = read[0] if isinstance(read, tuple) else read
        if isinstance(part, type) and issubclass(part, Part) and part not in seen:
            _parts(part, seen)
    return list(seen)


def test_every_field_names_a_version_of_the_history():
    """A new field says ``since=N`` and N has its line in HISTORY: the version is bumped with the field."""
    declared = [(cls.__name__, f.name, f.metadata["since"]) for cls in _parts() + [ProcResult, RunMeta, RunPlan]
                for f in dataclasses.fields(cls) if "since" in f.metadata]
    assert declared and all(since in HISTORY for _, _, since in declared), declared
    assert sorted(HISTORY) == list(range(1, SCHEMA_VERSION + 1)) and READABLE_VERSIONS == tuple(HISTORY)
    assert max(since for _, _, since in declared) == SCHEMA_VERSION


def test_version_and_error_kinds():
    assert SCHEMA_VERSION == 4
    assert ERROR_KINDS == ("connect", "reset", "timeout", "mismatch", "protocol")
    assert Errors.of({"connect": 1, "reset": 0, "timeout": 2, "mismatch": 0, "protocol": 0}).to_json() == {
        "total": 3, "by_kind": {"connect": 1, "reset": 0, "timeout": 2, "mismatch": 0, "protocol": 0}}


# --- the cell, and the suite's summaries ----------------------------------------------------------


def test_cell_identity_and_its_one_description():
    c = Cell("uvloop", "closed", 64, 100, 16, protocol="json")
    assert c.workload_id == "closed-64B-c100-d16-json" and c.base_workload_id == "closed-64B-c100-d16"
    assert c.id == "uvloop:closed-64B-c100-d16-json"
    assert c.describe() == "uvloop · closed · 64B · 100 conns · depth 16 · json"
    o = Cell("selectors", "open", 1024, 1, load_pct=75)
    assert o.workload_id == "open-1KiB-c1-75pct" and o.describe() == "selectors · open · 1KiB · 1 conn · 75% of peak"
    ctx = CellContext.of(c, 2, 3, 41, None)
    assert ctx.cell == c and ctx.to_json()["workload_id"] == c.workload_id


def test_the_suite_summaries_keep_their_extra_info_keys(sample_dicts):
    r = LoadResult.from_json(sample_dicts["asyncio-protocol__open-64B-c100-25pct__r1.json"])
    assert set(RoundSummary.of(r).to_json()) == {
        "msgs_per_s", "bytes_per_s", "target_rate", "achieved_rate", "latency_us", "server_us_per_msg",
        "server_rss_peak_bytes", "client_cpu_util", "client_busy_util", "errors", "valid", "client_bound",
        "invalid_reason", "started_at", "interference", "fairness", "disturbed", "starved"}
    assert RoundSummary.of(r).to_json()["latency_us"] == {k: r.latency_us.to_json()[k] for k in
                                                          ("p50", "p90", "p99", "p999", "max", "mean")}
    cs = next(iter(load_results(SAMPLE).cells.values()))
    s = cs.summary().to_json()
    assert set(s) == {
        "msgs_per_s_median", "msgs_per_s_stdev", "spread", "unstable", "mb_per_s_median", "latency_us",
        "latency_source", "server_cpu_us_per_msg", "server_user_us_per_msg", "server_rss_peak_bytes",
        "client_cpu_util", "client_load", "errors_total", "errors_by_kind", "valid", "client_bound",
        "invalid_reasons", "flags", "rounds", "remeasured", "figure", "figure_median", "figure_ci",
        "figure_ci_confidence", "disturbed_rounds", "starved", "robust_spread", "outlier_rounds"}
    assert s["latency_source"] == "hdr" and s["latency_us"]["p99"] == cs.latency()["p99"]
    json.dumps(s)
