"""What the calibration tools share: the reference C client, the CPU check, the machine line, the spread of repeats.

Every script here checks the harness or the servers against something
outside them, on a shared and noisy machine, so they all do the same few
things, and do them here once:

* **Build the reference C client** (``ref_client.c``; its TLS build,
  ``-DREF_TLS`` linked with OpenSSL, a binary apart) on first use, with gcc,
  into a cache under the temp dir keyed by the hash of its source and of the
  ``ext/`` headers it includes (``wire.h``, ``procfs.h`` and the generated
  ``protocols.h``): the client parses and builds messages with the very C code
  of the servers and the load generator, so a changed header rebuilds it.
* **Run it pinned** to the client CPU, bounded by a timeout, and read its one
  JSON line once, here, into a ``RefResult``.  Where its figures are the same
  things as a load result's parts they are the schema's types
  (``Throughput``, ``Latency``, ``Client``, ``Errors``), so a script reads
  ``ref.errors.total`` as it reads ``result.errors.total``.
* **Check the CPUs**: the server and the client each get a CPU of their own,
  or the figures measure them stealing each other's time.
* **Say where it ran**: the one-line machine description every report
  prints, from ``sockbench.machine`` read through the schema's ``Machine``.
* **Summarise repeats** as ``median [min..max]`` (``spread`` gives a
  ``Spread``, ``fmt_spread`` prints it).
* **Name figures by their fields**: each script keeps its figures in small
  dataclasses, writes its ``--json`` output from them with
  ``dataclasses.asdict``, and names a metric (a target's, a table's column)
  through ``field_names`` of its record, so a renamed field fails at import
  rather than leaving a stale key behind.
"""

import glob
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, fields
from types import SimpleNamespace

from sockbench.bench.schema import Client, CpuPerMsg, Errors, Latency, Machine, Throughput
from sockbench.children import child_setup
from sockbench.errors import SockbenchError, UsageError
from sockbench.machine import machine_info
from sockbench.servers.tls import BUILD_HINT as TLS_BUILD_HINT

__all__ = [
    "REF_CLIENT_SOURCE",
    "RefServerCpu",
    "RefResult",
    "Spread",
    "ext_include_dir",
    "build_ref_client",
    "ref_client_command",
    "run_ref_client",
    "pinned",
    "free_port",
    "check_cpus",
    "machine_line",
    "spread",
    "fmt_spread",
    "field_names",
]

REF_CLIENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref_client.c")
_CFLAGS = ("-O2", "-Wall")


# --- the reference client's JSON line, read once ----------------------------------------------------


@dataclass(frozen=True)
class RefServerCpu:
    """The server's CPU over the client's window, read from /proc by the client itself (``--server-pid``).

    ``user_s`` and ``sys_s`` are its utime and stime (the kernel's tick
    sampling), ``runtime_s`` the exact scheduler runtime summed over its
    threads; each is None where /proc could not be read.
    """

    user_s: float | None = None
    sys_s: float | None = None
    runtime_s: float | None = None


