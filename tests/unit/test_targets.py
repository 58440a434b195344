"""Targets in one place: --command parsing, plugin records, the check registry and report, the plan's new dimensions."""

import json
import sys
import types
import xml.etree.ElementTree as ET

import pytest

from sockbench.bench.check.base import FAIL, NA, PASS, Outcome
from sockbench.bench.check.datagram import _numbered, count_echoes
from sockbench.bench.check.report import junit_xml, to_json
from sockbench.bench.check.runner import CheckRun, select_checks
from sockbench.bench.schema import Cell, LoadResult, Target, Workload
from sockbench.bench.suite.plan import quick_plan
from sockbench.errors import UsageError
from sockbench.servers import registry
from sockbench.servers.command import AUTO_PORT, Command


# --- --command --------------------------------------------------------------------------------


def test_a_command_is_split_like_a_shell_and_named_for_its_program():
    c = Command.parse("socat TCP-LISTEN:{port},fork,reuseaddr 'EXEC:cat -u'", ready_port=AUTO_PORT)
    assert c.name == "socat" and c.placeholders == {"port"}
    assert c.argv({"port": 5000, "host": "127.0.0.1", "path": None}) == ["socat", "TCP-LISTEN:5000,fork,reuseaddr",
                                                                         "EXEC:cat -u"]
    assert c.ready_address({"port": 5000, "host": "127.0.0.1", "path": None}) == ("127.0.0.1", 5000)
    assert Command.parse("./bin/my_echo --port {port}").name == "my_echo"
    assert Command.from_json(c.to_json()) == c


@pytest.mark.parametrize("text, kw, says", [
    ("", {}, "--command is empty"),
    ("echo {prot}", {}, "unknown placeholder {prot}"),
    ("echo 'unclosed", {}, "No closing quotation"),
    ("echo {port", {}, "a literal brace"),
    ("srv", {"ready_port": AUTO_PORT}, "needs {port}"),
    ("srv", {"ready_port": "http"}, "bad --ready-port"),
    ("srv", {"ready_port": "70000"}, "bad --ready-port"),
    ("srv", {"name": "a b"}, "bad --name"),
])
def test_a_bad_command_is_one_usage_line(text, kw, says):
    with pytest.raises(UsageError) as e:
        Command.parse(text, **kw)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_command_takes_the_transports_its_placeholders_allow():
    port = Command.parse("srv --port {port}")
    path = Command.parse("srv --unix {path}", ready_port=AUTO_PORT)
    port.check_transport("tcp6") and port.check_transport("udp")
    with pytest.raises(UsageError, match="needs {path}"):
        port.check_transport("unix")
    path.check_transport("unix")
    with pytest.raises(UsageError, match="use --transport unix"):
        path.check_transport("tcp")
    assert path.ready_address({"path": "/tmp/x/echo.sock", "host": None, "port": 0}) == "/tmp/x/echo.sock"


# --- plugins ------------------------------------------------------------------------------------


class _EP:
    """A stand-in for an ``importlib.metadata.EntryPoint``."""

    def __init__(self, name, obj, dist="sockbench-plugin-x"):
        self.name, self.value, self._obj = name, f"pkg:{name}", obj
        self.dist = types.SimpleNamespace(name=dist)

    def load(self):
        if isinstance(self._obj, BaseException):
            raise self._obj
        return self._obj


def _scan(monkeypatch, eps):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP
                        else [])
    return registry._scan_plugins()


def test_plugins_join_the_table_and_broken_ones_are_one_line_each(monkeypatch):
    good = {"module": "json", "summary": "a test plugin", "transports": ["tcp", "unix"]}
    found, problems = _scan(monkeypatch, [
        _EP("mine", good),
        _EP("as-spec", registry.ServerSpec("as-spec", "json", "a spec")),
        _EP("as-callable", lambda: dict(good)),
        _EP("broken", ImportError("No module named 'nowhere'")),
        _EP("bad-record", {"module": "json", "protocols": ["morse"]}),
        _EP("not-a-record", 42),
        _EP("cython", dict(good)),
        _EP("mine", dict(good), dist="zz-later-dist"),
        _EP("renamed", {"name": "other", "module": "json"}),
    ])
    assert set(found) == {"mine", "as-spec", "as-callable"}
    assert found["mine"].plugin == "sockbench-plugin-x" and found["mine"].transports == ("tcp", "unix")
    assert found["mine"].availability() == (True, "available")
    text = "\n".join(problems)
    assert len(problems) == 6 and all("\n" not in p for p in problems)
    for says in ("'broken'", "cannot be imported: ImportError", "'bad-record'", "protocols must include raw",
                 "'not-a-record'", "is a built-in server's", "taken by sockbench-plugin-x's", "not the entry point's"):
        assert says in text, (says, text)


def test_a_plugin_whose_module_is_missing_is_listed_as_unavailable(monkeypatch):
    found, _ = _scan(monkeypatch, [_EP("ghost", {"module": "sockbench_no_such_module"})])
    ok, why = found["ghost"].availability()
    assert not ok and "not installed" in why


def test_a_builtin_name_never_scans_the_plugins(monkeypatch):
    servers = registry._Servers(registry.BUILTIN)
    monkeypatch.setattr(registry, "_scan_plugins", lambda: pytest.fail("scanned"))
    assert servers["cython"].name == "cython" and "uvloop" in servers


