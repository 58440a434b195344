"""Start a server as its own process, through ``sockbench serve`` or a ``--command`` of its own, and stop it by pid.

The conformance suite, the load harness, ``sockbench check`` and the
calibration tools all use this, so a server is always exercised through the
same process contract that users see.

Two kinds of server are started here, and measured alike afterwards (the
harness reads ``pid``/``pids`` and ``endpoint`` only):

* a registered one (built in, or an entry-point plugin): ``sockbench serve
  NAME`` under this interpreter, or under another one's environment
  (``python``: the executable that runs ``-m sockbench serve``);
* a ``Command`` (``servers/command.py``): a server in any language.  It runs in
  a process group of its own, so that a server that forks a process per
  connection (``socat ... fork``, ``ncat --keep-open``) is stopped whole, and
  its ``pids`` are its live process tree, so that its CPU and RSS are those of
  every process serving.  Stopping it follows the serve contract: SIGTERM to
  the group, and SIGKILL when the root has not exited after ``STOP_GRACE_S``
  (``killed`` is then set, and ``stop_note`` says so in one line).  A command
  that cannot start, exits at once, prints no ready line in time or prints
  something else is one line, exit 2 (``UsageError``), with nothing left running.
"""

import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from sockbench.children import child_setup, held_signals
from sockbench.endpoints import DEFAULT_HOSTS, Endpoint
from sockbench.errors import SockbenchError, UsageError
from sockbench.procfs import group_members, process_tree, thread_states
from sockbench.servers.command import free_port
from sockbench.servers.contract import STACKS_SIGNAL
from sockbench.servers.environments import python_flags

__all__ = ["ServerProcess", "READY_TIMEOUT_S", "STOP_GRACE_S"]

READY_TIMEOUT_S = 15.0
#: the serve contract's stop: a server exits within this long of SIGTERM, else it is killed (commands)
STOP_GRACE_S = 2.0
#: how long ``stop`` waits for a registered server to exit on SIGTERM before it kills it: the contract's
#: ``STOP_GRACE_S`` with room for a machine so busy that exiting itself waits for a CPU
STOP_WAIT_S = 10.0
#: how long a server that did not stop is given to write its stacks (``contract.STACKS_SIGNAL``)
_STACKS_WAIT_S = 1.0
#: how often the ready rule of a ``--ready-port`` command tries its address
_READY_POLL_S = 0.02

