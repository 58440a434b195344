"""``servers.environments``: this process's own environment, the cache by commit and interpreter, bad revisions.

The builds themselves (a worktree, a venv, pip) are in ``tests/e2e/test_environments.py``; here ``_build`` is
a stand-in, so the cache's rules are checked in milliseconds.
"""

import json
import os
import sys

import pytest

from sockbench.errors import UsageError
from sockbench.servers import environments
from sockbench.servers.environments import READY_FILE, Environment, current, environment


def test_no_revision_and_no_interpreter_is_this_process():
    env = environment()
    assert env == current() and env.own and env.python == sys.executable
    assert env.serve_argv("uvloop", "--port", 0) == [sys.executable, "-m", "sockbench", "serve", "uvloop", "--port", "0"]
    assert env.server("uvloop")["protocols"] == ["raw", "frame", "json"]
    with pytest.raises(UsageError, match="unknown server 'nosuch'; valid names: blocking"):
        env.server("nosuch")


def test_a_revision_is_built_once_per_commit_and_interpreter(tmp_path, monkeypatch):
    builds = []

    def fake_build(folder, repo, sha, source, python, tag):
        builds.append((os.path.basename(folder), sha, source))
        os.makedirs(os.path.join(folder, "venv", "bin"))
        open(os.path.join(folder, "venv", "bin", "python"), "w").close()
        ready = {"layout": environments.LAYOUT, "commit": sha,
                 "servers": [{"name": "uvloop", "available": True, "protocols": ["raw"], "transports": ["tcp"]}]}
        with open(os.path.join(folder, READY_FILE), "w") as f:
            json.dump(ready, f)
        return ready

    monkeypatch.setattr(environments, "_build", fake_build)
    lines = []
    a = environment(rev="HEAD", cache=str(tmp_path), log=lines.append)
    b = environment(rev="HEAD", cache=str(tmp_path), log=lines.append)
    assert len(builds) == 1 and len(lines) == 1 and "once; about a minute" in lines[0]
    assert a == b and not a.own and a.rev == builds[0][1] and len(a.rev) == 40
    assert a.label == f"HEAD@{a.rev[:8]}" and a.python.endswith(os.path.join("venv", "bin", "python"))
    assert a.serve_argv("uvloop")[:4] == [a.python, "-m", "sockbench", "serve"]
    assert a.server("uvloop")["transports"] == ["tcp"]
    with pytest.raises(UsageError, match=r"unknown server 'cython' in HEAD@"):
        a.server("cython")
    # the folder names the commit and the interpreter
    assert builds[0][0].startswith(a.rev[:12] + "-" + sys.implementation.cache_tag)


def test_bad_revisions_and_installs_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="revision 'no-such-branch-xyz' is not a commit of sockbench's checkout"):
        environment(rev="no-such-branch-xyz", cache=str(tmp_path))
    with pytest.raises(UsageError, match="a revision does not start with '-'"):
        environment(rev="--all", cache=str(tmp_path))
    with pytest.raises(UsageError, match="no Python interpreter at"):
        environment(python="/nonexistent/python9", cache=str(tmp_path))
    monkeypatch.setattr(environments, "own_checkout", lambda: None)
    with pytest.raises(UsageError, match="--rev HEAD needs sockbench's own git checkout"):
        environment(rev="HEAD", cache=str(tmp_path))
    assert isinstance(current(), Environment)
