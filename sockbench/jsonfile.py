"""Write JSON so that a reader, a crash or a Ctrl-C never sees half a file.

Every result, ``meta.json``, plan and summary sockbench writes goes through
``write_json_atomic``: a temporary file in the same folder, then a rename,
which POSIX makes atomic.  Results are written the moment they are measured,
so this is what "nothing already measured is lost" rests on.
"""

import json
import os
import tempfile

__all__ = ["write_json_atomic"]


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
