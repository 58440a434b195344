"""Servers nobody here wrote, plugins and other interpreters, end to end through the command line.

``socat`` and ``ncat`` (installed by ``.ci/run``; skipped, saying so, where
they are missing) and a small C echo server built here, each started with
``--command``: ``sockbench check`` reports what each really does, and ``run``
measures them beside a built-in server in one report.  The example plugin
(``examples/plugin``) is installed into a folder of its own and put on
``PYTHONPATH``, so this session's environment is left as it was.  Bad input
(a command that exits at once, prints nothing or garbage, ignores SIGTERM; a
target that refuses; an interpreter that is not one) is one line, exit 2, and
leaves no process behind.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import SESSION_ENV, marked_processes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOCAT = "socat TCP-LISTEN:{port},fork,reuseaddr EXEC:cat"
NCAT = "ncat --keep-open --listen 127.0.0.1 {port} --exec /bin/cat"

pytestmark = pytest.mark.slow


def sockbench(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "sockbench", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def one_line(r):
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


def left_running(words):
    """This session's processes whose command line holds ``words``."""
    mark = f"{SESSION_ENV}={os.getpid()}"
    return {pid: b" ".join(argv) for pid, (argv, state) in marked_processes(mark).items()
            if state != b"Z" and all(w.encode() in b" ".join(argv) for w in words)}


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it with apt-get)")


@pytest.fixture(scope="module")
def c_echo(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("c_echo") / "c_echo"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), os.path.join(ROOT, "tests", "data", "c_echo.c")], check=True)
    return str(out)


def check_json(*args):
    r = sockbench("check", *args, "--json", "-")
    doc = json.loads(r.stdout)
    return r, {c["name"]: c for run in doc["runs"] for c in run["checks"]}


# --- check: each server's true behaviour -------------------------------------------------------


def test_a_c_echo_server_passes_every_check(c_echo, tmp_path):
    junit = tmp_path / "check.xml"
    r, checks = check_json("--command", f"{c_echo} {{port}}", "--junit", str(junit))
    assert r.returncode == 0, r.stderr
    failed = {n: c["detail"] for n, c in checks.items() if c["status"] == "fail"}
    assert not failed
    assert checks["slow-reader"]["status"] == "pass" and "RSS" in checks["slow-reader"]["detail"]
    assert checks["stop"]["status"] == "pass" and "exit 0" in checks["stop"]["detail"]
    assert checks["udp-loss"]["status"] == "n/a"
    assert "<testsuite" in junit.read_text() and 'failures="0"' in junit.read_text()
    assert not left_running([c_echo])


@pytest.mark.parametrize("tool, command", [("socat", SOCAT), ("ncat", NCAT)])
def test_socat_and_ncat_are_checked_as_they_are(tool, command):
    need(tool)
    r, checks = check_json("--command", command, "--ready-port", "--only", "echo", "pipelining", "nodelay", "stop")
    # neither sets TCP_NODELAY on what it accepts: the check says so, and the exit status is 1
    assert r.returncode == 1, r.stderr
    assert checks["nodelay"]["status"] == "fail" and "TCP_NODELAY is off" in checks["nodelay"]["detail"]
    assert set(checks) >= {"echo", "pipelining", "nodelay", "stop"}
    assert all(c["status"] in ("pass", "fail") for c in checks.values() if c["name"] != "udp-loss")
    if tool == "socat":  # ncat --exec loses data under load, so its other verdicts vary from run to run
        assert checks["echo"]["status"] == checks["pipelining"]["status"] == "pass"
        assert checks["stop"]["status"] == "pass" and "SIGTERM" in checks["stop"]["detail"]  # the whole group ends
    assert not left_running([tool])