class ServerProcess:
    """A server in a child process, optionally pinned: ``sockbench serve NAME --transport T ...``, or a ``command``.

    ``host`` None is the transport's loopback; ``path`` None (unix) a fresh
    private directory that the server (or, for a command, this object)
    removes when it exits.  ``endpoint`` is where it listens, from its ready
    line.  ``nofile``, if given, is the child's RLIMIT_NOFILE (soft and hard):
    how a test runs a server out of descriptors.  ``python``: the interpreter
    that runs ``-m sockbench serve`` (default this one); ``environment``
    (``environments.Environment``, prepared) serves from another revision or
    interpreter of sockbench instead.  ``command``: a
    ``Command`` to start instead (``name`` defaults to its name;
    ``extra_args`` do not apply).  Use as a context manager; leaving it always
    stops the child by pid.
    """

    def __init__(self, name=None, transport="tcp", host=None, port=0, path=None, cpus=None, extra_args=(), env=None,
                 nofile=None, command=None, python=None, ready_timeout=READY_TIMEOUT_S, environment=None):
        self.command = command
        self.environment = environment
        self.name = name if name is not None else (command.name if command is not None else None)
        self.transport = transport
        self.host, self.port, self.path = host, port, path
        self.python = python
        if command is None:
            where = ["--path", path] if path is not None else []
            if transport != "unix":
                where = (["--host", host] if host is not None else []) + ["--port", str(port)]
            args = ["--transport", transport, *where, *extra_args]
            self.cmd = (environment.serve_argv(self.name, *args) if environment is not None else
                        [python or sys.executable, *python_flags(python), "-m", "sockbench", "serve", self.name, *args])
        else:
            if extra_args:
                raise UsageError(f"--command servers take no sockbench serve options ({' '.join(extra_args)})")
            command.check_transport(transport)
            self.cmd = None  # filled at start: each start gets a fresh {port} / {path}
        self.cpus = sorted(cpus) if cpus else None
        self.env = env
        self.nofile = nofile
        self.ready_timeout = command.ready_timeout_s if command is not None and ready_timeout == READY_TIMEOUT_S \
            else ready_timeout
        self.proc = None
        self.ready = None
        self.killed = False
        #: what a registered server that had to be killed was doing: its threads, and its Python stacks
        self.stop_evidence = None
        self._threads_line = None
        self._stderr = None
        self._private = None
        self._rest = bytearray()
        self._drain = None

    @property
    def pid(self):
        return self.ready["pid"] if self.ready else self.proc.pid

    @property
    def pids(self):
        """Every serving process: the ready line's ``pids`` (``--workers``), a command's live process tree, else ``[pid]``."""
        if self.ready and self.ready.get("pids"):
            return list(self.ready["pids"])
        if self.command is not None and self.proc is not None:
            tree = process_tree(self.proc.pid)
            first = self.pid
            return [first] + [p for p in tree if p != first] if tree else [first]
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

    @property
    def label(self):
        """How a line names this server: ``server 'cython'``, or ``--command 'socat ...'``."""
        return f"--command {self.command.text!r}" if self.command is not None else f"server {self.name!r}"

    @property
    def stop_note(self):
        """One line when the server had to be killed (it ignored SIGTERM for ``STOP_GRACE_S``, or a registered one
        for ``STOP_WAIT_S``), else None; ``stop_evidence`` then says what it was doing."""
        if not self.killed:
            return None
        waited = STOP_GRACE_S if self.command is not None else STOP_WAIT_S
        threads = f" (its threads: {self._threads_line})" if self._threads_line else ""
        return (f"{self.label} ignored SIGTERM: killed with SIGKILL after {waited:g} s (the serve contract: "
                f"exit within {STOP_GRACE_S:g} s of SIGTERM){threads}")

    def start(self, timeout=None):
        timeout = self.ready_timeout if timeout is None else timeout
        # stderr goes to a file, never a pipe: a chatty server must not block on a full pipe
        self._stderr = tempfile.TemporaryFile()
        try:
            if self.command is None:
                with held_signals():  # a Ctrl-C now is raised after self.proc is set, and stops it below
                    self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                 stderr=self._stderr, preexec_fn=self._child_setup(), env=self.env)
                self.ready = self._wait_ready(timeout)
            else:
                self._start_command(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _child_setup(self, group=False):
        # it dies with this process (children.child_setup): a command with SIGKILL, as it may ignore SIGTERM
        setup = child_setup(self.cpus, death_signal=signal.SIGKILL if group else signal.SIGTERM)
        nofile = self.nofile
        if nofile is None and not group:
            return setup

        def setup_more():
            setup()
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if group:
                os.setpgid(0, 0)  # a group of its own, stopped whole

        return setup_more

    # --- a --command server --------------------------------------------------------------------
    def _values(self):
        """The placeholders' values for this start: a free port, the loopback, a fresh private socket path."""
        cmd, t = self.command, self.transport
        values = {"host": self.host or DEFAULT_HOSTS.get(t, "127.0.0.1"), "port": self.port or 0, "path": self.path}
        if t != "unix" and not values["port"]:
            if "port" in cmd.placeholders:
                values["port"] = free_port(t, values["host"])
            elif isinstance(cmd.ready_port, int):
                values["port"] = cmd.ready_port
        if t == "unix" and values["path"] is None and "path" in cmd.placeholders:
            self._private = tempfile.mkdtemp(prefix="sockbench-")
            values["path"] = os.path.join(self._private, "echo.sock")
        return values

    def _start_command(self, timeout):
        values = self._values()
        self.cmd = self.command.argv(values)
        ready_at = self.command.ready_address(values)
        try:
            with held_signals():
                self.proc = subprocess.Popen(
                    self.cmd, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if ready_at is None else self._stderr, stderr=self._stderr,
                    preexec_fn=self._child_setup(group=True), env=self.env)
        except OSError as e:
            raise UsageError(f"{self.label}: cannot run {self.cmd[0]!r}: {e.strerror or e}") from None
        if ready_at is None:
            ready = self._wait_ready(timeout)
            self.ready = self._complete_ready(ready, values)
            self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
            self._drain.start()
        else:
            self._wait_accepting(ready_at, timeout)
            ready = {"event": "ready", "server": self.name, "pid": self.proc.pid}
            ready.update(Endpoint("unix", path=ready_at).ready_fields() if isinstance(ready_at, str)
                         else Endpoint(self.transport, ready_at[0], ready_at[1]).ready_fields())
            self.ready = ready

    def _complete_ready(self, ready, values):
        """A command's ready line with what it may leave out filled in; one missing its address is a UsageError."""
        t = ready.get("transport") or self.transport
        out = {"event": "ready", "server": self.name, "transport": t, "pid": self.proc.pid}
        pid = ready.get("pid")
        if isinstance(pid, int) and pid > 0:
            out["pid"] = pid
        if t == "unix":
            path = ready.get("path") or values.get("path")
            if not isinstance(path, str) or not path:
                raise UsageError(f"{self.label} printed a ready line without \"path\": {json.dumps(ready)[:200]}")
            out["path"] = path
        else:
            port = ready.get("port")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UsageError(f"{self.label} printed a ready line without a \"port\" (1..65535): "
                                 f"{json.dumps(ready)[:200]}")
            out["host"] = ready.get("host") or values["host"]
            out["port"] = port
        if ready.get("pids"):
            out["pids"] = list(ready["pids"])
        try:
            Endpoint.from_ready(out)
        except SockbenchError as e:
            raise UsageError(f"{self.label} printed a ready line sockbench cannot use: {e}") from None
        return out

    def _wait_accepting(self, addr, timeout):
        """Until ``addr`` accepts (udp: echoes a probe), the process exits, or ``timeout``: the ``--ready-port`` rule."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise UsageError(f"{self.label} exited before it was ready: {self._exit_why()}")
            if self._accepts(addr):
                return
            if time.monotonic() >= deadline:
                where = f"unix:{addr}" if isinstance(addr, str) else Endpoint(self.transport, *addr).format()
                raise UsageError(f"{self.label}: nothing accepted on {where} within {timeout:g} s "
                                 f"(--ready-port); is that where it listens?")
            time.sleep(_READY_POLL_S)

    def _accepts(self, addr):
        if isinstance(addr, str):
            family, kind = socket.AF_UNIX, socket.SOCK_STREAM
        else:
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        s = socket.socket(family, kind)
        s.settimeout(0.2)
        try:
            s.connect(addr)
            if kind == socket.SOCK_DGRAM:
                s.send(b"sockbench-ready?")
                return s.recv(64) == b"sockbench-ready?"
            return True
        except OSError:
            return False
        finally:
            s.close()

    def _drain_stdout(self):
        """Keep reading a command's stdout after its ready line (kept up to 64 KiB): a full pipe would stop it."""
        try:
            fd = self.proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                self._rest += chunk
                del self._rest[: max(0, len(self._rest) - 65536)]
        except (OSError, ValueError):
            return

    # --- the ready line -----------------------------------------------------------------------
    def _exit_why(self):
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        err = self.stderr_text().strip().splitlines()
        return f"exit status {self.proc.returncode}" + (f": {err[-1][:300]}" if err else "")

    def _fail(self, message):
        """A start failure: a usage error (exit 2) for a command, the server's own error otherwise."""
        return UsageError(message) if self.command is not None else SockbenchError(message)

    def _wait_ready(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"{self.label} printed no ready line within {timeout:g} s"
                                     + (" (a server that prints none is ready by --ready-port PORT)"
                                        if self.command is not None else ""))
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    if self.command is not None:
                        raise self._fail(f"{self.label} exited before it was ready: {self._exit_why()}")
                    self.proc.wait(5)
                    err = self.stderr_text().strip().splitlines()
                    why = err[-1] if err else f"exit status {self.proc.returncode}"
                    raise SockbenchError(f"server {self.name!r} exited before it was ready: {why}")
                line += chunk
                if len(line) > 65536:
                    break
        finally:
            sel.close()
        first, _, rest = line.partition(b"\n")
        self._rest += rest
        try:
            ready = json.loads(first)
        except ValueError:
            raise self._fail(f"{self.label} printed a malformed ready line: {first[:200]!r}") from None
        if not isinstance(ready, dict) or ready.get("event") != "ready":
            raise self._fail(f"{self.label} printed {first[:200]!r} instead of a ready line "
                             f"({{\"event\": \"ready\", \"port\": P}})")
        return ready

    def stderr_text(self, start=0):
        """Everything the server wrote to stderr so far, from byte ``start`` (and stdout, for a ``--ready-port``
        command).

        Read with ``pread``, never by seeking: the server writes through the same open file, whose one offset a
        seek would move under it, and a write landing then would overwrite what came before.
        """
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, max(0, size - start), start).decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # --- stopping -----------------------------------------------------------------------------
    def stop(self):
        """SIGTERM by pid, wait ``STOP_WAIT_S``; else record what it was doing (``stop_evidence``) and SIGKILL it.
        Returns the exit status.

        A command: its whole process group, SIGKILL after ``STOP_GRACE_S`` (``killed``), and whatever
        of the group outlived its root is killed before the root is reaped.
        """
        if self.proc is None:
            self._remove_private()
            return None
        if self.command is not None:
            self._stop_group()
        elif self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self._record_evidence()
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed and self._drain is None:
            self.proc.stdout.close()
        self._remove_private()
        return self.proc.returncode

    def _record_evidence(self):
        """What a server that ignored SIGTERM is doing, before it is killed: each thread's state and kernel wait,
        and, from a server of this revision, every thread's Python stack (it writes them on ``STACKS_SIGNAL``)."""
        pid = self.proc.pid
        threads = thread_states(pid)
        self._threads_line = ", ".join(f"{tid} {name} {state} {wchan}" for tid, name, state, wchan in threads)
        stacks = ""
        if self.environment is None:  # another revision may not handle the signal, and would die of it
            start = os.fstat(self._stderr.fileno()).st_size
            os.kill(pid, STACKS_SIGNAL)
            deadline = time.monotonic() + _STACKS_WAIT_S
            size = start
            while time.monotonic() < deadline:
                time.sleep(0.1)
                now = os.fstat(self._stderr.fileno()).st_size
                if now == size > start:
                    break  # written, and no longer growing
                size = now
            stacks = self.stderr_text(start)
        self.stop_evidence = (f"{self.label} (pid {pid}) had not exited {STOP_WAIT_S:g} s after SIGTERM; "
                              f"its threads (tid name state wchan): {self._threads_line or 'none left'}"
                              + (f"\nits Python stacks:\n{stacks}" if stacks else ""))

    def _exited(self):
        """The root has exited (it is left unreaped, so its pid, the group's id, names nothing else)."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:
            return True

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _stop_group(self):
        pgid = self.proc.pid
        if not self._exited():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not self._exited():
                self.killed = True
                self._signal_group(signal.SIGKILL)
        # the rest of the group (a child per connection) had the same SIGTERM; give it a moment, then kill it
        deadline = time.monotonic() + 1.0
        while [p for p in group_members(pgid) if p != pgid] and time.monotonic() < deadline:
            time.sleep(0.02)
        if [p for p in group_members(pgid) if p != pgid]:
            self._signal_group(signal.SIGKILL)
        self.proc.wait()
        if self._drain is not None:
            self._drain.join(1.0)
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    def _remove_private(self):
        if self._private:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
