"""Start child processes (servers, load processes) so that a Ctrl-C can never orphan one.

Every process sockbench starts is stopped by its pid; these two helpers make
sure the pid is always known to the caller before a signal can unwind it.
"""

import contextlib
import os
import signal

__all__ = ["HELD_SIGNALS", "held_signals", "child_setup"]

#: the signals that stop a run (Ctrl-C, and the runner's SIGTERM after its grace)
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


def child_setup(cpus=None):
    """A ``preexec_fn``: the child takes SIGINT and SIGTERM again (see ``held_signals``), pinned to ``cpus``."""

    def setup():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup
