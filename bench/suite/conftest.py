"""pytest configuration of the benchmark suite (``bench/``), separate from the unit tests.

The unit tests run with ``testpaths = ["tests"]`` and never collect this
folder.  Here the matrix comes from ``SOCKBENCH_PLAN`` (written by
``sockbench run``) or, run by hand, the default matrix over every available
server; see ``sockbench.bench.suite.session``.
"""

import signal

import pytest

from sockbench.bench.suite.session import SuiteContext

__all__ = ["pytest_configure", "pytest_generate_tests", "pytest_sessionfinish", "suite_ctx"]

_CTX = []


def _context():
    if not _CTX:
        _CTX.append(SuiteContext.from_env())
    return _CTX[0]


def _terminated(signum, frame):
    raise KeyboardInterrupt


def pytest_configure(config):
    # `sockbench run` sends SIGTERM when a Ctrl-C'd suite overruns its grace: unwind as for Ctrl-C, so
    # the round in flight stops its server and load processes by pid instead of leaving them behind
    signal.signal(signal.SIGTERM, _terminated)


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        cells = _context().cells
        metafunc.parametrize("cell", cells, ids=[c.id for c in cells])


@pytest.fixture(scope="session")
def suite_ctx():
    return _context()


def pytest_sessionfinish(session, exitstatus):
    if _CTX:
        _CTX[0].finish(exitstatus)
