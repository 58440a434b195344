"""Shared fixtures, the markers by kind, and a guard against servers left running.

``server_name`` is parametrized over ``sockbench.servers.registry.SERVERS``, so a server
added to the registry gets every conformance check with no change here; the
stream checks run over each stream transport a server serves
(``stream_server``: one process per server and transport per module,
``framed_server``: per server, protocol and transport), so a transport added to
a server's registry line is checked the same way; a check that does not apply
to every transport takes ``stream_cases_with``, which leaves the combinations
out when the tests are made instead of skipping them at run time.  A
server that is not available on this machine (say, an install that skipped the
Cython build) is skipped with the registry's reason, unless
``SOCKBENCH_REQUIRE_ALL=1`` (set by CI), where that is a failure.

Every test is marked by the folder it lives in (``unit``, ``conformance``,
``e2e``), so ``-m unit`` or ``-m "not e2e"`` select by kind without a decorator
per test.  Tests that take seconds carry ``slow`` themselves, and ``root``
where they need root: plain ``python -m pytest`` leaves ``slow`` out (the
project's ``addopts``), ``python -m pytest -m slow`` runs it, and .ci/run runs both.

The run is spread over pytest-xdist workers, a test file per worker at a
time (``--dist loadfile``: a file's module-scoped servers start once).  A test
marked ``alone`` (every e2e test: they pin CPUs, run real load and judge it
by the machine's foreign load) runs with no other test of the session beside
it: ``_Turns`` is a readers-writer lock over two files that every worker
takes around each test, exclusively for ``alone`` ones.

Hypothesis runs with the profile ``SOCKBENCH_HYPOTHESIS`` names: ``dev`` (the
default: a tenth of each test's examples) or ``ci`` (the counts the tests
ask for; .ci/run sets it).  A test asks for its count with ``examples(n)``.

Every process the tests start inherits ``SOCKBENCH_TEST_SESSION=<pytest's pid>``.
When the last test of a module has been torn down, a ``sockbench serve`` process
that carries this session's mark and was not there before the module began is
a leak: it is killed by its pid and the module's last test errors, naming it.
"""

import fcntl
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager

import pytest
from hypothesis import settings

from sockbench import procfs
from sockbench.endpoints import STREAM_TRANSPORTS
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.tls import client_context, ensure_certificate

#: the folders under tests/ and the marker each gives its tests
KINDS = {
    "unit": "one part at a time, mostly in process (tests/unit)",
    "conformance": "every registered server against the serve and echo contracts (tests/conformance)",
    "e2e": "the load harness, the CLI and the tools end to end, with real servers and load (tests/e2e)",
}
MARKS = {
    "slow": "takes seconds: left out of the default run (addopts), run by -m slow and by .ci/run",
    "root": "needs root (network namespaces); skips, saying why, without it",
    "alone": "runs with no other test of the session beside it (pins CPUs, runs real load, measures time)",
}

#: the hypothesis profiles: ``ci`` keeps each test's count, ``dev`` runs a tenth of it (``examples``)
HYPOTHESIS_PROFILES = {"ci": 1.0, "dev": 0.1}
HYPOTHESIS_ENV = "SOCKBENCH_HYPOTHESIS"
settings.register_profile("ci", deadline=None)
settings.register_profile("dev", deadline=None)
_profile = os.environ.get(HYPOTHESIS_ENV, "dev")
if _profile not in HYPOTHESIS_PROFILES:
    raise pytest.UsageError(f"{HYPOTHESIS_ENV}={_profile}: use one of {', '.join(HYPOTHESIS_PROFILES)}")
settings.load_profile(_profile)


def examples(n):
    """The number of hypothesis examples for a test that asks for ``n`` under CI's profile (at least 10)."""
    return max(10, round(n * HYPOTHESIS_PROFILES[_profile]))


# A run started in the background of a non-interactive shell (``cmd &``, as a CI script may) inherits SIGINT
# ignored, and so would every process the tests start: the tests of Ctrl-C need it delivered, as a terminal does.
# A Python handler here is reset to the default in each child at exec (an ignored signal would stay ignored).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SESSION_ENV = "SOCKBENCH_TEST_SESSION"
os.environ[SESSION_ENV] = str(os.getpid())  # inherited by every process a test starts, grandchildren too

#: how long a server that was just signalled may take to go (the serve contract: 2 s)
LEAK_GRACE_S = 2.5

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_BEFORE_MODULE = pytest.StashKey()


def pytest_configure(config):
    for name, what in {**KINDS, **MARKS}.items():
        config.addinivalue_line("markers", f"{name}: {what}")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _TURNS in workerinput:  # an xdist worker: take turns with the others
        config.stash[_TURNS_KEY] = _Turns(workerinput[_TURNS])
    elif workerinput is None and getattr(config.option, "numprocesses", None):  # the controller of xdist workers
        config.stash[_TURNS_DIR_KEY] = tempfile.mkdtemp(prefix="sockbench-test-turns-")


