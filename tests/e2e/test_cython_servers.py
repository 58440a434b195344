"""What is specific to the Cython servers (the conformance suite covers the echo contract).

* Without the built extensions, ``sockbench servers`` and ``sockbench serve``
  say ``not built`` with the build command, in one line, and every other
  server still works.  Simulated in a subprocess in which the extension
  modules are blocked the way Python documents (``sys.modules[name] = None``
  makes ``find_spec`` return None and an import fail), so no rebuild is needed.
* The ``cython`` server holds 10,000 idle connections in < 64 MiB RSS, and
  still stops within 2 s with all of them open.
* Out of descriptors (EMFILE), it stops watching the listener instead of
  spinning, and accepts again as soon as a connection closes.
* The C core: errors come back as ``OSError(errno, strerror)``; the loop
  really runs without the GIL; one loop per process; the stop-signal handlers
  are restored when it returns.
* The ``cython-protocol`` class: the shared read buffer, the copy that makes
  it safe to reuse, flow control and half-close, against a fake transport.
"""

import asyncio
import errno
import glob
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import _require_available
from echo_client import connect, echo_concurrently, read_exact
from sockbench.servers import registry
from sockbench.procfs import read_proc_stat, read_rss_bytes
from sockbench.servers.process import ServerProcess

MiB = 1 << 20
#: the servers compiled from ext/ (their registry line carries the build hint): cython, cython-protocol, cython-uring
CYTHON_SERVERS = tuple(n for n, spec in registry.BUILTIN.items() if spec.build_hint == registry.BUILD_HINT)


# --- without the built extension ------------------------------------------------------------

_NO_EXT_RUNNER = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # find_spec() -> None, import -> ModuleNotFoundError
from sockbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _ext_module_names():
    import sockbench.ext

    names = set()
    for d in sockbench.ext.__path__:
        for path in glob.glob(os.path.join(d, "*.pyx")):
            names.add("sockbench.ext." + os.path.splitext(os.path.basename(path))[0])
    assert "sockbench.ext.epoll_echo" in names and "sockbench.ext.protocol_echo" in names
    return sorted(names)


