"""The kernel's DAMON memory monitors: which are on, and pausing them for the length of a run.

Why this exists: DAMON (``kdamond`` kernel threads, configured under
``/sys/kernel/mm/damon/admin``) samples memory access on a timer, and a VM
image may run it all the time to hand unused memory back to its host.  A
sample holds a CPU inside the kernel, where a waking server cannot take it
back.  Traced on the 2-CPU development VM (ftrace ``sched_switch``, one
kdamond sampling physical memory every 500 ms): 0.6-0.9 ms every 512 ms and
4-14 ms every few seconds, mostly on the server's CPU, the one that sleeps
while the client polls.  At half load the messages due meanwhile wait: 12
one-second open-loop rounds of ``cython`` read a p99 of 157 µs with a
spread (MAD) of 64% of it; with DAMON off, 50 µs and 6%.  So a machine
running DAMON measures DAMON as much as its servers in every tail, and the
4-14 ms stretches cost a 0.3 s closed-loop round up to 5% of its messages.

The state files are the interface the kernel documents
(``Documentation/admin-guide/mm/damon/usage.rst``): ``kdamonds/N/state``
reads ``on`` or ``off`` and takes ``on``/``off``; ``pid`` is the thread
while it runs; the sampling interval is the first context's
``monitoring_attrs/intervals/sample_us``.  ``paused`` writes ``off`` to
each monitor that is on and ``on`` again when the run ends, however it ends
short of SIGKILL (its warning says how to restart them by hand).  Turning a
monitor on again starts it with the parameters it had: the sysfs tree keeps
them.  Only root may write them; the monitors of DAMON's own modules
(``damon_reclaim``, ``damon_lru_sort``) are not under ``admin`` and are
neither listed nor paused.
"""

import contextlib
import os
import signal
import threading

from sockbench.errors import UsageError

__all__ = ["ADMIN", "monitors", "running", "note", "paused", "restart_hint"]

#: the kernel's sysfs interface of DAMON
ADMIN = "/sys/kernel/mm/damon/admin"


def _read(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def monitors(admin=ADMIN):
    """``[{"kdamond": N, "state": "on"|"off", "pid": P or None, "sample_us": S or None}]``, one per kdamond
    configured under ``admin``; ``[]`` where DAMON has none, ``None`` where the kernel has no DAMON sysfs."""
    root = os.path.join(admin, "kdamonds")
    count = _int(_read(os.path.join(root, "nr_kdamonds")))
    if count is None:
        return None
    out = []
    for n in range(count):
        folder = os.path.join(root, str(n))
        state = _read(os.path.join(folder, "state"))
        out.append({
            "kdamond": n,
            "state": state,
            "pid": _int(_read(os.path.join(folder, "pid"))) if state == "on" else None,
            "sample_us": _int(_read(os.path.join(folder, "contexts", "0", "monitoring_attrs", "intervals",
                                                 "sample_us"))),
        })
    return out


def running(found):
    """The monitors of ``found`` (``monitors()``, or a result's ``machine.damon``) that are on."""
    return [m for m in (found or []) if isinstance(m, dict) and m.get("state") == "on"]


def note(found):
    """The sentence a run prints, and its report shows, while a DAMON monitor is on ("" when none is)."""
    on = running(found)
    if not on:
        return ""
    which = ", ".join(f"kdamond {m.get('kdamond')}" + (f" sampling every {m['sample_us'] / 1000:g} ms"
                                                       if m.get("sample_us") else "") for m in on)
    return (f"the kernel's DAMON is on ({which}): each sample holds a CPU for up to a few ms and a server waiting "
            f"for it answers late, so open-loop tails (p99) measure DAMON as much as the servers; as root, "
            f"--pause-damon turns it off for the length of a run")


def _state_file(n, admin):
    return os.path.join(admin, "kdamonds", str(n), "state")


def restart_hint(numbers, admin=ADMIN):
    """The shell command that turns the monitors ``numbers`` on again."""
    return "; ".join(f"echo on > {_state_file(n, admin)}" for n in numbers)


def _write(path, value):
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def paused(enabled=True, admin=ADMIN, log=None):
    """Turn every DAMON monitor that is on off for the ``with`` block, and on again after it; yields the
    numbers paused (``[]`` when none was on or ``enabled`` is false).

    A monitor that cannot be turned off is one ``UsageError`` (exit 2), with the ones already paused turned on
    again first.  ``log(line)`` is told what was paused and how to restart it by hand.
    """
    if not enabled:
        yield []
        return
    found = monitors(admin) or []
    done = []
    # SIGTERM ends the command through the ``finally`` below, not around it (the measuring installs its own)
    old_term = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        old_term = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        for m in found:
            if m["state"] != "on":
                continue
            path = _state_file(m["kdamond"], admin)
            try:
                _write(path, "off")
            except OSError as e:
                raise UsageError(f"--pause-damon cannot write {path} ({e.strerror or e}); run as root, or leave "
                                 f"--pause-damon out") from None
            done.append(m["kdamond"])
        if log is not None:
            if done:
                log(f"paused the kernel's DAMON monitor{'s' if len(done) > 1 else ''} "
                    f"{', '.join(map(str, done))} for this run; if it is killed, restart "
                    f"{'them' if len(done) > 1 else 'it'} with: {restart_hint(done, admin)}")
            else:
                log("--pause-damon: no DAMON monitor is on here; nothing to pause")
        yield done
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        failed = []
        for n in done:
            try:
                _write(_state_file(n, admin), "on")
            except OSError:
                failed.append(n)
        if failed and log is not None:
            log(f"could not turn DAMON monitor{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} on "
                f"again; do it with: {restart_hint(failed, admin)}")
