"""Child processes' lifetimes: none is orphaned by a signal, and none outlives the process that started it.

Every process sockbench starts (servers, a supervisor's workers, load
processes, the ``sockbench run`` suite, the calibration tools' helpers) is
stopped by its pid by whoever started it.  Three things make sure that
happens however the parent ends:

* ``held_signals``: the pid is known to the caller before a Ctrl-C can unwind it.
* ``child_setup`` (a ``preexec_fn``) and ``die_with_parent`` (a forked child):
  the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), so that a
  parent that is SIGKILLed, or crashes, still takes its children with it.
  The kernel sends it when the *thread* that started the child ends, so a
  child must be started from a thread that outlives it (the main thread, or
  a task's thread that stops its children before it returns); and a parent
  that died before the call is caught by comparing ``getppid()``.
* ``stop_signals``: SIGTERM (what ``timeout``, systemd and a CI runner send)
  unwinds a command as Ctrl-C does, as ``Stopped``, which says which signal came.
"""

import contextlib
import os
import signal

__all__ = ["HELD_SIGNALS", "held_signals", "child_setup", "die_with_parent", "Stopped", "signal_of", "stop_signals"]

#: the signals that stop a run (Ctrl-C, and the runner's SIGTERM after its grace)
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: prctl(2)'s option number for the parent-death signal (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_prctl = []


@contextlib.contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM while a child process is started and its handle stored.

    A KeyboardInterrupt raised between the fork and the moment the caller
    holds the ``Popen`` object leaves a child whose pid nobody knows: an
    orphan server that runs forever (``sockbench run``'s Ctrl-C lands right
    after a round, which is when the next server starts).  Held, the signal
    waits; it is raised when the block ends, once the caller can stop the
    child.  Start the child with ``preexec_fn=child_setup(...)``: it must not
    inherit the held mask.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _load_prctl():
    """libc's ``prctl``, looked up once, in the parent (a forked child should only call it)."""
    if not _prctl:
        import ctypes  # deferred: only the processes that start children need it, not every `sockbench serve`

        f = ctypes.CDLL(None, use_errno=True).prctl
        f.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        f.restype = ctypes.c_int
        _prctl.append(f)
    return _prctl[0]


def die_with_parent(parent_pid, sig=signal.SIGTERM, prctl=None):
    """In a child: receive ``sig`` when the parent (``parent_pid``) dies, or now, if it has died already.

    A parent that died between the fork and this call is caught by
    ``getppid()``, which then names another process (init, or a subreaper).
    """
    (prctl or _load_prctl())(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def child_setup(cpus=None, death_signal=signal.SIGTERM):
    """A ``preexec_fn``: the child dies with this process, takes the stop signals again, pinned to ``cpus``.

    ``death_signal`` is what the child receives when this process (the
    thread calling Popen) dies: SIGTERM lets a server stop cleanly (its unix
    socket's folder goes with it); a child with nothing to clean up takes
    SIGKILL.  SIGINT and SIGTERM are unblocked (see ``held_signals``) and
    back at their default: a shell that started sockbench in the background
    made it ignore SIGINT, but sockbench's own children must stop when it
    asks them to.
    """
    parent = os.getpid()
    prctl = _load_prctl()

    def setup():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        for sig in HELD_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        die_with_parent(parent, death_signal, prctl)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class Stopped(KeyboardInterrupt):
    """A stop signal arrived (SIGINT or SIGTERM): unwind as for Ctrl-C; ``signum`` says which."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


def signal_of(exc):
    """The stop signal a ``KeyboardInterrupt`` stands for: its ``signum``, SIGINT for Python's own Ctrl-C."""
    return getattr(exc, "signum", signal.SIGINT)


@contextlib.contextmanager
def stop_signals():
    """While the block runs, SIGINT and SIGTERM raise ``Stopped`` (main thread only).

    A signal ignored when the block starts (a shell's background job ignores
    SIGINT) stays ignored.  The previous handlers come back afterwards.
    """

    def stop(signum, frame):
        raise Stopped(signum)

    old = {}
    try:
        for sig in HELD_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                old[sig] = signal.signal(sig, stop)
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
