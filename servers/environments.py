"""sockbench as another revision, or another Python, would run it: one built environment per (revision,
interpreter), cached, whose servers are started like this checkout's own.

Why it is built this way: ``sockbench ab --rev BASE HEAD NAME`` measures a
server as two commits of sockbench build it, side by side, as asv's
``continuous`` does; ``--python`` (the ``check`` command) serves with another
interpreter.  Either way the load generator is this process's own, and only
the server comes from elsewhere, so the one thing an environment must give is
the command that starts a server in it: ``Environment.serve_argv(name,
...)``, ``[python, "-m", "sockbench", "serve", name, ...]``.  The server then
prints the ready line and is pinned, loaded and measured as a built-in one is
(``process.ServerProcess(..., environment=env)``).

``environment(python=None, rev=None)`` gives it, building on first use:

* ``rev`` None and ``python`` None: this process itself (nothing is built).
* a revision: ``git worktree add --detach`` of that commit of sockbench's
  own checkout (``machine.own_checkout``), a virtual environment made by
  ``python`` (default: this interpreter), and the revision installed into it
  with pip (the extensions compiled in pip's isolated build environment, as
  any install does).  With this interpreter, the venv reads the dependencies
  from this environment's site-packages (a ``.pth`` line: the same uvloop,
  hdrhistogram ... as the load generator, nothing fetched) and only the
  revision itself is installed; with another one, pip installs the
  dependencies too.
* ``python`` alone: the same, of this checkout's working tree as it is.

An environment is cached by what it was built from: the commit (or, for the
working tree, its HEAD and a hash of its uncommitted changes) and the
interpreter (its cache tag and resolved path), under ``$SOCKBENCH_ENV_CACHE``
(default ``~/.cache/sockbench/envs``).  A finished build leaves ``ready.json``
(what it was built from and the servers it has: its ``sockbench servers
--json``), so a second use costs nothing; a build is held under a lock file,
so two commands never build the same one at once; a build that fails leaves
its log (``build.log``) and no ``ready.json``, and the next use builds again.
Whatever goes wrong is one ``SockbenchError`` line (exit 2): an unknown
revision, a folder that is not sockbench's checkout, a build that fails (its
last line, and the log's path).
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field

from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import own_checkout

__all__ = ["Environment", "environment", "current", "cache_root", "CACHE_ENV", "READY_FILE", "BUILD_LOG"]

#: the environment variable naming the cache folder
CACHE_ENV = "SOCKBENCH_ENV_CACHE"
READY_FILE = "ready.json"
BUILD_LOG = "build.log"
#: the longest one build step may take (pip compiling the extensions takes about a minute here)
STEP_TIMEOUT_S = 900.0
#: bump when the layout of a built environment changes: older ones are built again
LAYOUT = 1


@dataclass(frozen=True)
class Environment:
    """Where a server runs from: an interpreter, and the sockbench it imports.

    ``rev`` is the full commit (None: the working tree), ``label`` how output names it (``main@1a2b3c4d``,
    ``python3.12``, ``current``), ``root`` the built folder (None: this process's own environment),
    ``servers`` its registry as ``sockbench servers --json`` lists it (``{name: row}``; empty: this process's,
    read from ``registry``).
    """

    python: str
    rev: str | None = None
    label: str = "current"
    root: str | None = None
    servers: dict = field(default_factory=dict, compare=False)

    @property
    def own(self):
        """True when this is the running process's own environment."""
        return self.root is None

    def serve_argv(self, name, *args):
        """The command that starts server ``name`` in this environment, with ``args`` (``--transport`` ...).

        Run it in ``cwd``: ``python -m`` puts the current folder first on the path, and a sockbench checkout
        there would be imported instead of the environment's own.
        """
        return [self.python, "-m", "sockbench", "serve", name, *map(str, args)]

    @property
    def cwd(self):
        """The folder to start its commands in (None: anywhere; this process's own environment)."""
        return self.root

    def server(self, name):
        """The registry row of ``name`` here: ``{"name", "available", "reason", "protocols", "transports"}``;
        a one-line error (exit 2) for a name this environment does not have or cannot run."""
        rows = self.servers or _own_servers()
        row = rows.get(name)
        where = "" if self.own else f" in {self.label}"
        if row is None:
            raise UsageError(f"unknown server {name!r}{where}; valid names: {', '.join(rows)}")
        if not row.get("available", True):
            raise UsageError(f"server {name!r}{where} cannot run: {row.get('reason')}")
        return row


def _own_servers():
    # deferred: the registry is this room's, but only this process's own environment reads it
    from sockbench.servers import registry

    out = {}
    for spec in registry.SERVERS.values():
        ok, why = spec.availability()
        out[spec.name] = {"name": spec.name, "available": ok, "reason": None if ok else why,
                          "protocols": list(spec.protocols), "transports": list(spec.transports)}
    return out


def current():
    """This process's own environment (nothing to build)."""
    return Environment(python=sys.executable)


def cache_root():
    """The folder environments are cached in: ``$SOCKBENCH_ENV_CACHE``, else ``~/.cache/sockbench/envs``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return os.path.abspath(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sockbench", "envs")


def environment(python=None, rev=None, cache=None, log=None):
    """The ``Environment`` of sockbench at revision ``rev`` run by interpreter ``python``, built on first use.

    ``rev`` None: the working tree as it is; ``python`` None: this interpreter; both None: this process's own
    environment.  ``cache`` overrides ``cache_root()``; ``log(line)`` is told what is being built (a build
    takes about a minute).  A one-line ``SockbenchError`` (exit 2) when it cannot be had.
    """
    if python is None and rev is None:
        return current()
    python = _interpreter(python or sys.executable)
    repo = own_checkout()
    if repo is None:
        what = f"--rev {rev}" if rev is not None else "another interpreter"
        raise UsageError(f"{what} needs sockbench's own git checkout, and this sockbench is not run from one "
                         f"(it is installed); run it from a clone of the repository")
    tag = _python_tag(python)
    if rev is not None:
        sha = _resolve(repo, rev)
        key, label, source = sha[:12], f"{rev}@{sha[:8]}" if rev != sha else sha[:12], None
    else:
        sha = _resolve(repo, "HEAD")
        changes = _uncommitted(repo)
        key = f"{sha[:12]}-tree-{hashlib.sha256(changes).hexdigest()[:10]}" if changes else f"{sha[:12]}-tree"
        label, source = f"working tree ({os.path.basename(python)})", repo
    folder = os.path.join(cache or cache_root(), f"{key}-{tag['tag']}")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with _locked(folder + ".lock"):
        ready = _read_ready(folder)
        if ready is None:
            if log is not None:
                log(f"building sockbench {label} for {python} in {folder} (once; about a minute)")
            ready = _build(folder, repo, sha, source, python, tag)
    vpy = os.path.join(folder, "venv", "bin", "python")
    servers = {row["name"]: row for row in ready.get("servers", [])}
    return Environment(python=vpy, rev=sha if rev is not None else None, label=label, root=folder, servers=servers)


# --- what it is built from --------------------------------------------------------------------


def _interpreter(python):
    path = shutil.which(python) if os.sep not in python else python
    if not path or not os.access(path, os.X_OK):
        raise UsageError(f"no Python interpreter at {python!r}; give a path or a name on PATH")
    return os.path.abspath(path)


def _python_tag(python):
    """``{"tag": "cpython-311-1a2b3c4d", "cache_tag": "cpython-311", "prefix": ...}`` of an interpreter."""
    code = "import json, sys; print(json.dumps([sys.implementation.cache_tag, sys.prefix, sys.version.split()[0]]))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
        cache_tag, prefix, version = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise SockbenchError(f"cannot run {python} as a Python interpreter: {e}", exit_code=2) from None
    where = hashlib.sha256(os.path.realpath(python).encode()).hexdigest()[:8]
    return {"tag": f"{cache_tag}-{where}", "cache_tag": cache_tag, "version": version}


def _git(repo, *args, binary=False):
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=not binary, timeout=60)


def _resolve(repo, rev):
    """The full commit of ``rev`` in ``repo``; a one-line error when it names none."""
    if rev.startswith("-"):
        raise UsageError(f"bad revision {rev!r}: a revision does not start with '-'")
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    sha = done.stdout.strip() if done.returncode == 0 else ""
    if not sha:
        raise UsageError(f"revision {rev!r} is not a commit of sockbench's checkout at {repo} "
                         f"(git rev-parse finds none; fetch it, or name a branch, tag or hash)")
    return sha


def _uncommitted(repo):
    """The working tree's changes to tracked files (``git diff HEAD``), as bytes ("" when clean)."""
    done = _git(repo, "diff", "HEAD", "--binary", "--", ".", ":(exclude)results", binary=True)
    return done.stdout if done.returncode == 0 else b""


# --- the build ----------------------------------------------------------------------------------


class _locked:
    """An exclusive ``flock`` on ``path`` for the block: one build of an environment at a time."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_ready(folder):
    try:
        with open(os.path.join(folder, READY_FILE)) as f:
            ready = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(ready, dict) and ready.get("layout") == LAYOUT
    return ready if ok and os.path.exists(os.path.join(folder, "venv", "bin", "python")) else None


class _Step:
    """Run the build's commands one after the other, each logged to ``build.log``."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w", buffering=1)

    def __call__(self, what, argv, cwd=None, env=None):
        self.log.write(f"$ {' '.join(argv)}\n")
        try:
            done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise _Failed(what, str(e)) from None
        if done.returncode != 0:
            raise _Failed(what, f"exit status {done.returncode}")

    def last_line(self):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip() and not line.startswith("$ ")]
        except OSError:
            return ""
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [""])[-1][:300]

    def close(self):
        self.log.close()


