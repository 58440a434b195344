"""The load engine choice (``--engine epoll|uring``): its checks, the plan's per-cell engine, the result's record
and the report's line, without running a load (tests/e2e/test_uring.py runs the io_uring loop itself)."""

import glob
import json
import os

import pytest

from report_fixture import make_results
from sockbench.bench.load.spec import ENGINES, LoadSpec, check_engine
from sockbench.bench.report.document import build_report, engine_setting
from sockbench.bench.report.store import load_results
from sockbench.bench.schema import Cell, Client, LoadResult
from sockbench.bench.suite.plan import default_plan
from sockbench.cli.main import main
from sockbench.errors import UsageError
from sockbench.servers import iouring


@pytest.fixture
def refused(monkeypatch):
    """io_uring refused, as a seccomp filter would: the reason ``sockbench.servers.iouring`` words."""
    why = iouring.refusal(1)  # EPERM
    monkeypatch.setattr(iouring, "kernel_support", lambda: (False, why, {"errno": 1}))
    return why


def test_the_engines_and_what_each_refuses():
    assert ENGINES == ("epoll", "uring")
    check_engine("epoll", "json", "udp")  # epoll loads everything
    with pytest.raises(UsageError, match=r"unknown --engine 'kqueue'; use one of epoll, uring"):
        check_engine("kqueue")
    with pytest.raises(UsageError, match=r"--engine uring speaks --protocol raw only; use --engine epoll for json"):
        check_engine("uring", "json")
    with pytest.raises(UsageError, match=r"--engine uring loads the stream transports"):
        check_engine("uring", "raw", "udp")


def test_a_refused_io_uring_is_the_one_line_of_load_and_run(refused, capsys):
    with pytest.raises(UsageError) as e:
        LoadSpec(server="cython", engine="uring").validate()
    assert str(e.value) == f"--engine uring: {refused}" and e.value.exit_code == 2
    assert main(["load", "cython", "--engine", "uring", "--json", "-"]) == 2
    assert capsys.readouterr().err == f"sockbench: --engine uring: {refused}\n"
    assert main(["run", "--servers", "cython", "--engine", "uring", "--out", "/nonexistent/never"]) == 2
    assert capsys.readouterr().err.strip().endswith(refused)


def test_the_plan_loads_raw_stream_cells_with_its_engine_and_the_rest_with_epoll():
    plan = default_plan(["cython"], engine="uring")
    assert plan.engine_for(Cell("cython", "closed", 64, 100)) == "uring"
    assert plan.engine_for(Cell("cython", "closed", 64, 100, transport="unix")) == "uring"
    assert plan.engine_for(Cell("cython", "closed", 64, 100, protocol="json")) == "epoll"
    assert plan.engine_for(Cell("cython", "closed", 64, 100, transport="udp")) == "epoll"
    assert default_plan(["cython"]).engine_for(Cell("cython", "closed", 64, 100)) == "epoll"
    assert type(plan).from_dict(json.loads(json.dumps(plan.to_dict()))).engine == "uring"


def test_the_result_records_its_engine_and_older_files_read_as_epoll():
    c = Client(engine="uring")
    assert c.to_json()["engine"] == "uring" and Client.from_json(c.to_json()) == c
    old = Client.from_json({"cpu_util": 0.5})
    assert old.engine is None and old.engine_name == "epoll" and "engine" not in old.to_json()


def test_the_report_says_which_engine_measured_each_cell(tmp_path):
    d = make_results(str(tmp_path / "run"), servers=("selectors", "uvloop"))
    results = load_results(d)
    assert engine_setting(results) == "epoll (every cell)"
    for path in glob.glob(os.path.join(d, "raw", "uvloop__closed*.json")):
        with open(path) as f:
            r = json.load(f)
        r["client"]["engine"] = "uring"
        LoadResult.from_json(r)  # still a result
        with open(path, "w") as f:
            json.dump(r, f)
    text = engine_setting(load_results(d))
    epoll, uring = text.split("; ")
    assert epoll.startswith("epoll: ") and "selectors closed-" in epoll and "uvloop open-" in epoll
    assert uring.startswith("uring: uvloop closed-") and "selectors" not in uring
    md = open(build_report(d)["md"]).read()
    assert "load engine" in md and "uring: uvloop closed-" in md


def test_the_io_uring_loop_speaks_no_tls_and_says_so_in_one_line(capsys):
    with pytest.raises(UsageError, match=r"^--engine uring does not speak TLS; leave --engine out") as e:
        check_engine("uring", "raw", "tcp", tls=True)
    assert e.value.exit_code == 2
    check_engine("epoll", "raw", "tcp", tls=True)  # TLS is the epoll loop's
    assert main(["load", "cython", "--engine", "uring", "--tls", "--json", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sockbench: --engine uring does not speak TLS") and err.count("\n") == 1


def test_a_run_over_tls_keeps_its_tls_cells_on_epoll_and_refuses_an_engine_with_nothing_to_load(monkeypatch, capsys):
    plan = default_plan(["cython"], engine="uring")
    assert plan.engine_for(Cell("cython", "closed", 64, 100, tls=True)) == "epoll"
    assert plan.engine_for(Cell("cython", "closed", 64, 100, tls=False)) == "uring"
    from sockbench.bench.suite import runner

    monkeypatch.setattr(runner, "check_engine", lambda engine: None)  # io_uring's own verdict is not the point here
    assert main(["run", "--servers", "cython", "--engine", "uring", "--tls", "on", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert "--engine uring loads the plain raw cells, and --tls on leaves none" in err and err.count("\n") == 1


def test_the_engine_is_a_results_csv_column():
    from sockbench.bench.schema import csv_columns

    column = dict(csv_columns(Client))["client_engine"]
    assert column(Client(engine="uring")) == "uring" and column(Client()) is None