def _sockbench_without_ext(*args, timeout=30):
    return subprocess.run(
        [sys.executable, "-c", _NO_EXT_RUNNER, ",".join(_ext_module_names()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_servers_lists_cython_rows_as_not_built_with_the_build_command():
    r = _sockbench_without_ext("servers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()}
    for name in CYTHON_SERVERS:
        assert "not built" in rows[name], rows[name]
        assert f"{name}: not built (build it with: {registry.BUILD_HINT})" in lines, r.stdout
    for name in registry.SERVERS:
        if name not in CYTHON_SERVERS:
            assert "available" in rows[name] and "not built" not in rows[name], rows[name]


@pytest.mark.parametrize("name", CYTHON_SERVERS)
def test_serve_without_the_extension_is_one_line_exit_2(name):
    r = _sockbench_without_ext("serve", name)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"sockbench: server {name!r}: not built (build it with: {registry.BUILD_HINT})\n"


def test_other_servers_still_serve_without_the_extension():
    """`serve selectors` under the same blocked imports: ready line, echo, exit 0 on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _NO_EXT_RUNNER, ",".join(_ext_module_names()), "serve", "selectors"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import json

        ready = json.loads(proc.stdout.readline())
        with connect(("127.0.0.1", ready["port"])) as s:
            assert echo_concurrently(s, b"still works") == b"still works"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


# --- the cython server: 10,000 idle connections ---------------------------------------------

IDLE_CONNS = 10_000


def test_10000_idle_connections_cost_less_than_64_MiB_rss():
    _require_available("cython")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNS + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; {need} descriptors are needed for {IDLE_CONNS} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need) if hard == resource.RLIM_INFINITY else hard, hard))
    socks = []
    try:
        with ServerProcess("cython") as server:
            pid = server.pid
            base_rss = read_rss_bytes(pid)
            base_fds = len(os.listdir(f"/proc/{pid}/fd"))
            for _ in range(IDLE_CONNS):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.settimeout(10)
                s.connect(server.address)
            # the server has accepted them all when it holds that many descriptors
            deadline = time.monotonic() + 20
            while len(os.listdir(f"/proc/{pid}/fd")) < base_fds + IDLE_CONNS:
                assert time.monotonic() < deadline, "the server did not accept 10,000 connections in 20 s"
                time.sleep(0.05)
            for s in (socks[0], socks[len(socks) // 2], socks[-1]):
                s.sendall(b"idle? no")
                assert read_exact(s, 8) == b"idle? no"
            rss = read_rss_bytes(pid)
            assert rss < 64 * MiB, (
                f"{IDLE_CONNS} idle connections: RSS {rss / MiB:.1f} MiB (it was {base_rss / MiB:.1f} MiB with none)"
            )
            # and it still stops on time with all of them open
            t0 = time.monotonic()
            rc = server.stop()
            took = time.monotonic() - t0
        assert rc == 0
        assert took < 2.0, f"stopping with {IDLE_CONNS} connections took {took:.2f} s"
    finally:
        for s in socks:
            # an abortive close (RST): no 10,000 sockets left in TIME_WAIT for the next tests
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            s.close()


# --- the cython server: out of descriptors --------------------------------------------------


def test_emfile_pauses_accepting_without_spinning_then_resumes():
    _require_available("cython")
    with ServerProcess("cython") as server:
        pid = server.pid
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        room = 10
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + room, in_use + room))
        clients = [connect(server.address, timeout=5) for _ in range(room + 5)]
        try:
            # the first ones are served ...
            for s in clients[:3]:
                assert echo_concurrently(s, b"first") == b"first"
            last = clients[-1]
            last.sendall(b"later")  # queued in the kernel: the server cannot accept it yet
            time.sleep(0.3)
            # ... the rest wait in the backlog, and the server does not spin meanwhile
            u0, s0 = read_proc_stat(pid)
            time.sleep(0.5)
            u1, s1 = read_proc_stat(pid)
            assert (u1 - u0) + (s1 - s0) < 0.15, f"server used {(u1 - u0) + (s1 - s0):.2f} s CPU in 0.5 s while out of fds"
            assert server.alive()
            # closing connections frees descriptors: the server accepts again and echoes
            for s in clients[: room]:
                s.close()
            last.settimeout(10)
            assert read_exact(last, 5) == b"later"
            assert echo_concurrently(last, b"and more") == b"and more"
        finally:
            for s in clients:
                s.close()
        assert server.stop() == 0, server.stop_evidence


# --- the C core, in process -----------------------------------------------------------------


def test_core_errors_are_oserror_with_errno_and_strerror():
    _require_available("cython")
    from sockbench.ext import epoll_echo

    r, w = os.pipe()
    os.close(r)
    os.close(w)  # ``r`` is now a closed descriptor
    with pytest.raises(OSError) as info:
        epoll_echo.serve(r)
    assert info.value.errno == errno.EBADF
    assert info.value.strerror == os.strerror(errno.EBADF)


def test_core_rejects_bad_arguments_before_touching_anything():
    _require_available("cython")
    from sockbench.ext import epoll_echo

    with socket.create_server(("127.0.0.1", 0)) as listener:
        with pytest.raises(ValueError, match="recv_size"):
            epoll_echo.serve(listener.fileno(), recv_size=0)
        import fcntl

        flags = fcntl.fcntl(listener.fileno(), fcntl.F_GETFL)
        assert not flags & os.O_NONBLOCK, "a rejected call leaves the listener as it was"


def test_raise_nofile_limit_sets_soft_to_hard():
    _require_available("cython")
    from sockbench.ext import epoll_echo

    soft, hard = epoll_echo.raise_nofile_limit()
    assert soft == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_loop_runs_without_the_gil_and_restores_signal_handlers():
    """Serve in a thread: this thread keeps running Python (so the GIL is free), then SIGTERM stops the loop."""
    _require_available("cython")
    from sockbench.ext import epoll_echo

    caught = []
    old = signal.signal(signal.SIGTERM, lambda signo, frame: caught.append(signo))
    listener = socket.create_server(("127.0.0.1", 0))
    ready = threading.Event()
    outcome = []

    def run():
        try:
            epoll_echo.serve(listener.fileno(), ready.set)
            outcome.append("returned")
        except BaseException as e:  # pragma: no cover - reported below
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(10), "serve() did not announce"
        with pytest.raises(RuntimeError, match="already running"):
            epoll_echo.serve(listener.fileno())
        # Python work in this thread while the loop serves: impossible if it held the GIL
        with connect(listener.getsockname(), timeout=10) as s:
            for i in range(200):
                msg = b"%d" % i * 50
                s.sendall(msg)
                assert read_exact(s, len(msg)) == msg
            data = os.urandom(3 * MiB)
            assert echo_concurrently(s, data) == data
        assert t.is_alive()
        os.kill(os.getpid(), signal.SIGTERM)  # goes to the C handler while the loop runs
        t.join(5)
        assert not t.is_alive(), "SIGTERM did not stop the loop"
        assert outcome == ["returned"]
        assert caught == [], "the C handler, not Python's, gets the stop signal while serving"
        # afterwards the previous (Python) handler is back in place
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not caught and time.monotonic() < deadline:
            time.sleep(0.01)
        assert caught == [signal.SIGTERM]
    finally:
        if t.is_alive():  # pragma: no cover - a failure above: stop the loop before restoring SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            t.join(5)
        signal.signal(signal.SIGTERM, old)
        listener.close()


# --- the cython-protocol class, against a fake transport ------------------------------------


class _FakeTransport:
    def __init__(self):
        self.written = []
        self.calls = []

    def write(self, data):
        self.written.append(data)  # keeps a reference, as uvloop does with an unsent tail

    def set_write_buffer_limits(self, high=None, low=None):
        self.calls.append(("limits", high))

    def pause_reading(self):
        self.calls.append("pause_reading")

    def resume_reading(self):
        self.calls.append("resume_reading")

    def abort(self):
        self.calls.append("abort")


def test_read_buffer_exports_a_writable_block():
    _require_available("cython-protocol")
    from sockbench.ext.protocol_echo import ReadBuffer

    buf = ReadBuffer(4096)
    view = memoryview(buf)
    assert (len(buf), view.nbytes, view.readonly, view.format, view.ndim) == (4096, 4096, False, "B", 1)
    view[:3] = b"abc"
    assert bytes(memoryview(buf)[:3]) == b"abc"
    view.release()
    with pytest.raises(ValueError):
        ReadBuffer(0)


def test_protocol_copies_out_of_the_shared_buffer_and_controls_flow():
    _require_available("cython-protocol")
    from sockbench.ext.protocol_echo import HIGH_WATER, EchoBufferedProtocol, EchoServer

    server = EchoServer(1024)
    a, b = server(), server()
    assert isinstance(a, asyncio.BufferedProtocol)
    ta, tb = _FakeTransport(), _FakeTransport()
    a.connection_made(ta)
    b.connection_made(tb)
    assert ("limits", HIGH_WATER) in ta.calls
    assert server.conns == {ta, tb}

    # both connections read into the one shared buffer ...
    buf_a = a.get_buffer(-1)
    assert b.get_buffer(65536) is buf_a
    with memoryview(buf_a) as v:
        v[:5] = b"hello"
    a.buffer_updated(5)
    with memoryview(b.get_buffer(-1)) as v:
        v[:5] = b"XXXXX"  # the next read overwrites the buffer ...
    b.buffer_updated(3)
    # ... and what the first transport was given is unchanged: it was copied
    assert ta.written == [b"hello"]
    assert tb.written == [b"XXX"]
    assert all(type(x) is bytes for x in ta.written + tb.written)

    a.pause_writing()
    a.resume_writing()
    assert ta.calls[-2:] == ["pause_reading", "resume_reading"]
    assert a.eof_received() is False, "half-close: the transport flushes, then closes"

    server.abort_all()
    assert "abort" in ta.calls and "abort" in tb.calls
    a.connection_lost(None)
    assert server.conns == {tb}
    assert isinstance(b, EchoBufferedProtocol)
