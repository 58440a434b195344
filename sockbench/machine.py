"""What any figure needs to be reproduced: the CPU, the kernel, the Python, sockbench's version and commit.

One owner of the machine metadata, recorded in every result and in a run's
``meta.json``.  The commit is read with git from the folder this package lives
in; ``git_dirty`` ignores ``results/``, which is data that a run may be
rewriting while it records the commit.
"""

import os
import platform
import subprocess

from sockbench import __version__

__all__ = ["machine_info", "git_commit"]


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
    }
