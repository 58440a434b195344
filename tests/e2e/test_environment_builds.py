"""A revision of sockbench built for real (a venv, pip compiling the extensions), its server started and loaded.

Slow (the build compiles the extensions: about a minute), and it needs the
package index pip is configured with for the build's Cython and setuptools;
skipped, saying why, where this is not sockbench's own git checkout.  The
cache lives in the test's temporary folder (``SOCKBENCH_CACHE``).
"""

import os
import shutil
import subprocess

import pytest

from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.bench.load.pools import ServerPool
from sockbench.errors import SockbenchError
from sockbench.machine import own_checkout
from sockbench.servers import environments
from sockbench.servers.environments import environment

pytestmark = pytest.mark.slow

REPO = own_checkout()
if REPO is None:
    pytest.skip("not sockbench's own git checkout (an install): no revision to build", allow_module_level=True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "envs"
    monkeypatch.setenv("SOCKBENCH_CACHE", str(root))
    try:
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_revision_builds_once_and_its_server_is_measured_like_a_built_in_one(cache):
    lines = []
    env = environment(rev="HEAD", log=lines.append)
    assert len(lines) == 1 and os.path.exists(env.python) and env.server("uvloop")["available"]
    # the revision's own sockbench, not this checkout's, even when started inside the checkout
    where = subprocess.run([env.python, "-P", "-c", "import sockbench, os; print(os.path.realpath(sockbench.__file__))"],
                           capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    assert where.startswith(os.path.realpath(cache)), where
    again = environment(rev="HEAD", log=lines.append)
    assert again.python == env.python and len(lines) == 1  # cached: nothing built the second time
    spec = LoadSpec(server="uvloop", conns=10, duration_s=0.2, warmup_s=0.05, name_busy=False)
    with ServerPool(spec.server_cpus, environment=env) as servers:
        server = servers.get(spec)
        assert server.cmd[0] == env.python and server.ready["server"] == "uvloop"
        r = run_load(spec, server=server)
    assert r.valid and r.throughput.msgs_per_s > 0 and r.server_proc.user_s is not None


def test_a_revision_that_does_not_build_is_one_line_with_its_log(cache, tmp_path, monkeypatch):
    # a clone of the checkout with one more commit whose setup.py cannot run: the build fails in pip, for real
    clone = str(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", REPO, clone], check=True)
    with open(os.path.join(clone, "setup.py"), "w") as f:
        f.write("raise SystemExit('error: this revision does not build')\n")
    git = ["git", "-C", clone, "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "-am", "broken"], check=True)
    monkeypatch.setattr(environments, "source_root", lambda: clone)
    with pytest.raises(SockbenchError) as e:
        environment(rev="HEAD")
    text = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in text
    assert "building sockbench's extensions failed" in text and "this revision does not build" in text
    assert not any(f.endswith(".json") for _, _, files in os.walk(cache) for f in files)  # no marker: built again
