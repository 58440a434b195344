"""Whether this machine runs sockbench's io_uring loops, and if not, why, in one line.

Why it is built this way: io_uring can be missing (a kernel before 5.1),
switched off (``kernel.io_uring_disabled``), refused by a seccomp filter (the
default profile of several container runtimes) or too old for what the loops
use (provided buffer rings, 5.19).  Each must read as one line that says
what to do, before a server or a load starts, never as an ``OSError`` half-way
through a run.  So the kernel itself is asked, once per process, through a
throwaway ring (``sockbench.ext.uringprobe``), and the answer is worded here
for both users: the ``cython-uring`` server (the registry's
``kernel_check``) and ``sockbench load --engine uring``.

A kernel without multishot receive (before 6.0) still runs both loops, with
each receive armed once; ``SOCKBENCH_URING_MULTISHOT=0`` asks for that on any
kernel, so that the fallback can be checked where the kernel has multishot.
Likewise the loops' quiet sends (a send that sent everything posts no
completion) are used where the probe saw the kernel behave so, and
``SOCKBENCH_URING_QUIET=0`` gives every send its completion;
``SOCKBENCH_URING_DEFER=0`` sets the ring up without DEFER_TASKRUN, as a
kernel before 6.1 does (the kernel's completion work then runs at any system
call, not only inside io_uring_enter).
"""

import errno
import functools
import os

__all__ = ["kernel_support", "availability", "refusal", "multishot_wanted", "quiet_sends_wanted", "defer_wanted",
           "DISABLED_SYSCTL", "MULTISHOT_ENV", "QUIET_ENV", "DEFER_ENV"]

#: the sysctl that turns io_uring off (0: on; 1: for kernel.io_uring_group only; 2: off)
DISABLED_SYSCTL = "/proc/sys/kernel/io_uring_disabled"
MULTISHOT_ENV = "SOCKBENCH_URING_MULTISHOT"
QUIET_ENV = "SOCKBENCH_URING_QUIET"
DEFER_ENV = "SOCKBENCH_URING_DEFER"
_BUILD_HINT = "pip install -e .  (needs a C compiler and Cython)"


def _sysctl_disabled():
    try:
        with open(DISABLED_SYSCTL) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def refusal(err):
    """Why io_uring_setup answered ``err``, in one line that says what to do."""
    if err == errno.ENOSYS:
        return "no io_uring in this kernel (io_uring_setup: ENOSYS; it came in Linux 5.1)"
    if err == errno.EPERM:
        disabled = _sysctl_disabled()
        if disabled == 2:
            return "io_uring disabled (sysctl kernel.io_uring_disabled = 2; set it to 0 to use io_uring)"
        if disabled == 1:
            return ("io_uring restricted (sysctl kernel.io_uring_disabled = 1: only the group in "
                    "kernel.io_uring_group may use it, and this process is not in it)")
        return ("io_uring refused (io_uring_setup: EPERM: a seccomp filter, such as a container runtime's "
                "default profile, or a security module forbids it)")
    if err == errno.ENOMEM:
        return "io_uring refused (io_uring_setup: ENOMEM: raise the locked-memory limit, ulimit -l)"
    return f"io_uring refused (io_uring_setup: {errno.errorcode.get(err, err)}: {os.strerror(err)})"


@functools.cache
def kernel_support():
    """``(ok, reason, probe)``: whether this kernel runs the io_uring loops, why not, and what it offers.

    ``probe`` is ``sockbench.ext.uringprobe.probe()``'s dict (None when the
    extension is not built).  Asked once per process: the answer is the
    kernel's and does not change while it runs.
    """
    try:
        # deferred: the extension is needed when io_uring is asked about, not to list the servers' names
        from sockbench.ext import uringprobe
    except ImportError:
        return False, f"not built (build it with: {_BUILD_HINT})", None
    p = uringprobe.probe()
    if p["errno"]:
        return False, refusal(p["errno"]), p
    if not (p["buffer_ring"] and p["ext_arg"]):
        return False, "kernel too old (io_uring has no provided buffer rings before Linux 5.19)", p
    if not p["multishot_recv"]:
        return True, "available (single-shot receives: no multishot receive before Linux 6.0)", p
    return True, "available", p


def availability():
    """``(ok, reason)``: ``kernel_support`` without the probe's details (the registry's ``kernel_check``)."""
    ok, why, _ = kernel_support()
    return ok, why


def _off(name):
    return os.environ.get(name, "").strip().lower() in ("0", "no", "false", "off")


def multishot_wanted(probe):
    """Multishot receives unless the kernel lacks them or ``SOCKBENCH_URING_MULTISHOT=0`` asks for single-shot."""
    return bool(probe and probe["multishot_recv"]) and not _off(MULTISHOT_ENV)


def quiet_sends_wanted(probe):
    """Quiet sends (no completion for a send that sent everything; ext/uring.h) unless the probe found the kernel
    does not behave so, or ``SOCKBENCH_URING_QUIET=0`` asks for a completion per send."""
    return bool(probe and probe.get("quiet_send")) and not _off(QUIET_ENV)


def defer_wanted():
    """DEFER_TASKRUN where the kernel has it, unless ``SOCKBENCH_URING_DEFER=0`` asks for a ring without it."""
    return not _off(DEFER_ENV)