@dataclass(frozen=True)
class RefResult:
    """One run of the reference C client: its JSON line (see ``ref_client.c``), typed.

    The counts (``msgs``, ``bytes``, ``wire_bytes``, ``total_msgs``) are as
    printed; ``window_s`` is the measured window.  ``throughput`` is over that
    window (None figures without one).  ``latency_us`` holds the round trips'
    ``count``, ``mean`` and ``max`` (the client keeps no histogram, so no
    percentiles), and ``latency_min_us`` their minimum, which the schema's
    latency has no place for.  ``client`` is the client's own CPU over the
    window (getrusage).  ``server`` is None unless ``--server-pid`` was given.
    ``errors.by_kind`` uses the client's kinds (mismatch, protocol, eof, io,
    stall), ``error`` the first one in words.
    """

    protocol: str
    conns: int
    size: int
    depth: int
    msgs: int
    bytes: int
    wire_bytes: int
    total_msgs: int
    window_s: float
    throughput: Throughput
    latency_us: Latency
    latency_min_us: float
    client: Client
    server: RefServerCpu | None
    errors: Errors
    error: str
    conns_alive: int
    stuck: int
    #: ``--tls``: what the first connection negotiated (``{"version", "cipher"}``); None in the clear
    tls: dict | None = None

    @classmethod
    def from_json(cls, d):
        """Read the client's JSON object; a missing or malformed key is one ``SockbenchError`` line."""
        try:
            msgs, window = d["msgs"], d["window_s"]
            user, sys_ = d["user_s"], d["sys_s"]
            server = d["server"]
            by_kind = dict(d["errors"])

            def per_s(count):
                return count / window if window else None

            return cls(
                protocol=d["protocol"],
                conns=d["conns"],
                size=d["size"],
                depth=d["depth"],
                msgs=msgs,
                bytes=d["bytes"],
                wire_bytes=d["wire_bytes"],
                total_msgs=d["total_msgs"],
                window_s=window,
                throughput=Throughput(msgs_per_s=per_s(msgs), bytes_per_s=per_s(d["bytes"]),
                                      wire_bytes_per_s=per_s(d["wire_bytes"])),
                latency_us=Latency(count=msgs, mean=d["rtt_mean_us"], max=d["rtt_max_us"]),
                latency_min_us=d["rtt_min_us"],
                client=Client(cpu_util=(user + sys_) / window if window else None, user_s=user, sys_s=sys_,
                              us_per_msg=CpuPerMsg.of(user, sys_, msgs)),
                server=None if server is None else RefServerCpu(
                    user_s=server["user_s"], sys_s=server["sys_s"], runtime_s=server["runtime_s"]),
                errors=Errors(total=sum(by_kind.values()), by_kind=by_kind),
                error=d["error"],
                conns_alive=d["conns_alive"],
                stuck=d["stuck"],
                tls=d.get("tls"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SockbenchError(f"the reference client's result is malformed ({e!r})") from None

    @classmethod
    def parse(cls, line):
        """Read the client's JSON line (``from_json``); anything that is not one is one ``SockbenchError`` line."""
        try:
            d = json.loads(line)
        except ValueError:
            raise SockbenchError(f"the reference client printed no JSON result: {line[:200]!r}") from None
        if not isinstance(d, dict):
            raise SockbenchError(f"the reference client printed no JSON result: {line[:200]!r}")
        return cls.from_json(d)


def ext_include_dir():
    """The folder of the ``ext/`` headers (the source tree, or the installed package)."""
    import sockbench.ext  # the package only (an empty __init__): no extension module is loaded

    inc = os.path.dirname(os.path.abspath(sockbench.ext.__file__))
    if not os.path.exists(os.path.join(inc, "protocols.h")):
        raise SockbenchError(f"{inc}/protocols.h is missing: the build generates it (pip install -e .)")
    return inc


#: what the TLS build adds: the switch that compiles its TLS in, and OpenSSL
_TLS_FLAGS = ("-DREF_TLS",)
_TLS_LIBS = ("-lssl", "-lcrypto")


def build_ref_client(src=REF_CLIENT_SOURCE, tls=False):
    """Compile the reference C client once per version of its source and headers; return the binary's path.

    ``tls``: the binary with ``--tls`` (``-DREF_TLS``, linked with OpenSSL), a binary of its own; where OpenSSL's
    headers are missing, a one-line ``SockbenchError`` says what to install.
    """
    inc = ext_include_dir()
    flags = _CFLAGS + (_TLS_FLAGS if tls else ())
    digest = hashlib.sha256(" ".join(flags).encode())
    try:
        for path in [src] + sorted(glob.glob(os.path.join(inc, "*.h"))):
            with open(path, "rb") as f:
                digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    except OSError as e:
        raise SockbenchError(f"cannot read the reference client's source {e.filename}: {e.strerror}") from None
    cache = os.path.join(tempfile.gettempdir(), "sockbench-ref-client")
    exe = os.path.join(cache, f"ref_client{'_tls' if tls else ''}-{digest.hexdigest()[:16]}")
    if os.path.exists(exe):
        return exe
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SockbenchError("the reference client needs a C compiler (gcc or cc on PATH)")
    os.makedirs(cache, exist_ok=True)
    tmp = f"{exe}.{os.getpid()}.tmp"
    r = subprocess.run([cc, *flags, "-I", inc, "-o", tmp, src, *(_TLS_LIBS if tls else ())], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["no message"])[0]
        if tls and "openssl" in r.stderr:
            raise SockbenchError(f"the reference client's TLS needs OpenSSL's headers: {TLS_BUILD_HINT} ({first})")
        raise SockbenchError(f"compiling the reference client failed: {first}")
    os.replace(tmp, exe)
    return exe


def ref_client_command(exe, address, *, protocol="raw", conns=1, size=64, depth=1, warmup=1.0, duration=5.0,
                       server_pid=None, marks=False, stall=None, hold=False, tls=None):
    """The command line that runs ``exe`` against ``address`` (see ``ref_client.c`` for the options).

    ``tls``: a ``servers.tls.TlsConfig`` (the binary of ``build_ref_client(tls=True)``): its version and cipher.
    """
    host, port = address
    cmd = [exe, "--protocol", protocol, "--conns", str(conns), "--size", str(size), "--depth", str(depth),
           "--warmup", repr(float(warmup)), "--duration", repr(float(duration))]
    if tls is not None:
        cmd += ["--tls", "--tls-version", tls.version] + (["--tls-cipher", tls.cipher] if tls.cipher else [])
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
    """A ``preexec_fn`` that pins the child to ``cpu`` and makes it die with this process (``children.child_setup``)."""
    return child_setup({cpu})


def run_ref_client(exe, address, cpu, *, what="", overrun_s=60, **options):
    """Run the client pinned to ``cpu`` until it reports; return its result, a ``RefResult``.

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
    return RefResult.parse((r.stdout.splitlines() or [""])[-1])


def free_port(kind=socket.SOCK_STREAM):
    """A loopback port free now for ``kind`` (stream or datagram), for a tool that must name its port up front
    (sockperf's server, a Dask scheduler)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    m = Machine.from_json(info or machine_info())
    return f"{m.hostname} {platform.machine()} {m.cores} CPUs, Linux {m.kernel}, Python {m.python}"


@dataclass(frozen=True)
class Spread:
    """The median, the extremes and the number of the values measured over repeats or rounds."""

    median: float
    min: float
    max: float
    n: int


def spread(values):
    """The ``Spread`` of the values that were measured (None and NaN left out), or None."""
    xs = [v for v in values if v is not None and v == v]
    if not xs:
        return None
    return Spread(median=statistics.median(xs), min=min(xs), max=max(xs), n=len(xs))


def fmt_spread(st, spec=",.0f"):
    """``"1,234 [1,200..1,250]"`` with ``spec`` as a format spec; ``"-"`` when nothing was measured."""
    if st is None:
        return "-"
    return f"{st.median:{spec}} [{st.min:{spec}}..{st.max:{spec}}]"


def field_names(cls):
    """A namespace whose attribute ``x`` is ``"x"``, for every field of the dataclass ``cls``.

    A script names a metric of its records (a target's metric, a table's
    columns) as ``F.msgs_per_s`` with ``F = field_names(Record)``: the name is
    still the public key, but a field renamed without its users is an
    ``AttributeError`` at import, not a stale key.
    """
    return SimpleNamespace(**{f.name: f.name for f in fields(cls)})
