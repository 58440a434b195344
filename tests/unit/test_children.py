"""Children that die with their parent, stop signals that unwind every command, and what a killed server leaves.

The processes here are tiny Python or ``sleep`` children started and stopped
within the test; nothing is measured.  A child whose parent was killed is
reparented (to init, or a subreaper), so its end is seen in ``/proc``: gone,
or a zombie no one has reaped yet.
"""

import importlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sockbench.children import Stopped, child_setup, stop_signals
from sockbench.errors import UsageError
from sockbench.servers.contract import PRIVATE_PREFIX, PRIVATE_SOCKET, STALE_AFTER_S, sweep_stale_folders
from sockbench.units import parse_scheduler

#: the module (``sockbench.cli`` exports its function ``main`` under the same name)
cli_main = importlib.import_module("sockbench.cli.main")

#: how long a child may take to go once its parent is dead
GONE_WITHIN_S = 2.0


def _gone(pid, within_s=GONE_WITHIN_S):
    """True once ``pid`` has ended (gone, or a zombie) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


#: a parent that starts ``sleep 60`` with child_setup (the death signal given), prints its pid, and waits
_PARENT = textwrap.dedent("""
    import signal, subprocess, sys, time
    from sockbench.children import child_setup
    p = subprocess.Popen(["sleep", "60"], preexec_fn=child_setup(death_signal=signal.Signals[sys.argv[1]]))
    print(p.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("death_signal", ["SIGTERM", "SIGKILL"])
def test_a_child_dies_with_its_parent_even_a_sigkilled_one(death_signal):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, death_signal], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child, 0.1), "the child runs while its parent does"
        parent.kill()
        parent.wait()
        assert _gone(child), f"the child outlived its SIGKILLed parent by {GONE_WITHIN_S} s"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child:
            _kill(child)


def test_a_parent_that_died_before_the_child_asked_is_caught():
    # pid 1 is never this child's parent: as if the parent had died between the fork and the call
    code = "import time; from sockbench.children import die_with_parent; die_with_parent(1); time.sleep(10)"
    r = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert r.returncode == -signal.SIGTERM


def test_a_child_stops_on_sigint_even_when_its_parent_ignores_it():
    # a shell's background job ignores SIGINT, and its children would inherit that: sockbench's do not
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        r = subprocess.run([sys.executable, "-c", code], preexec_fn=child_setup(), capture_output=True, text=True,
                           timeout=30)
    finally:
        signal.signal(signal.SIGINT, old)
    assert r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_unwind_as_stopped_naming_the_signal(sig):
    before = signal.getsignal(sig)
    with pytest.raises(Stopped) as e:
        with stop_signals():
            signal.pthread_kill(threading.get_ident(), sig)
            time.sleep(5)  # the handler interrupts it
    assert e.value.signum == sig and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(sig) == before, "the handler of before is back"


def test_stop_signals_leave_an_ignored_signal_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGINT, old)


def test_every_command_stops_on_sigterm_with_exit_143(monkeypatch, capsys):
    """A command added to the parser gets SIGTERM as Ctrl-C with nothing of its own: exit 128 + the signal."""
    real = cli_main.build_parser

    def with_a_new_command():
        p = real()
        sub = next(a for a in p._actions if a.dest == "command")
        s = sub.add_parser("newcmd")
        s.set_defaults(func=lambda args: (signal.pthread_kill(threading.get_ident(), signal.SIGTERM), time.sleep(5)))
        return p

    monkeypatch.setattr(cli_main, "build_parser", with_a_new_command)
    assert cli_main.main(["newcmd"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines() == ["sockbench: interrupted (SIGTERM)"]


# --- what a killed server leaves on disk ---------------------------------------------------------


def _private(tmp, name, listening, age_s):
    """A private socket folder as ``listen`` makes it, its socket bound (and listening or not), ``age_s`` old."""
    folder = os.path.join(tmp, PRIVATE_PREFIX + name)
    os.mkdir(folder, 0o700)
    path = os.path.join(folder, PRIVATE_SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    if listening:
        s.listen(1)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return folder, s


def test_the_next_server_removes_the_folders_killed_servers_left(tmp_path):
    tmp = str(tmp_path)
    old = STALE_AFTER_S + 60
    stale, s1 = _private(tmp, "stale", listening=False, age_s=old)  # its server was killed: nobody listens
    live, s2 = _private(tmp, "live", listening=True, age_s=old)  # a server that runs
    young, s3 = _private(tmp, "young", listening=False, age_s=0)  # bound a moment ago, not listening yet
    other = os.path.join(tmp, PRIVATE_PREFIX + "other")
    os.mkdir(other)
    open(os.path.join(other, "notes.txt"), "w").close()  # not a socket folder's content
    unrelated = os.path.join(tmp, "elsewhere")
    os.mkdir(unrelated)
    try:
        assert sweep_stale_folders(tmp) == [stale]
        assert sorted(os.listdir(tmp)) == sorted(os.path.basename(f) for f in (live, young, other, unrelated))
    finally:
        for s in (s1, s2, s3):
            s.close()


# --- a Dask scheduler's address, checked before anything starts ---------------------------------


@pytest.mark.parametrize("text,address", [
    ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    ("tcp://sched.example", "tcp://sched.example:8786"),
    ("TCP://[::1]:1", "tcp://[::1]:1"),
])
def test_a_scheduler_address_is_tcp_host_port(text, address):
    assert parse_scheduler(text) == address


@pytest.mark.parametrize("text,says", [
    ("udp://127.0.0.1:8786", "over tcp only"),
    ("tls://127.0.0.1:8786", "over tcp only"),
    ("tcp://127.0.0.1:70000", "from 1 to 65535"),
    ("tcp://127.0.0.1:0", "from 1 to 65535"),
    ("tcp://127.0.0.1:x", "from 1 to 65535"),
    ("127.0.0.1:8786", "use tcp://HOST:PORT"),
    ("tcp://:8786", "use tcp://HOST:PORT"),
])
def test_a_bad_scheduler_address_is_one_usage_line(text, says):
    with pytest.raises(UsageError, match="--scheduler") as e:
        parse_scheduler(text)
    assert says in str(e.value) and "\n" not in str(e.value)
