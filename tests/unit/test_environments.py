"""``servers.environments``: this process's own environment, the cache by commit and interpreter, bad revisions.

The builds themselves (a venv, pip compiling the extensions) are in ``tests/e2e/test_environment_builds.py``; here
``Environment._build`` is a stand-in, so the cache's rules are checked in milliseconds.
"""

import os
import subprocess
import sys

import pytest

from sockbench.errors import SockbenchError, UsageError
from sockbench.servers import environments
from sockbench.servers.environments import Environment, current, environment


def test_no_revision_and_no_interpreter_is_this_process():
    env = environment()
    assert env.own and env.python == sys.executable and current().own
    assert env.serve_argv("uvloop", "--port", "0") == [sys.executable, "-m", "sockbench", "serve", "uvloop", "--port",
                                                       "0"]
    assert env.server("uvloop")["protocols"] == ["raw", "frame", "json"]
    with pytest.raises(UsageError, match="unknown server 'nosuch'; valid names: blocking"):
        env.server("nosuch")


def test_a_revision_is_built_once_per_commit_and_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKBENCH_CACHE", str(tmp_path))
    builds = []

    def fake_build(self, path, py):
        builds.append(os.path.basename(path))
        os.makedirs(os.path.dirname(py))
        open(py, "w").close()

    listed = {"uvloop": {"name": "uvloop", "available": True, "protocols": ["raw"], "transports": ["tcp"]}}
    monkeypatch.setattr(Environment, "_build", fake_build)
    monkeypatch.setattr(Environment, "_listed_servers", lambda self: listed)
    lines = []
    a = environment(rev="HEAD", log=lines.append)
    b = environment(rev="HEAD", log=lines.append)
    assert len(builds) == 1 and len(lines) == 1 and "(once; cached)" in lines[0]
    head = subprocess.run(["git", "-C", environments.source_root(), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert a.python == b.python and not a.own and a.label == f"HEAD@{head[:8]}"
    assert a.python.startswith(str(tmp_path)) and a.serve_argv("uvloop")[:5] == [a.python, "-P", "-m", "sockbench",
                                                                                  "serve"]
    assert a.server("uvloop")["transports"] == ["tcp"]
    with pytest.raises(UsageError, match=r"unknown server 'cython' in sockbench HEAD@"):
        a.server("cython")
    # the folder names the interpreter; another commit is another folder
    assert builds[0].startswith(f"py{a.interpreter.label}-")


def test_bad_revisions_and_interpreters_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKBENCH_CACHE", str(tmp_path))
    with pytest.raises(SockbenchError, match="cannot read revision 'no-such-branch-xyz'") as e:
        environment(rev="no-such-branch-xyz")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    with pytest.raises(SockbenchError, match="--python /nonexistent/python9: not found"):
        environment(python="/nonexistent/python9")
    assert os.listdir(tmp_path) == []  # nothing was built
