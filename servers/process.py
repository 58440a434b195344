"""Start a registered server as its own process, through ``sockbench serve``, and stop it by pid.

The conformance suite, the load harness and the calibration tools all use
this, so a server is always exercised through the same process contract that
users see.
"""

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from sockbench.children import child_setup, held_signals
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError

__all__ = ["ServerProcess", "READY_TIMEOUT_S"]

READY_TIMEOUT_S = 15.0


class ServerProcess:
    """``sockbench serve NAME --transport T [--host H --port 0 | --path P]`` in a child process, optionally pinned.

    ``host`` None is the transport's loopback; ``path`` None (unix) a fresh
    private directory that the server removes when it exits.  ``endpoint``
    is where it listens, from its ready line.  ``nofile``, if given, is the
    child's RLIMIT_NOFILE (soft and hard): how a test runs a server out of
    descriptors.  ``environment`` (``environments.Environment``) runs the
    server from another revision or interpreter of sockbench (default: this
    one).  Use as a context manager; leaving it always stops the child by pid.
    """

    def __init__(self, name, transport="tcp", host=None, port=0, path=None, cpus=None, extra_args=(), env=None,
                 nofile=None, environment=None):
        self.name = name
        self.transport = transport
        where = ["--path", path] if path is not None else []
        if transport != "unix":
            where = (["--host", host] if host is not None else []) + ["--port", str(port)]
        args = ["--transport", transport, *where, *extra_args]
        self.cwd = None
        if environment is None:
            self.cmd = [sys.executable, "-m", "sockbench", "serve", name, *args]
        else:
            self.cmd = environment.serve_argv(name, *args)
            self.cwd = environment.cwd
        self.cpus = sorted(cpus) if cpus else None
        self.env = env
        self.nofile = nofile
        self.proc = None
        self.ready = None
        self._stderr = None

    @property
    def pid(self):
        return self.ready["pid"] if self.ready else self.proc.pid

    @property
    def pids(self):
        """Every serving process: the ready line's ``pids`` (``--workers``), else ``[pid]``."""
        if self.ready and self.ready.get("pids"):
            return list(self.ready["pids"])
        return [self.pid]

    @property
    def endpoint(self):
        """Where the server listens (an ``Endpoint``, from its ready line)."""
        return Endpoint.from_ready(self.ready)

    @property
    def address(self):
        """``(host, port)``, or the socket's path for unix: what ``socket.create_connection``/``connect`` take."""
        if self.ready.get("transport") == "unix":
            return self.ready["path"]
        return self.ready["host"], self.ready["port"]

    def start(self, timeout=READY_TIMEOUT_S):
        # stderr goes to a file, never a pipe: a chatty server must not block on a full pipe
        self._stderr = tempfile.TemporaryFile()
        try:
            with held_signals():  # a Ctrl-C now is raised after self.proc is set, and stops it below
                self.proc = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=self._stderr,
                    preexec_fn=self._child_setup(),
                    env=self.env,
                    cwd=self.cwd,
                )
            self.ready = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _child_setup(self):
        setup = child_setup(self.cpus)
        if self.nofile is None:
            return setup
        nofile = self.nofile

        def setup_with_limit():
            setup()
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        return setup_with_limit

    def _wait_ready(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SockbenchError(f"server {self.name!r} printed no ready line within {timeout:.0f} s")
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(5)
                    err = self.stderr_text().strip().splitlines()
                    why = err[-1] if err else f"exit status {self.proc.returncode}"
                    raise SockbenchError(f"server {self.name!r} exited before it was ready: {why}")
                line += chunk
        finally:
            sel.close()
        try:
            ready = json.loads(line)
        except ValueError:
            raise SockbenchError(f"server {self.name!r} printed a malformed ready line: {line[:200]!r}") from None
        if ready.get("event") != "ready":
            raise SockbenchError(f"server {self.name!r} printed {line[:200]!r} instead of a ready line")
        return ready

    def stderr_text(self):
        """Everything the server wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM by pid, wait; SIGKILL if it does not exit in time.  Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        if not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
