"""Write JSON so that a reader, a crash or a Ctrl-C never sees half a file.

Every result, ``meta.json``, plan and summary sockbench writes goes through
``write_json_atomic``: a temporary file in the same folder, then a rename,
which POSIX makes atomic.  Results are written the moment they are measured,
so this is what "nothing already measured is lost" rests on; and a command
calls ``check_writable`` on every output path before it measures anything,
so that a run is never made only to find its result has nowhere to go.
"""

import json
import os
import tempfile

from sockbench.errors import SockbenchError

__all__ = ["write_json_atomic", "check_writable"]


def write_json_atomic(path, obj):
    """Write ``obj`` as indented JSON with sorted keys to ``path``, atomically; creates the folder."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable(path, option="the output path"):
    """Make sure a file can be written at ``path`` (its folder is created), or raise one clear line.

    It writes and removes a temporary file beside ``path``: the only test that
    also catches a read-only or full file system, which permission bits do not.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise SockbenchError(f"cannot write {option} {path}: it is a folder; name a file", exit_code=2)
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise SockbenchError(f"cannot write {option} {path}: {e.strerror or e}; choose another path", exit_code=2) from None