class _Failed(Exception):
    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


def _shared_paths():
    """This environment's site-packages, for a venv of the same interpreter to read its dependencies from."""
    paths = sysconfig.get_paths()
    return [p for p in dict.fromkeys((paths["purelib"], paths["platlib"])) if os.path.isdir(p)]


def _build(folder, repo, sha, source, python, tag):
    """Build the environment in ``folder`` (see the module doc); return its ready record."""
    src, venv = os.path.join(folder, "src"), os.path.join(folder, "venv")
    _remove_build(folder, repo)
    os.makedirs(folder, exist_ok=True)
    step = _Step(os.path.join(folder, BUILD_LOG))
    what = f"revision {sha[:12]}" if source is None else "the working tree"
    try:
        if source is None:
            step("git worktree add", ["git", "-C", repo, "worktree", "add", "--detach", "--force", src, sha])
            source = src
        step("python -m venv", [python, "-m", "venv", venv])
        vpy = os.path.join(venv, "bin", "python")
        ours = {os.path.realpath(sys.executable), os.path.realpath(getattr(sys, "_base_executable", sys.executable))}
        share = tag["cache_tag"] == sys.implementation.cache_tag and os.path.realpath(python) in ours
        pip = [vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if share:
            site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            with open(os.path.join(site, "_sockbench_shared.pth"), "w") as f:
                f.write("\n".join(_shared_paths()) + "\n")
            step("pip install", [*pip, "--no-deps", source])
        else:
            step("pip install", [*pip, source])
        listed = subprocess.run([vpy, "-m", "sockbench", "servers", "--json"], capture_output=True, text=True,
                                timeout=120, cwd=folder)
        if listed.returncode != 0:
            raise _Failed("sockbench servers", (listed.stderr.strip().splitlines() or ["no output"])[-1])
        servers = json.loads(listed.stdout)
    except (_Failed, ValueError) as e:
        last = step.last_line()
        step.close()
        raise SockbenchError(f"{what} does not build for {python}: {e}{': ' + last if last else ''} "
                             f"(log: {os.path.join(folder, BUILD_LOG)})", exit_code=2) from None
    step.close()
    ready = {"layout": LAYOUT, "commit": sha, "tree": source != src, "python": python, "python_version": tag["version"],
             "shared_dependencies": share, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "servers": servers}
    write_json_atomic(os.path.join(folder, READY_FILE), ready)
    return ready


def _remove_build(folder, repo):
    """Remove what an earlier, failed build left in ``folder`` (its worktree unregistered from ``repo``)."""
    src = os.path.join(folder, "src")
    if os.path.isdir(src):
        _git(repo, "worktree", "remove", "--force", src)
    if os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
    _git(repo, "worktree", "prune")
