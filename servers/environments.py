"""sockbench at a revision, for an interpreter: a cached virtual environment with the servers built, to serve from.

Why it is built this way: ``--python PATH`` runs the built-in servers under
another Python (3.11 or newer), and ``ab --rev`` under another revision of
sockbench; both need the same thing, an environment where ``PYTHON -m
sockbench serve NAME`` runs that code with its Cython extensions compiled for
that interpreter.  Building one takes a minute, so each is built once and kept,
keyed by the interpreter (its real path, implementation and version) and the
source (a revision's commit, or the working tree: HEAD plus a hash of its
uncommitted changes), under ``$SOCKBENCH_CACHE`` (default
``~/.cache/sockbench/envs``).  A lock file keeps two processes from building
the same one at once.

What an environment holds is what serving needs, nothing more: sockbench
itself (``--no-deps``, built without build isolation against the Cython and
setuptools installed first), uvloop, and, where the interpreter has wheels or
can build them, gevent and trio (a server whose library is missing there is
"not installed", as anywhere).  The load, the report and the harness always
run under sockbench's own interpreter: only the server changes.

The interpreter the default run uses (this one) needs no environment:
``prepare`` of a Python whose base installation and version are this
process's returns one that serves with ``sys.executable``.  Every failure is
one line naming the interpreter (``SockbenchError``, exit 2): not found, not a
Python, older than 3.11, or the build failed (its last output line).
"""

import fcntl
import functools
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from sockbench.children import child_setup
from sockbench.errors import SockbenchError, UsageError

__all__ = ["Interpreter", "Environment", "inspect", "prepare", "interpreter_version", "python_flags", "MIN_VERSION",
           "cache_root", "source_root", "environment", "current"]

MIN_VERSION = (3, 11)
#: what serving needs besides sockbench (the optional servers' libraries are tried, not required)
SERVE_REQUIRES = ("uvloop>=0.19",)
SERVE_OPTIONAL = ("gevent>=23.9", "trio>=0.23")
BUILD_REQUIRES = ("setuptools>=77", "wheel", "Cython>=3.0")
_PROBE = ("import json, platform, sys; print(json.dumps({'version': platform.python_version(), "
          "'implementation': platform.python_implementation(), 'executable': sys.executable, "
          "'base_prefix': sys.base_prefix, 'free_threaded': bool(getattr(sys, '_is_gil_enabled', lambda: True)() "
          "is False or 't' in getattr(sys, 'abiflags', '')), 'info': list(sys.version_info[:3])}))")


#: the registry rows ``Environment.server`` reads, built from ``registry`` into ``rows`` (only attributes every
#: revision's registry has): source text, since another environment runs it under its own interpreter
_SERVER_ROWS = ("rows = []\n"
                "for s in registry.SERVERS.values():\n"
                "    ok, why = s.availability()\n"
                "    rows.append({'name': s.name, 'available': ok, 'reason': None if ok else why,\n"
                "                 'protocols': list(s.protocols), 'transports': list(s.transports)})\n")
_LIST_SERVERS = "import json\nfrom sockbench.servers import registry\n" + _SERVER_ROWS + "print(json.dumps(rows))\n"


def _fail(python, why):
    return SockbenchError(f"--python {python}: {why}", exit_code=2)


@dataclass(frozen=True)
class Interpreter:
    """A Python found at ``path``: its version, implementation and where its base installation is."""

    path: str
    executable: str
    version: str
    implementation: str
    base_prefix: str
    free_threaded: bool = False

    @property
    def label(self):
        """How results and cells name it: ``3.12`` (``3.13t`` for a free-threaded build)."""
        major, minor = self.version.split(".")[:2]
        return f"{major}.{minor}" + ("t" if self.free_threaded else "")

    @property
    def description(self):
        return f"{self.implementation} {self.version}" + (" (free-threaded)" if self.free_threaded else "")

    @property
    def is_this_one(self):
        """True for the interpreter this process runs on (same base installation and version)."""
        return (os.path.realpath(self.base_prefix) == os.path.realpath(sys.base_prefix)
                and self.version == platform.python_version())


