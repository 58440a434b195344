"""``sockbench serve NAME --workers N``: N processes of one server on one address, each on a CPU of its own.

Why it is built this way: nobody deploys a Python server on one core; gunicorn,
uvicorn and nginx run N processes that share a port.  Over TCP the kernel's way
is ``SO_REUSEPORT``: a listening socket per worker on one address, connections
spread by a hash of the 4-tuple, no thundering herd.  A Unix path cannot be
bound twice, so there the workers share one listener (the pre-fork convention).

* The supervisor (the ``sockbench serve`` process) binds every listener
  through ``contract.listen`` (the first picks the port for ``--port 0``),
  forks the workers and closes its copies, so a dead worker's socket leaves
  the ``SO_REUSEPORT`` group instead of queueing connections no one accepts.
  It leaves only once the kernel releases it, which for an io_uring worker
  (whose ring holds the socket) is some milliseconds after the death; the
  supervisor says "still serve" only once the socket is gone (at most
  ``RELEASE_BUDGET_S``), so that line means new connections are safe.
* Worker i pins itself to the i-th CPU of the supervisor's affinity (round
  robin, one warning line when they must share) and runs the server's
  ``serve`` as a single server would; ``announce()`` goes up a pipe.
* The supervisor prints the ready line once all are ready, with ``"pids"``
  (``"pid"`` the first worker's), and then only waits, so the harness sums CPU
  and peak RSS over the serving processes alone.
* SIGTERM/SIGINT are passed to every worker; the supervisor exits 0 once they
  are gone (a worker left after ``STOP_BUDGET_S`` is killed, with a line), 1
  only when a worker exits non-zero while stopping.  Killed outright, it still
  takes its workers with it (``children.die_with_parent``).  A worker that
  dies alone is one line; the others serve on, and with none left the
  supervisor exits 1.

Input errors are one line and exit 2: ``--workers 0``, or ``SO_REUSEPORT``
missing or refused here (TCP with more than one worker).
"""

import os
import select
import signal
import socket
import sys
import time

from sockbench.children import die_with_parent
from sockbench.errors import SockbenchError, UsageError
from sockbench.procfs import tcp_socket_inodes
from sockbench.servers.contract import (
    STOP_POLL_S,
    STOP_SIGNALS,
    StopServing,
    log,
    remove_orphaned_socket_files,
    unexpected,
)

__all__ = ["serve_workers", "worker_cpus", "check_workers", "reuse_port_error", "describe_exit", "STOP_BUDGET_S"]

#: how long after a stop signal the supervisor waits for its workers before it kills them (the contract: 2 s in all)
STOP_BUDGET_S = 1.7
#: how long the supervisor waits for every worker to announce itself
READY_BUDGET_S = 15.0
#: how long the supervisor waits for a dead worker's listening socket to leave the kernel's tables
RELEASE_BUDGET_S = 1.0


def check_workers(n):
    """``n`` as a worker count, or a one-line ``UsageError`` (exit 2)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UsageError(f"--workers must be 1 or more, not {n!r}")
    return n


def worker_cpus(n, allowed):
    """The CPU each of ``n`` workers is pinned to: the allowed CPUs in order, round robin; and a warning or None.

    ``allowed`` is the affinity the supervisor was started with.
    """
    cpus = sorted(allowed)
    if not cpus:
        raise SockbenchError("this process may run on no CPU (empty affinity)")
    warning = None
    if n > len(cpus):
        warning = (f"warning: {n} workers on {len(cpus)} CPU{'s' if len(cpus) > 1 else ''} "
                   f"({','.join(map(str, cpus))}): workers share CPUs")
    return [cpus[i % len(cpus)] for i in range(n)], warning


def reuse_port_error(probe=None):
    """None when ``SO_REUSEPORT`` can be set here, else the one line that says it cannot."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return "SO_REUSEPORT is not available on this system; --workers above 1 needs it for tcp (unix shares one socket)"
    sock = probe or socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError as e:
        return f"SO_REUSEPORT is refused here ({e.strerror}); --workers above 1 needs it for tcp"
    finally:
        if probe is None:
            sock.close()
    return None


