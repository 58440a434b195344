"""What the calibration tools share: the reference C client, the CPU check, the machine line, the spread of repeats.

Every script here checks the harness or the servers against something
outside them, on a shared and noisy machine, so they all do the same few
things, and do them here once:

* **Build the reference C client** (``ref_client.c``) on first use, with gcc,
  into a cache under the temp dir keyed by the hash of its source and of the
  ``ext/`` headers it includes (``wire.h``, ``procfs.h`` and the generated
  ``protocols.h``): the client parses and builds messages with the very C code
  of the servers and the load generator, so a changed header rebuilds it.
* **Run it pinned** to the client CPU, bounded by a timeout, and read its one
  JSON line.
* **Check the CPUs**: the server and the client each get a CPU of their own,
  or the figures measure them stealing each other's time.
* **Say where it ran**: the one-line machine description every report
  prints, from ``sockbench.machine``.
* **Summarise repeats** as ``median [min..max]`` (``spread``, ``fmt_spread``).
"""

import glob
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile

from sockbench.errors import SockbenchError, UsageError
from sockbench.machine import machine_info

__all__ = [
    "REF_CLIENT_SOURCE",
    "ext_include_dir",
    "build_ref_client",
    "ref_client_command",
    "run_ref_client",
    "pinned",
    "check_cpus",
    "machine_line",
    "spread",
    "fmt_spread",
]

REF_CLIENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref_client.c")
_CFLAGS = ("-O2", "-Wall")


def ext_include_dir():
    """The folder of the ``ext/`` headers (the source tree, or the installed package)."""
    import sockbench.ext  # the package only (an empty __init__): no extension module is loaded

    inc = os.path.dirname(os.path.abspath(sockbench.ext.__file__))
    if not os.path.exists(os.path.join(inc, "protocols.h")):
        raise SockbenchError(f"{inc}/protocols.h is missing: the build generates it (pip install -e .)")
    return inc


def build_ref_client(src=REF_CLIENT_SOURCE):
    """Compile the reference C client once per version of its source and headers; return the binary's path."""
    inc = ext_include_dir()
    digest = hashlib.sha256(" ".join(_CFLAGS).encode())
    try:
        for path in [src] + sorted(glob.glob(os.path.join(inc, "*.h"))):
            with open(path, "rb") as f:
                digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    except OSError as e:
        raise SockbenchError(f"cannot read the reference client's source {e.filename}: {e.strerror}") from None
    cache = os.path.join(tempfile.gettempdir(), "sockbench-ref-client")
    exe = os.path.join(cache, f"ref_client-{digest.hexdigest()[:16]}")
    if os.path.exists(exe):
        return exe
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SockbenchError("the reference client needs a C compiler (gcc or cc on PATH)")
    os.makedirs(cache, exist_ok=True)
    tmp = f"{exe}.{os.getpid()}.tmp"
    r = subprocess.run([cc, *_CFLAGS, "-I", inc, "-o", tmp, src], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["no message"])[0]
        raise SockbenchError(f"compiling the reference client failed: {first}")
    os.replace(tmp, exe)
    return exe


def ref_client_command(exe, address, *, protocol="raw", conns=1, size=64, depth=1, warmup=1.0, duration=5.0,
                       server_pid=None, marks=False, stall=None, hold=False):
    """The command line that runs ``exe`` against ``address`` (see ``ref_client.c`` for the options)."""
    host, port = address
    cmd = [exe, "--protocol", protocol, "--conns", str(conns), "--size", str(size), "--depth", str(depth),
           "--warmup", repr(float(warmup)), "--duration", repr(float(duration))]
    if server_pid:
        cmd += ["--server-pid", str(server_pid)]
    if marks:
        cmd.append("--marks")
    if stall:
        cmd += ["--stall", repr(float(stall))]
    if hold:
        cmd.append("--hold")
    return cmd + [host, str(port)]


def pinned(cpu):
    """A ``preexec_fn`` that pins the child to ``cpu`` before it runs."""
    return lambda: os.sched_setaffinity(0, {cpu})


def run_ref_client(exe, address, cpu, *, what="", overrun_s=60, **options):
    """Run the client pinned to ``cpu`` until it reports; return its JSON result as a dict.

    ``options`` are ``ref_client_command``'s.  It stops by itself after
    warmup + duration; past ``overrun_s`` more it is killed.  Raises
    ``SockbenchError`` (with ``what`` naming the run) if it overran or could
    not run; a run with errors returns normally, its ``errors`` say so.
    """
    cmd = ref_client_command(exe, address, **options)
    where = f" {what}" if what else ""
    timeout = options.get("warmup", 1.0) + options.get("duration", 5.0) + overrun_s
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pinned(cpu))
    except subprocess.TimeoutExpired:
        raise SockbenchError(f"the load client overran its time{where}") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise SockbenchError(f"load client failed{where}: {why}")
    return json.loads(r.stdout.splitlines()[-1])


def check_cpus(server_cpu, client_cpu):
    """A ``UsageError`` unless the server and the client get two different CPUs this process may use."""
    allowed = os.sched_getaffinity(0)
    for what, cpu in (("--server-cpu", server_cpu), ("--client-cpu", client_cpu)):
        if cpu not in allowed:
            raise UsageError(f"{what} {cpu} is not a CPU this process may use; allowed: {sorted(allowed)}")
    if server_cpu == client_cpu:
        raise UsageError("--server-cpu and --client-cpu must differ: the point is that they do not share a core")


def machine_line(info=None):
    """``"host x86_64 2 CPUs, Linux 6.1.0, Python 3.11.2"``: where the figures were measured."""
    info = info or machine_info()
    return (f"{info['hostname']} {platform.machine()} {info['cores']} CPUs, Linux {info['kernel']}, "
            f"Python {info['python']}")


def spread(values):
    """``{"median", "min", "max", "n"}`` of the values that were measured (None and NaN left out), or None."""
    xs = [v for v in values if v is not None and v == v]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(st, spec=",.0f"):
    """``"1,234 [1,200..1,250]"`` with ``spec`` as a format spec; ``"-"`` when nothing was measured."""
    if st is None:
        return "-"
    return f"{st['median']:{spec}} [{st['min']:{spec}}..{st['max']:{spec}}]"