def _candidates(python):
    """Where ``python`` may be: the path itself, or the name on PATH, then pyenv's installed versions of that name
    (a pyenv shim answers only for the versions made active, so ``python3.12`` may be installed yet not run)."""
    if os.sep in python:
        return [python]
    found = [p for p in [shutil.which(python)] if p]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(os.path.join(root, "versions", "*", "bin", python)), reverse=True)
    return found


@functools.lru_cache(maxsize=None)
def inspect(python):
    """The ``Interpreter`` at ``python`` (a path or a name on PATH); a one-line SockbenchError when it is none."""
    candidates = [p for p in _candidates(python) if os.path.exists(p)]
    if not candidates:
        raise _fail(python, "not found (give a path, or a name on PATH such as python3.12)")
    said = None
    for exe in candidates:
        try:
            r = subprocess.run([exe, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            said = said or f"cannot be run: {getattr(e, 'strerror', None) or e}"
            continue
        try:
            d = json.loads(r.stdout.strip().splitlines()[-1])
            info = tuple(d["info"])
        except (ValueError, KeyError, IndexError):
            first = (r.stderr.strip().splitlines() or [""])[0][:120]
            said = said or ("is not a Python interpreter (it did not answer a Python one-liner"
                            + (f": {first})" if first else ")"))
            continue
        if info[:2] < MIN_VERSION:
            raise _fail(python, f"is Python {d['version']}; sockbench's servers need {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                                f"or newer")
        return Interpreter(python, d["executable"], d["version"], d["implementation"], d["base_prefix"],
                           bool(d.get("free_threaded")))
    raise _fail(python, said)


@functools.lru_cache(maxsize=None)
def interpreter_version(executable):
    """``CPython 3.12.1`` for the interpreter at ``executable`` (this process's own without running anything)."""
    if os.path.realpath(executable) == os.path.realpath(sys.executable):
        return f"{platform.python_implementation()} {platform.python_version()}"
    try:
        return inspect(executable).description
    except SockbenchError:
        return None


def python_flags(python):
    """The flags an environment's interpreter serves with: ``-P`` (3.11+: the current directory, perhaps a source
    tree of another revision, is not put on ``sys.path``); none for this process's own (``python`` None).

    Paths are compared as given, not resolved: a virtual environment's ``bin/python`` links to the same binary as
    this one's, yet imports another sockbench."""
    return [] if python is None or os.path.abspath(python) == os.path.abspath(sys.executable) else ["-P"]


def cache_root():
    return os.environ.get("SOCKBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sockbench", "envs")


def source_root():
    """The sockbench source tree this process runs from (setup.py beside the package), or None for an install."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.path.dirname(here)):
        if os.path.exists(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "servers")):
            return root
    return None


def _git(root, *args, text=True):
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=text, check=True).stdout


def _source_id(root, rev):
    """``(id, description)`` of the code to build: a revision's commit, or HEAD and a hash of the working tree's changes."""
    if rev is not None and rev.startswith("-"):
        raise SockbenchError(f"bad revision {rev!r}: a revision does not start with '-'", exit_code=2)
    try:
        if rev is not None:
            try:
                commit = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
            except subprocess.CalledProcessError:
                raise SockbenchError(f"revision {rev!r} is not a commit of sockbench's checkout at {root} (git "
                                     f"rev-parse finds none; fetch it, or name a branch, tag or hash)",
                                     exit_code=2) from None
            return commit, f"{rev} ({commit[:12]})"
        head = _git(root, "rev-parse", "HEAD").strip()
        diff = _git(root, "diff", "HEAD", "--binary", text=False)
        untracked = _git(root, "ls-files", "-o", "--exclude-standard", "-z", text=False).split(b"\0")
    except (OSError, subprocess.CalledProcessError) as e:
        what = f"revision {rev!r}" if rev is not None else "the working tree"
        err = getattr(e, "stderr", "") or str(e)
        raise SockbenchError(f"cannot read {what} of {root}: {str(err).strip().splitlines()[-1:] or e}",
                             exit_code=2) from None
    h = hashlib.sha256(diff)
    for name in sorted(n for n in untracked if n):
        path = os.path.join(root, os.fsdecode(name))
        if os.path.isfile(path):
            h.update(name)
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    dirty = bool(diff) or any(untracked)
    return (f"{head}-{h.hexdigest()[:16]}" if dirty else head), (f"{head[:12]}" + (" + changes" if dirty else ""))


def _export(root, rev, dest):
    """The source of ``rev`` (None: the working tree, uncommitted changes and new files included) into ``dest``."""
    if rev is not None:
        archive = subprocess.run(["git", "-C", root, "archive", "--format=tar", rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
        return
    names = _git(root, "ls-files", "-co", "--exclude-standard", "-z", text=False).split(b"\0")
    for name in names:
        if not name:
            continue
        rel = os.fsdecode(name)
        src = os.path.join(root, rel)
        if not os.path.isfile(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


class Environment:
    """sockbench at revision ``rev`` (None: the working tree) for interpreter ``python``: ``prepare()``, then serve."""

    def __init__(self, python, rev=None, root=None):
        self.interpreter = inspect(python) if isinstance(python, str) else python
        self.rev = rev
        self.root = root or source_root()
        self._python = None
        self.source = None
        self._servers = None
        self.commit = None  # a revision's full commit, once prepared

    @property
    def python(self):
        """The executable that runs ``-m sockbench serve`` in this environment (after ``prepare``)."""
        if self._python is None:
            raise RuntimeError("Environment.prepare() first")
        return self._python

    @property
    def label(self):
        """How output names it: the interpreter (``3.12``), or the revision (``main@1a2b3c4d``) for ``--rev``."""
        if self.rev is None:
            return self.interpreter.label
        short = (self.commit or self.rev)[:8]
        return short if self.rev.startswith(short) else f"{self.rev}@{short}"

    @property
    def own(self):
        """True for this process's own environment (this interpreter, the working tree as it runs)."""
        return self.rev is None and self.interpreter.is_this_one

    def server(self, name):
        """The registry row of ``name`` here (``{"name", "available", "reason", "protocols", "transports"}``); one
        line (exit 2) for a name this environment does not have or cannot run.  Another environment is asked
        through its own ``sockbench servers --json``, once."""
        if self._servers is None:
            self._servers = _own_servers() if self.own else self._listed_servers()
        row = self._servers.get(name)
        where = "" if self.own else f" in sockbench {self.label}"
        if row is None:
            raise UsageError(f"unknown server {name!r}{where}; valid names: {', '.join(self._servers)}")
        if not row.get("available", True):
            raise UsageError(f"server {name!r}{where} cannot run: {row.get('reason')}")
        return row

    def _listed_servers(self):
        # the environment's own registry, asked without its CLI (an environment holds what serving needs, not rich)
        r = self._run([self.python, *python_flags(self.python), "-c", _LIST_SERVERS], "listing its servers")
        try:
            return {row["name"]: row for row in json.loads(r.stdout.strip().splitlines()[-1])}
        except (ValueError, KeyError, TypeError, IndexError):
            raise self._fail("listing its servers gave no JSON") from None

    def _fail(self, why):
        """One line naming what was asked: ``--rev REV`` for a revision, ``--python PATH`` for an interpreter."""
        if self.rev is not None:
            return SockbenchError(f"revision {self.rev!r} of sockbench: {why}", exit_code=2)
        return _fail(self.interpreter.path, why)

    def serve_argv(self, name, *args):
        """``[python, -P, -m, sockbench, serve, NAME, *args]`` in this environment (``-P``: a source tree in the
        current directory must not shadow the environment's own sockbench)."""
        return [self.python, *python_flags(self.python), "-m", "sockbench", "serve", name, *args]

    def key(self, source_id):
        i = self.interpreter
        ident = json.dumps([os.path.realpath(i.executable), i.implementation, i.version, i.free_threaded, source_id])
        return f"py{i.label}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"

    def prepare(self, log=None):
        """Build the environment if it is not in the cache yet; returns self.  ``log(line)`` hears what is done."""
        if self.rev is None and self.interpreter.is_this_one:
            self._python, self.source = sys.executable, "this environment"
            return self
        if self.root is None:
            raise self._fail("building sockbench for another interpreter or revision needs its source tree "
                                               "(a git checkout); this sockbench is installed without one")
        source_id, self.source = _source_id(self.root, self.rev)
        self.commit = source_id if self.rev is not None else None
        path = os.path.join(cache_root(), self.key(source_id))
        py = os.path.join(path, "bin", "python")
        marker = os.path.join(path, "sockbench-env.json")
        os.makedirs(cache_root(), exist_ok=True)
        with open(os.path.join(cache_root(), ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build of one environment at a time, across processes
            if not os.path.exists(marker):
                if log:
                    log(f"building sockbench ({self.source}) for {self.interpreter.description} in {path} "
                        f"(once; cached)")
                self._build(path, py)
                with open(marker, "w") as f:
                    json.dump({"interpreter": self.interpreter.description, "executable": self.interpreter.executable,
                               "source": source_id, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
        self._python = py
        return self

    def _run(self, argv, what):
        try:
            # a build dies with this process (children.child_setup); an unfinished one has no marker and is redone
            r = subprocess.run(argv, capture_output=True, text=True, timeout=900, preexec_fn=child_setup())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise self._fail(f"{what} failed: {e}") from None
        if r.returncode != 0:
            raise self._fail(f"{what} failed: {_telling_line(r.stderr + r.stdout) or r.returncode}")
        return r

    def _build(self, path, py):
        shutil.rmtree(path, ignore_errors=True)
        try:
            self._run([self.interpreter.executable, "-m", "venv", path], "creating a virtual environment")
            pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            self._run(pip + list(BUILD_REQUIRES) + list(SERVE_REQUIRES), "installing Cython, setuptools and uvloop")
            for extra in SERVE_OPTIONAL:
                try:
                    self._run(pip + [extra], f"installing {extra}")
                except SockbenchError:
                    pass  # its server reads "not installed" under this interpreter, as anywhere the library is missing
            with tempfile.TemporaryDirectory(prefix="sockbench-src-") as src:
                _export(self.root, self.rev, src)
                self._run(pip + ["--no-deps", "--no-build-isolation", src], "building sockbench's extensions")
            self._run([py, "-P", "-c", "import sockbench.ext.epoll_echo, sockbench.servers.registry"],
                      "importing the built extensions")
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise


def _own_servers():
    # deferred: the registry is this room's, but only this process's own environment reads it
    from sockbench.servers import registry

    scope = {"registry": registry}
    exec(_SERVER_ROWS, scope)  # the rows another environment prints, built the one way
    return {row["name"]: row for row in scope["rows"]}


def current():
    """This process's own environment (nothing to build)."""
    return Environment(sys.executable).prepare()


#: pip's own framing of a failed build, which says nothing of why
_PIP_FRAME = ("note:", "hint:", "×", "╰", "│", "error: subprocess-exited-with-error", "error: metadata-generation-failed")


def _telling_line(output):
    """The line of a failed step's output that says why: the last error line that is not pip's framing, else the
    last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "WARNING" not in ln]
    own = [ln for ln in lines if not ln.startswith(_PIP_FRAME)]
    errors = [ln for ln in own if "error" in ln.lower()]
    return (errors or own or lines or [""])[-1][:300]


def prepare(python, rev=None, log=None):
    """``Environment(python, rev).prepare(log)``: the one call ``--python`` and ``ab --rev`` make."""
    return Environment(python, rev).prepare(log)


def environment(python=None, rev=None, log=None):
    """The same, with both optional (``python`` None: this interpreter; ``rev`` None: the working tree)."""
    return Environment(python or sys.executable, rev).prepare(log)