def test_a_running_target_gets_no_pid_checks(c_echo):
    proc = subprocess.Popen([c_echo, "0"], stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        r, checks = check_json(f"127.0.0.1:{port}", "--only", "echo", "half-close", "nodelay", "stop")
    finally:
        proc.terminate()
        proc.wait(5)
    assert r.returncode == 0, r.stderr
    assert checks["echo"]["status"] == checks["half-close"]["status"] == "pass"
    for name in ("nodelay", "stop"):
        assert checks[name]["status"] == "n/a" and "sockbench did not start it" in checks[name]["detail"]


# --- bad input: one line, exit 2, nothing left ------------------------------------------------

_IGNORES_TERM = ("import signal, socket, sys, time\n"
                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
                 "print('{\"event\": \"ready\", \"port\": %d}' % s.getsockname()[1], flush=True)\n"
                 "time.sleep(60)\n")


@pytest.mark.parametrize("case", ["exits", "silent", "garbage"])
def test_a_command_that_does_not_start_is_one_line_exit_2(case, tmp_path):
    command = {"exits": "false {port}",
               "silent": f"{sys.executable} -c 'import time; time.sleep(60)' {{port}}",
               "garbage": f"{sys.executable} -c 'import time; print(\"hello\", flush=True); time.sleep(60)' {{port}}"}[case]
    for sub in (("check",), ("load", "--duration", "0.2"), ("serve",)):
        r = sockbench(*sub, "--command", command, "--ready-timeout", "1")
        line = one_line(r)
        assert r.returncode == 2, (sub, r.stderr)
        assert {"exits": "exited before it was ready: exit status 1", "silent": "printed no ready line within 1 s",
                "garbage": "printed a malformed ready line: b'hello'"}[case] in line, line
        assert not left_running(["time.sleep(60)"]), sub


def test_a_command_that_ignores_sigterm_is_killed_and_said_so(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(_IGNORES_TERM)
    serve = subprocess.Popen([sys.executable, "-m", "sockbench", "serve", "--command", f"{sys.executable} {script} {{port}}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(serve.stdout.readline())
        assert ready["event"] == "ready" and ready["pid"] != serve.pid
        t0 = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(10)
        took = time.monotonic() - t0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    err = serve.stderr.read()
    assert rc == 2 and err.count("\n") == 1, err
    assert "ignored SIGTERM: killed with SIGKILL after 2 s" in err
    assert 2.0 <= took < 5.0
    assert not left_running([str(script)])


def test_a_target_that_refuses_is_one_line_exit_2():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        r = sockbench("check", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "connection refused" in one_line(r)


@pytest.mark.parametrize("python, says", [("/bin/true", "is not a Python interpreter"),
                                          ("no-such-python3", "not found"),
                                          ("old", "sockbench's servers need 3.11 or newer")])
def test_a_bad_python_is_one_line_naming_it(python, says):
    if python == "old":
        import glob

        older = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0]*/bin/python3.10")))
        python = older[0] if older else None
        if python is None:
            pytest.skip("no Python older than 3.11 here")
    r = sockbench("load", "cython", "--python", python, "--duration", "0.2")
    line = one_line(r)
    assert r.returncode == 2 and f"--python {python}" in line and says in line, line


# --- run: foreign servers and a plugin beside a built-in one ---------------------------------------


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugin")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(target), os.path.join(ROOT, "examples", "plugin")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"installing the example plugin failed: {r.stderr[-500:]}")
    return str(target)


def _env_with(path):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))


def test_the_example_plugin_is_listed_checked_and_served(plugin_path):
    env = _env_with(plugin_path)
    r = sockbench("servers", "--json", env=env)
    rows = {s["name"]: s for s in json.loads(r.stdout)}
    assert rows["example-threads"]["plugin"] == "sockbench-example-plugin" and rows["example-threads"]["available"]
    r = sockbench("check", "example-threads", "--transport", "tcp", "--json", "-", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] and doc["runs"][0]["failed"] == 0


def test_run_puts_commands_and_a_plugin_beside_a_builtin_server_in_one_report(plugin_path, c_echo, tmp_path):
    need("socat")
    out = tmp_path / "run"
    r = sockbench("run", "--quick", "--open-loads", "none", "--servers", "cython", "example-threads",
                  "--command", f"{c_echo} {{port}}", "--command", SOCAT, "--name", "c-echo", "--name", "socat",
                  "--ready-port", "--out", str(out), env=_env_with(plugin_path), timeout=600)
    assert r.returncode != 2, r.stderr
    # --ready-port applies to every --command; c_echo prints a ready line, and accepting is what --ready-port waits for
    md = (out / "report.md").read_text()
    for name in ("cython", "example-threads", "c-echo", "socat"):
        assert f"| {name} " in md, name
    raw = [json.loads(p.read_text()) for p in (out / "raw").glob("socat__*.json")]
    assert raw and all(d["target"]["command"] == SOCAT and d["server_proc"]["processes"] >= 2 for d in raw)
    assert all(d["server_proc"]["user_s"] is not None for d in raw), "a --command's CPU is measured"
    assert not left_running(["socat"]) and not left_running([c_echo])


def test_a_run_under_another_interpreter_records_its_version():
    from sockbench.errors import SockbenchError
    from sockbench.servers.environments import inspect

    try:
        inspect("python3.12")  # on PATH, or installed by pyenv
    except SockbenchError as e:
        pytest.skip(str(e))
    r = sockbench("load", "asyncio-protocol", "--python", "python3.12", "--duration", "0.3", "--warmup", "0.1",
                  "--json", "-", timeout=900)
    assert r.returncode in (0, 1), r.stderr
    d = json.loads(r.stdout)
    assert d["server_proc"]["python"].startswith("CPython 3.12") and d["workload"]["python"] == "3.12"