# --- the checks, their table and their reports -----------------------------------------------


def test_every_check_says_what_it_applies_to_and_the_stop_check_runs_last():
    checks = select_checks()
    assert checks[-1].name == "stop" and checks[0].name == "echo"
    assert {"echo", "half-close", "slow-reader", "connect-flood", "malformed", "udp-loss", "nodelay"} <= {c.name for c in checks}
    with pytest.raises(UsageError, match="unknown check 'nope'"):
        select_checks(["nope"])


def test_udp_echoes_are_counted_as_sockperf_counts_them():
    sent = set(range(6))
    got = [_numbered(0, 64), _numbered(2, 64), _numbered(1, 64), _numbered(2, 64), b"x" * 64, _numbered(5, 64)]
    assert count_echoes(sent, got, 64) == (2, 1, 1, 1)  # 3 and 4 lost, 2 twice, 1 late, one corrupt


def _run():
    r = CheckRun("socat", "socat (--command 'socat ...')", "tcp", "raw", True, seconds=1.5)
    r.outcomes = [Outcome("echo", "echo", PASS, "11 sizes", 0.4), Outcome("nodelay", "nodelay", FAIL, "off", 0.1),
                  Outcome("udp-loss", "udp", NA, "for udp")]
    r.notes.append("started again after echo")
    return r


def test_the_json_and_junit_reports_carry_every_outcome():
    doc = to_json([_run()])
    assert doc["kind"] == "sockbench-check" and doc["passed"] is False
    assert doc["runs"][0]["failed"] == 1 and doc["runs"][0]["checks"][1]["detail"] == "off"
    json.dumps(doc)
    root = ET.fromstring(junit_xml([_run()]).split("\n", 1)[1])
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["nodelay"].find("failure").get("message") == "off"
    assert cases["udp-loss"].find("skipped") is not None and cases["echo"].find("failure") is None


# --- the plan and the schema ------------------------------------------------------------------


def test_the_interpreter_is_a_dimension_of_the_builtin_servers_only():
    cmd = Command.parse("socat TCP-LISTEN:{port},fork EXEC:cat", ready_port=AUTO_PORT)
    plan = quick_plan(["cython", "socat"], commands={"socat": cmd.to_json()},
                      pythons=({"label": "3.11", "python": sys.executable}, {"label": "3.12", "python": "/py312"}),
                      python_servers=("cython",))
    cells = plan.cells()
    assert {c.python for c in cells if c.server == "cython"} == {"3.11", "3.12"}
    assert {c.python for c in cells if c.server == "socat"} == {""}
    assert plan.python_of("3.12") == "/py312" and plan.python_of("") is None
    assert type(plan).from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(UsageError, match="one interpreter twice"):
        quick_plan(["cython"], pythons=({"label": "3.12", "python": "a"}, {"label": "3.12", "python": "b"}))


def test_a_cell_under_another_interpreter_says_so_and_round_trips():
    c = Cell("cython", "closed", 64, 100, python="3.12")
    assert c.id == "cython:closed-64B-c100-py3.12" and "Python 3.12" in c.describe()
    assert Cell("cython", "closed", 64, 100).id == "cython:closed-64B-c100"
    w = Workload(mode="closed", conns=100, size=64, python="3.12")
    assert Workload.from_json(w.to_json()) == w and "python" not in Workload(mode="closed", conns=1, size=64).to_json()
    t = Target("127.0.0.1", 5000, command="socat ...")
    assert Target.from_json(t.to_json()) == t and "command" not in Target("127.0.0.1", 1).to_json()


def test_an_old_result_reads_as_sockbench_s_own_interpreter():
    d = {"schema": 2, "server": "cython", "workload": {"mode": "closed", "conns": 1, "size": 64},
         "throughput": {"msgs_per_s": 1.0}, "latency_us": {}, "errors": {}, "valid": True}
    r = LoadResult.from_json(d)
    assert r.workload.python is None and r.identity().python == "" and r.server_proc.python is None


def test_a_plugin_may_name_a_kernel_check_and_a_failing_one_is_its_reason(monkeypatch):
    kernel = types.ModuleType("sockbench_test_kernel")
    kernel.refuses = lambda: (False, "io_uring is disabled (kernel.io_uring_disabled = 2)")
    kernel.breaks = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "sockbench_test_kernel", kernel)
    found, problems = _scan(monkeypatch, [
        _EP("ring", {"module": "json", "kernel_check": "sockbench_test_kernel:refuses"}),
        _EP("broken-check", {"module": "json", "kernel_check": "sockbench_test_kernel:breaks"}),
        _EP("bad-check", {"module": "json", "kernel_check": "no colon here"}),
    ])
    assert set(found) == {"ring", "broken-check"}
    assert found["ring"].availability() == (False, "io_uring is disabled (kernel.io_uring_disabled = 2)")
    ok, why = found["broken-check"].availability()
    assert not ok and "kernel check 'sockbench_test_kernel:breaks' failed: ZeroDivisionError" in why
    assert len(problems) == 1 and "'bad-check'" in problems[0] and "kernel_check must be" in problems[0]