def pytest_unconfigure(config):
    folder = config.stash.get(_TURNS_DIR_KEY, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist: every worker gets the folder of the session's turn files."""
    folder = node.config.stash.get(_TURNS_DIR_KEY, None)
    if folder:
        node.workerinput[_TURNS] = folder


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = os.path.relpath(str(item.path), _TESTS_DIR).split(os.sep)
        if len(rel) > 1 and rel[0] in KINDS:
            item.add_marker(rel[0])
            if rel[0] == "e2e":
                item.add_marker("alone")


# --- tests that run alone, while the others run side by side ----------------------------------------

_TURNS = "sockbench_turns"
_TURNS_KEY = pytest.StashKey()
_TURNS_DIR_KEY = pytest.StashKey()


class _Turns:
    """A readers-writer lock between the xdist workers of one session: ``flock`` on two files in ``folder``.

    Every test holds ``run`` shared, an ``alone`` test exclusively.  A test
    first passes through ``door`` (exclusive, held only for that): an
    ``alone`` test keeps the door while it waits for the running tests to
    end, so the tests queued behind it cannot keep it waiting for ever.
    The locks go with the worker's process, also if it dies.
    """

    def __init__(self, folder):
        self.door = os.open(os.path.join(folder, "door"), os.O_RDWR | os.O_CREAT, 0o600)
        self.run = os.open(os.path.join(folder, "run"), os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def hold(self, alone):
        fcntl.flock(self.door, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.door, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.run, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    turns = item.config.stash.get(_TURNS_KEY, None)
    if turns is None:
        return (yield)
    with turns.hold(alone=item.get_closest_marker("alone") is not None):
        return (yield)


# --- no server outlives the module that started it ---------------------------------------------


def marked_processes(mark):
    """``{pid: (argv, state)}`` of the processes whose environment carries ``mark`` (``NAME=value``), this one aside
    (``procfs.marked_processes``): a mark is inherited by grandchildren too, so it finds what a process group
    or a pid list would miss."""
    return procfs.marked_processes(mark)


def command_line(argv):
    """A process's ``argv`` (bytes) as one line of text."""
    return b" ".join(argv).decode(errors="replace").strip()


def kill_left(find, grace_s):
    """What ``find()`` (``{pid: command line}``) still returns after up to ``grace_s`` (a process just stopped may
    still be exiting); each is then killed by its pid (SIGKILL), so a failing test leaves nothing running."""
    deadline = time.monotonic() + grace_s
    while True:
        left = find()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _session_servers():
    """``{pid: command line}`` of the live ``sockbench serve`` processes started by this session."""
    marked = marked_processes(f"{SESSION_ENV}={os.getpid()}")
    return {pid: command_line(argv) for pid, (argv, _) in marked.items() if b"serve" in argv}


def _kill_leftovers(before):
    """Wait ``LEAK_GRACE_S`` for new servers to go, then SIGKILL what is left by pid; return what was left."""
    return kill_left(lambda: {pid: cmd for pid, cmd in _session_servers().items() if pid not in before}, LEAK_GRACE_S)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    path, _ = item.session.stash.get(_BEFORE_MODULE, (None, None))
    if path != item.path:  # the module's first test, before any of its fixtures
        item.session.stash[_BEFORE_MODULE] = (item.path, set(_session_servers()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if nextitem is None or nextitem.path != item.path:  # the module's fixtures are torn down by now
        _, before = item.session.stash.get(_BEFORE_MODULE, (None, set()))
        left = _kill_leftovers(before)
        if left:
            lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(left.items()))
            pytest.fail(f"{item.path.name} left servers running (killed now):\n{lines}", pytrace=False)
    return result


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_run_root(monkeypatch):
    """Each test starts with no run root (``procfs.RUN_ROOT_ENV``): one that calls the command line's ``main``
    in process marks the test process the root, and the harness driven by the next would count pytest's own
    ancestors as foreign."""
    monkeypatch.delenv(procfs.RUN_ROOT_ENV, raising=False)


def _require_all():
    return os.environ.get("SOCKBENCH_REQUIRE_ALL", "") not in ("", "0")


def _require_available(name):
    ok, why = registry.SERVERS[name].availability()
    if not ok:
        if _require_all():
            pytest.fail(f"{name}: {why}")
        pytest.skip(f"{name}: {why}")


def _running(proc):
    """Start ``proc`` and yield it; it is stopped by pid when the fixture ends, whatever the test did."""
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=registry.names())
def server_name(request):
    name = request.param
    _require_available(name)
    return name


@pytest.fixture
def server(server_name):
    """A fresh server process for one test; always stopped by pid afterwards."""
    yield from _running(ServerProcess(server_name))


def _stream_cases():
    """``(name, transport, tls)`` for every server and stream transport, plain, and over TLS where it serves TLS."""
    plain = [(name, t, False) for name, spec in registry.SERVERS.items() for t in spec.transports
             if t in STREAM_TRANSPORTS]
    return plain + [(name, t, True) for name, t, _ in plain if registry.SERVERS[name].serves_tls]


def _stream_id(case):
    return f"{case[0]}-{case[1]}" + ("-tls" if case[2] else "")


def _require_tls(name):
    ok, why = registry.SERVERS[name].tls_availability()
    if not ok:
        if _require_all():
            pytest.fail(f"{name}: {why}")
        pytest.skip(f"{name}: {why}")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """The session's self-signed certificate and key (``servers.tls.ensure_certificate``), made once."""
    return ensure_certificate(str(tmp_path_factory.mktemp("tls")))


def tls_server(name, transport, tls_files, extra_args=(), **kwargs):
    """A ``ServerProcess`` serving TLS with the session's certificate; ``proc.tls`` is a client context for it."""
    cert, key = tls_files
    proc = ServerProcess(name, transport, extra_args=("--tls", "--cert", cert, "--key", key, *extra_args), **kwargs)
    proc.tls = client_context()
    return proc


def _stream_process(request, case):
    name, transport, tls = case
    _require_available(name)
    if not tls:
        return ServerProcess(name, transport)
    _require_tls(name)
    return tls_server(name, transport, request.getfixturevalue("tls_files"))


#: the stream fixtures and their scopes, for the fixtures and for ``stream_cases_with``
STREAM_FIXTURE_SCOPES = {"stream_server": "module", "fresh_stream_server": "function"}


def stream_cases_with(fixture, argname, values, keep, value_id=str):
    """A parametrize mark: ``fixture`` over every stream case jointly with ``argname`` over ``values``,
    less the pairs for which ``keep(transport, value)`` is false.

    A combination that cannot apply is left out where the parameters are
    made, not skipped at run time, so ``-rs`` lists only what this run could
    not do.  A test's own parametrize of a fixture takes the place of the
    fixture's params (pytest's rule); the mark keeps the fixture's scope and
    ids, so its tests share ``stream_server`` processes with the module's
    other tests (pytest's ordering by both parameters costs a few more starts
    than one per case).
    """
    params = [
        pytest.param(case, value, id=f"{_stream_id(case)}-{value_id(value)}")
        for case in _stream_cases()
        for value in values
        if keep(case[1], value)
    ]
    return pytest.mark.parametrize((fixture, argname), params, indirect=[fixture], scope=STREAM_FIXTURE_SCOPES[fixture])


@pytest.fixture(scope=STREAM_FIXTURE_SCOPES["stream_server"], params=_stream_cases(), ids=_stream_id)
def stream_server(request):
    """A server over one stream transport (every server x tcp, tcp6, unix, plain and over TLS), shared by a module's tests.

    One process per (server, transport) and module keeps the suite's time
    near what one transport cost; a test that needs a process of its own
    (a stop signal, a descriptor limit) starts one with ``fresh_stream_server``.
    """
    yield from _running(_stream_process(request, request.param))


@pytest.fixture(scope=STREAM_FIXTURE_SCOPES["fresh_stream_server"], params=_stream_cases(), ids=_stream_id)
def fresh_stream_server(request):
    """A fresh server over one stream transport for one test; always stopped by pid afterwards."""
    yield from _running(_stream_process(request, request.param))


def _framed_cases():
    return [
        (name, proto) for name, spec in registry.SERVERS.items() for proto in spec.protocols if proto != "raw"
    ]


def _framed_transport_cases():
    return [(name, proto, t) for name, proto in _framed_cases() for t in registry.SERVERS[name].transports
            if t in STREAM_TRANSPORTS]


#: the limit the protocol tests run servers with, so "over the limit" is cheap to send
TEST_MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module", params=_framed_transport_cases(), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def framed_server(request):
    """A server speaking ``frame`` or ``json`` (every server x every protocol it speaks x every stream transport).

    Shared by a module's tests, one process per (server, protocol, transport):
    a malformed message must cost only its own connection, so what one test
    sends cannot spoil the next.
    """
    name, proto, transport = request.param
    _require_available(name)
    proc = ServerProcess(name, transport, extra_args=("--protocol", proto, "--max-message", str(TEST_MAX_MESSAGE)))
    proc.protocol = proto
    yield from _running(proc)
