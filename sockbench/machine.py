"""What any figure needs to be reproduced: the CPU, the kernel, the Python, sockbench's version and commit,
and how the machine was tuned.

One owner of the machine metadata, recorded in every result and in a run's
``meta.json``.  The commit is read with git from the folder this package lives
in, and only when that folder is sockbench's own checkout (its top level holds
the ``pyproject.toml`` of the project named sockbench, with this package in
it): a copy installed inside another repository (a virtual environment in a
project's tree) records no commit rather than that project's.
``git_dirty`` ignores ``results/``, which is data that a run may be rewriting
while it records the commit.

``versions`` names what runs the code and what built it: the installed
uvloop, hdrhistogram, numpy and pytest-benchmark (from their distribution
metadata: nothing is imported), and the Cython and C compiler that built the
extensions, as ``setup.py`` recorded them beside them (``ext/build_info.json``;
the build environment is gone by run time, so only the build can say).

The tuning is what ``pyperf system show`` checks, read from the same files
and in its words where it has some: isolated CPUs (``isolcpus=``) and CPUs
without a periodic tick (``nohz_full=``) from ``/sys/devices/system/cpu``;
the cpufreq governor of each CPU (one name when they agree; ``None`` on a
machine without cpufreq, a guest usually); whether SMT is active; ASLR from
``/proc/sys/kernel/randomize_va_space`` as pyperf names it; and the load
average at the time; and the kernel's DAMON monitors, whose samples hold a
CPU (``sockbench.damon``).  A value that cannot be read is ``None``: unknown,
not "off".
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess

from sockbench import __version__
from sockbench.damon import monitors as damon_monitors
from sockbench.errors import UsageError
from sockbench.units import parse_cpus

__all__ = ["machine_info", "git_commit", "own_checkout", "tuning_info", "versions_info", "ASLR_NAMES", "BUILD_INFO_FILE"]

#: what setup.py writes beside the extensions: the Cython and the compiler that built them
BUILD_INFO_FILE = "build_info.json"
#: the distributions whose versions every result records
_DISTRIBUTIONS = ("uvloop", "hdrhistogram", "numpy", "pytest-benchmark")

_CPU_SYSFS = "/sys/devices/system/cpu"

#: /proc/sys/kernel/randomize_va_space -> pyperf's words
ASLR_NAMES = {"0": "No randomization", "1": "Conservative randomization", "2": "Full randomization"}


def _own_checkout(here):
    """The top of the git work tree around ``here`` when it is sockbench's own (not a repository it is installed
    in), else None."""
    try:
        top = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        with open(os.path.join(top, "pyproject.toml"), encoding="utf-8") as f:
            project = f.read()
    except (OSError, subprocess.SubprocessError):
        return None
    inside = os.path.realpath(here).startswith(os.path.realpath(top) + os.sep)
    return top if inside and 'name = "sockbench"' in project else None


def own_checkout():
    """The top folder of sockbench's own git checkout that this package runs from, or None (an install)."""
    return _own_checkout(os.path.dirname(os.path.abspath(__file__)))


def git_commit():
    """``(commit, dirty)`` of sockbench's own checkout, or ``(None, None)`` when it is not run from one."""
    here = os.path.dirname(os.path.abspath(__file__))
    if _own_checkout(here) is None:
        return None, None
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
        "damon": damon_monitors(),
    }


def versions_info():
    """``{name: version}`` of the runtime libraries and of what built the extensions (see the module doc)."""
    out = {}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    # the extensions' folder, found without running its package (the core does not import sockbench.ext)
    spec = importlib.util.find_spec("sockbench.ext")
    folders = list(spec.submodule_search_locations or []) if spec else []
    build = {}
    for folder in folders:
        try:
            with open(os.path.join(folder, BUILD_INFO_FILE), encoding="utf-8") as f:
                build = json.load(f)
            break
        except (OSError, ValueError):
            continue
    out["cython"] = build.get("cython") if isinstance(build, dict) else None
    out["compiler"] = build.get("compiler") if isinstance(build, dict) else None
    return out


_STATIC = {}


def machine_info(cached=False):
    """The machine and the code, as the ``machine`` part of a result.

    ``cached``: the commit (three git calls) and the versions are read once per process and reused, for a
    command that records them with every round of a run (about 20 ms a round otherwise); the tuning and the
    load average are read each time.
    """
    if cached:
        if not _STATIC:
            _STATIC.update(commit=git_commit(), versions=versions_info())
        (commit, dirty), versions = _STATIC["commit"], _STATIC["versions"]
    else:
        (commit, dirty), versions = git_commit(), versions_info()
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
        "versions": versions,
    }
