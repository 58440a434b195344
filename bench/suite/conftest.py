"""pytest configuration of the benchmark suite (``bench/``), separate from the unit tests.

The unit tests run with ``testpaths = ["tests"]`` and never collect this
folder.  Here the matrix comes from ``SOCKBENCH_PLAN`` (written by
``sockbench run``) or, run by hand, the default matrix over every available
server; see ``sockbench.bench.suite.session``.

The test is parametrized on the fields of ``schema.Cell`` as plain values
(``server``, ``mode``, ``size``, ``conns`` ...), not on Cell objects, so that
pytest-benchmark's ``params`` serialize (``compare --group-by=param:server``
works) and a field added to Cell becomes a parameter by itself; the ``cell``
fixture builds the Cell back from them.  pytest-benchmark's commit and
machine records are sockbench's own (``machine_info``), so the JSON and
``meta.json`` agree on the commit and on ``dirty`` whatever the directory
pytest runs in.
"""

import dataclasses
import signal

import pytest

from sockbench.bench.schema import Cell
from sockbench.bench.suite.session import SuiteContext
from sockbench.children import Stopped
from sockbench.machine import machine_info

__all__ = ["pytest_configure", "pytest_generate_tests", "pytest_sessionfinish", "suite_ctx", "measured", "cell",
           "CELL_PARAMS",
           "pytest_benchmark_update_commit_info", "pytest_benchmark_update_machine_info"]

#: the test's parameters: every field of Cell, as plain values
CELL_PARAMS = tuple(f.name for f in dataclasses.fields(Cell))

_CTX = []


def _context():
    if not _CTX:
        _CTX.append(SuiteContext.from_env())
    return _CTX[0]


def _terminated(signum, frame):
    raise Stopped(signum)


def pytest_configure(config):
    # `sockbench run` sends SIGTERM when a Ctrl-C'd suite overruns its grace, and the kernel sends it when
    # the runner dies: unwind as for Ctrl-C, so the round in flight stops its server and load processes by
    # pid instead of leaving them behind
    signal.signal(signal.SIGTERM, _terminated)


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames and all(n in metafunc.fixturenames for n in CELL_PARAMS):
        cells = _context().cells
        metafunc.parametrize(list(CELL_PARAMS), [tuple(getattr(c, n) for n in CELL_PARAMS) for c in cells],
                             ids=[c.id for c in cells])


@pytest.fixture
def cell(request):
    """The Cell of this test, from its plain parameters."""
    return Cell(**{n: request.getfixturevalue(n) for n in CELL_PARAMS})


_MACHINE = []


def _machine():
    if not _MACHINE:
        _MACHINE.append(machine_info())
    return _MACHINE[0]


def pytest_benchmark_update_commit_info(config, commit_info):
    # the commit of sockbench's own checkout, as meta.json records it, not the one of the current directory
    m = _machine()
    commit_info.update(id=m["git_commit"] or "unversioned", dirty=bool(m["git_dirty"]), project="sockbench")


def pytest_benchmark_update_machine_info(config, machine_info):
    m = _machine()
    machine_info["sockbench"] = {"version": m["sockbench_version"], "versions": m["versions"],
                                 "cpu_model": m["cpu_model"], "usable_cpus": m["usable_cpus"]}


@pytest.fixture(scope="session")
def suite_ctx():
    return _context()


@pytest.fixture(scope="session")
def measured(request, suite_ctx):
    """Every selected cell measured in interleaved passes (``SuiteContext.measure``): ``{cell id: CellRun}``.

    The cells are the session's selected items' (``-k`` leaves the others out of the passes too).
    """
    cells = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if all(n in params for n in CELL_PARAMS):
            cells.append(Cell(**{n: params[n] for n in CELL_PARAMS}))
    return suite_ctx.measure(cells)


def pytest_sessionfinish(session, exitstatus):
    if _CTX:
        if _CTX[0].interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED  # the runner reads 2 as "interrupted"
        _CTX[0].finish(exitstatus)
