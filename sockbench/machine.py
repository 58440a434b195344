"""What any figure needs to be reproduced: the CPU, the kernel, the Python, sockbench's version and commit,
and how the machine was tuned.

One owner of the machine metadata, recorded in every result and in a run's
``meta.json``.  The commit is read with git from the folder this package lives
in; ``git_dirty`` ignores ``results/``, which is data that a run may be
rewriting while it records the commit.

The tuning is what ``pyperf system show`` checks, read from the same files
and in its words where it has some: isolated CPUs (``isolcpus=``) and CPUs
without a periodic tick (``nohz_full=``) from ``/sys/devices/system/cpu``;
the cpufreq governor of each CPU (one name when they agree; ``None`` on a
machine without cpufreq, a guest usually); whether SMT is active; ASLR from
``/proc/sys/kernel/randomize_va_space`` as pyperf names it; and the load
average at the time.  A value that cannot be read is ``None``: unknown, not
"off".
"""

import os
import platform
import subprocess

from sockbench import __version__
from sockbench.errors import UsageError
from sockbench.units import parse_cpus

__all__ = ["machine_info", "git_commit", "tuning_info", "ASLR_NAMES"]

_CPU_SYSFS = "/sys/devices/system/cpu"

#: /proc/sys/kernel/randomize_va_space -> pyperf's words
ASLR_NAMES = {"0": "No randomization", "1": "Conservative randomization", "2": "Full randomization"}


def git_commit():
    """``(commit, dirty)`` of the checkout sockbench runs from, or ``(None, None)`` outside one."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)results"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_list(path):
    """A sysfs CPU list (``"2-3,5"``; empty or ``(null)`` when none) as a sorted list, None when unreadable."""
    text = _read(path)
    if text is None:
        return None
    if text in ("", "(null)"):
        return []
    try:
        return list(parse_cpus(text))
    except UsageError:
        return None


def _governor(cpus):
    """The cpufreq governor: one name when every CPU has the same, else ``{"cpu": name}``; None without cpufreq."""
    found = {}
    for cpu in cpus:
        name = _read(f"{_CPU_SYSFS}/cpu{cpu}/cpufreq/scaling_governor")
        if name:
            found[str(cpu)] = name
    if not found:
        return None
    names = set(found.values())
    return names.pop() if len(names) == 1 and len(found) == len(cpus) else found


def _smt():
    active = _read(f"{_CPU_SYSFS}/smt/active")
    return None if active not in ("0", "1") else active == "1"


def _loadavg():
    text = _read("/proc/loadavg")
    try:
        return [float(x) for x in text.split()[:3]]
    except (AttributeError, ValueError):
        return None


def tuning_info():
    """How the machine is tuned for benchmarking, as ``pyperf system show`` reports it (see the module doc)."""
    return {
        "isolcpus": _cpu_list(f"{_CPU_SYSFS}/isolated"),
        "nohz_full": _cpu_list(f"{_CPU_SYSFS}/nohz_full"),
        "governor": _governor(sorted(os.sched_getaffinity(0))),
        "smt": _smt(),
        "aslr": ASLR_NAMES.get(_read("/proc/sys/kernel/randomize_va_space")),
        "loadavg": _loadavg(),
    }


def machine_info():
    """The machine and the code, as the ``machine`` part of a result."""
    commit, dirty = git_commit()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "os": platform.system(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sockbench_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": platform.node(),
        **tuning_info(),
    }