def describe_exit(status):
    """How a worker ended, from its ``waitpid`` status: ``exited with status 1`` or ``was killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        return f"was killed by {signame}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


# --- the listeners ------------------------------------------------------------------------------


def _listeners(n, listen, transport, host, port, path, backlog):
    """One listening socket per worker (``SO_REUSEPORT``), or one shared by all (unix, or one worker)."""
    if transport == "unix" or n == 1:
        sock = listen(transport, host, port, path, backlog)
        return [sock] * n
    why = reuse_port_error()
    if why:
        raise UsageError(why)
    first = listen(transport, host, port, path, backlog, reuse_port=True)
    socks = [first]
    try:
        bound_host, bound_port = first.getsockname()[:2]
        for _ in range(n - 1):
            socks.append(listen(transport, bound_host, bound_port, path, backlog, reuse_port=True))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# --- a worker -----------------------------------------------------------------------------------


def _run_worker(index, cpu, listener, others, serve, options, ready_w, supervisor):
    """In the forked child: pin, serve, and ``os._exit`` (never return into the supervisor's code).

    The worker stops (SIGTERM) when its supervisor dies, however it died; a
    unix socket's folder, which only the supervisor removes, then goes with
    the workers.
    """
    rc = 1
    try:
        die_with_parent(supervisor)
        for sock in others:
            if sock is not listener:
                sock.close()
        os.sched_setaffinity(0, {cpu})

        def announce():
            os.write(ready_w, f"{os.getpid()}\n".encode())

        serve(listener, announce, options)
        rc = 0
    except StopServing:
        rc = 0
    except SockbenchError as e:
        log(options["name"], str(e))
        rc = e.exit_code
    except BaseException as e:  # never a traceback out of a worker: one line, exit 1
        log(options["name"], f"worker {os.getpid()}: {unexpected(e)}")
    finally:
        try:
            if os.getppid() != supervisor:
                remove_orphaned_socket_files()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


# --- the supervisor -----------------------------------------------------------------------------


def _raise_stop(signum, frame):
    raise StopServing(signum)


class _Supervisor:
    def __init__(self, name, n, cpus):
        self.name = name
        self.n = n
        self.cpus = cpus
        self.pids = []  # in worker order
        self.live = {}  # pid -> index
        self.failed = 0  # workers that failed while stopping (a death before was said in its line already)
        self.inodes = {}  # index -> the inode of the worker's own listening socket (SO_REUSEPORT only)

    def await_release(self, index):
        """Wait until the listening socket of dead worker ``index`` is gone (bounded by ``RELEASE_BUDGET_S``)."""
        inode = self.inodes.pop(index, None)
        deadline = time.monotonic() + RELEASE_BUDGET_S
        while inode is not None and inode in tcp_socket_inodes() and time.monotonic() < deadline:
            time.sleep(0.002)

    def reap(self, pid, status, stopping):
        index = self.live.pop(pid, None)
        if index is None:
            return
        if stopping:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
                self.failed += 1
                log(self.name, f"worker {pid} (CPU {self.cpus[index]}) {describe_exit(status)} while stopping")
            return
        self.await_release(index)
        log(self.name, f"worker {pid} (CPU {self.cpus[index]}) {describe_exit(status)}; "
                       f"{len(self.live)} of {self.n} workers still serve")

    def reap_ready(self, stopping):
        """Reap every worker that has ended, without waiting."""
        while self.live:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.live.clear()
                return
            if pid == 0:
                return
            self.reap(pid, status, stopping)

    def signal_all(self, sig):
        for pid in list(self.live):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait_ready(self, ready_r):
        """Block until every worker announced itself; raise a one-line error if one ends first."""
        announced = set()
        buf = b""
        deadline = time.monotonic() + READY_BUDGET_S
        while len(announced) < self.n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SockbenchError(f"{self.n - len(announced)} of {self.n} workers were not ready within {READY_BUDGET_S:.0f} s")
            readable, _, _ = select.select([ready_r], [], [], min(left, 0.1))
            if readable:
                chunk = os.read(ready_r, 4096)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                announced.update(int(x) for x in lines if x)
            before = len(self.live)
            self.reap_ready(stopping=True)
            if len(self.live) < before:
                raise SockbenchError("a worker exited before it was ready (its line is above); stopping the others")

    def wait(self):
        """Wait for the workers; a stop signal raises ``StopServing``.  Returns when none is left.

        Looks every ``STOP_POLL_S`` rather than blocking in ``waitpid``: a stop signal that lands just before a
        blocking wait would be seen only when a worker dies."""
        while self.live:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.live.clear()
                return
            if pid == 0:
                time.sleep(STOP_POLL_S)
                continue
            self.reap(pid, status, stopping=False)

    def stop(self):
        """Pass SIGTERM to every worker, wait ``STOP_BUDGET_S`` for them, then kill the rest."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_BUDGET_S
        while self.live and time.monotonic() < deadline:
            self.reap_ready(stopping=True)
            if self.live:
                time.sleep(0.01)
        if self.live:
            log(self.name, f"{len(self.live)} worker(s) did not stop within {STOP_BUDGET_S:g} s; killing them")
            self.signal_all(signal.SIGKILL)
            for pid in list(self.live):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self.live.clear()


def serve_workers(n, name, listen, transport, host, port, path, backlog, serve, options, announcer):
    """Serve with ``n`` worker processes (see the module docstring); return the exit status.

    ``listen`` is ``contract.listen``; ``announcer(listener, extra)`` returns the
    ``announce()`` of the ready line with ``extra`` fields.  The listening
    sockets are closed (and a unix socket file left for the caller to remove)
    when this returns.
    """
    check_workers(n)
    cpus, warning = worker_cpus(n, os.sched_getaffinity(0))
    if warning:
        log(name, warning)
    listeners = _listeners(n, listen, transport, host, port, path, backlog)
    sup = _Supervisor(name, n, cpus)
    old = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}  # inherited: a worker stopped early exits 0
    ready_r, ready_w = os.pipe()
    supervisor = os.getpid()
    try:
        try:
            for i in range(n):
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r)
                    _run_worker(i, cpus[i], listeners[i], listeners, serve, options, ready_w, supervisor)
                sup.pids.append(pid)
                sup.live[pid] = i
        finally:
            os.close(ready_w)
        sup.wait_ready(ready_r)
        announcer(listeners[0], {"pid": sup.pids[0], "pids": list(sup.pids)})()
        if len(set(listeners)) > 1:  # a listener per worker (SO_REUSEPORT); a shared one outlives any worker
            sup.inodes = {i: os.fstat(sock.fileno()).st_ino for i, sock in enumerate(listeners)}
        for sock in set(listeners):
            sock.close()  # each worker holds its own now: a dead worker's socket leaves the group
        sup.wait()
        log(name, f"no worker is left of {n}; stopping")
        return 1
    except StopServing:
        pass
    except BaseException:
        sup.stop()
        raise
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        sup.stop()
        os.close(ready_r)
        for sock in set(listeners):
            sock.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 1 if sup.failed else 0
