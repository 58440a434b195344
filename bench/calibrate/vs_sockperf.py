"""The harness's round trip against sockperf's: does the harness add latency that sockperf does not?

Usage::

    python -m sockbench.bench.calibrate.vs_sockperf [--rounds 3] [--duration 3] [--transports udp,tcp] [--json out.json]

Why it is built this way: sockperf (the Debian package, 3.7) is the outside
reference for UDP and TCP latency, with its own ping-pong server and client.
The claim to check is relative: at 64 B, one flow, one message in flight,
the harness's p50 round trip against the ``cython`` server is at most
``TARGET_RATIO`` (1.15) times sockperf's p50 round trip between its own
client and server, over UDP and over TCP (``sockperf --tcp``, against the
cython stream server).  So both pairs run on the same two pinned CPUs (server
on one, client on the other), in alternation (sockperf then harness, harness
then sockperf, ...) for several rounds, and the ratio is taken per round and
summarised by its median and spread: this machine is shared and a lone
figure means little.  sockperf is asked for round-trip figures
(``--full-rtt``; without it it prints half the round trip), and its text
output is parsed by ``parse_sockperf`` (the unit tests feed it fixture text).
When sockperf is not installed the script says so in one line (exit 2) and
the tests that need it skip with that reason.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import Spread, check_cpus, fmt_spread, free_port, pinned, spread
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.errors import SockbenchError
from sockbench.jsonfile import write_json_atomic
from sockbench.machine import machine_info

__all__ = ["TARGET_RATIO", "SIZE", "SockperfFigures", "Round", "TransportSummary", "find_sockperf", "parse_sockperf",
           "run_sockperf", "run_harness", "compare", "main"]

#: the harness's p50 round trip may be at most this many times sockperf's
TARGET_RATIO = 1.15
#: bytes per message (sockperf's own header, 14 B, fits)
SIZE = 64
SERVER = "cython"
TRANSPORTS = ("udp", "tcp")
INSTALL_HINT = "apt-get install -y sockperf"
#: how long sockperf's server gets to bind before its client starts
SERVER_START_S = 0.3


@dataclass(frozen=True)
class SockperfFigures:
    """What one sockperf ping-pong printed: round trips in µs, and its own loss counts."""

    p50_rtt_us: float
    avg_rtt_us: float
    max_rtt_us: float | None
    observations: int
    dropped: int
    duplicated: int
    out_of_order: int


@dataclass(frozen=True)
class Round:
    transport: str
    sockperf_p50_us: float
    harness_p50_us: float
    ratio: float


@dataclass(frozen=True)
class TransportSummary:
    transport: str
    sockperf_p50_us: Spread | None
    harness_p50_us: Spread | None
    ratio: Spread | None
    within_target: bool | None


def find_sockperf():
    """The sockperf executable, or a one-line ``SockbenchError`` (exit 2) saying how to install it."""
    exe = shutil.which("sockperf")
    if exe is None:
        raise SockbenchError(f"sockperf is not installed; install it with: {INSTALL_HINT}", exit_code=2)
    return exe


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def parse_sockperf(text):
    """``SockperfFigures`` from a sockperf ping-pong's output; a ``SockbenchError`` if it has no figures.

    The figures are round trips when sockperf ran with ``--full-rtt``
    (``avg-rtt``); otherwise it printed half round trips (``avg-latency``),
    doubled here.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # its colour codes
    avg = re.search(r"avg-(rtt|latency)=" + _NUM, text)
    p50 = re.search(r"percentile 50\.000 =\s*" + _NUM, text)
    if avg is None or p50 is None:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise SockbenchError(f"sockperf printed no latency figures: {last}")
    scale = 1.0 if avg.group(1) == "rtt" else 2.0
    top = re.search(r"<MAX> observation =\s*" + _NUM, text)
    obs = re.search(r"Total ([0-9]+) observations", text)
    counts = re.search(r"# dropped messages = ([0-9]+); # duplicated messages = ([0-9]+); "
                       r"# out-of-order messages = ([0-9]+)", text)
    return SockperfFigures(
        p50_rtt_us=float(p50.group(1)) * scale,
        avg_rtt_us=float(avg.group(2)) * scale,
        max_rtt_us=float(top.group(1)) * scale if top else None,
        observations=int(obs.group(1)) if obs else 0,
        dropped=int(counts.group(1)) if counts else 0,
        duplicated=int(counts.group(2)) if counts else 0,
        out_of_order=int(counts.group(3)) if counts else 0,
    )


def run_sockperf(exe, transport, duration, server_cpu, client_cpu, size=SIZE):
    """sockperf's server and its ping-pong client, pinned apart; the client's ``SockperfFigures``."""
    tcp = ["--tcp"] if transport == "tcp" else []
    port = free_port(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    server = subprocess.Popen([exe, "sr", "-i", "127.0.0.1", "-p", str(port), *tcp], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=pinned(server_cpu))
    try:
        time.sleep(SERVER_START_S)
        if server.poll() is not None:
            raise SockbenchError(f"sockperf's server exited at once (status {server.returncode})")
        cmd = [exe, "pp", "-i", "127.0.0.1", "-p", str(port), "-m", str(size), "-t", f"{max(1, round(duration))}",
               "--full-rtt", *tcp]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, preexec_fn=pinned(client_cpu))
        except subprocess.TimeoutExpired:
            raise SockbenchError("sockperf's client overran its time") from None
        if r.returncode != 0:
            raise SockbenchError(f"sockperf's client failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return parse_sockperf(r.stdout + r.stderr)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()


def run_harness(transport, warmup, duration, server_cpu, client_cpu, size=SIZE):
    """The harness at one flow, one in flight, against the cython server: its p50 round trip in µs."""
    spec = LoadSpec(server=SERVER, transport=transport, mode="closed", conns=1, depth=1, size=size,
                    duration_s=duration, warmup_s=warmup, server_cpus=(server_cpu,), client_cpus=(client_cpu,))
    r = run_load(spec)
    if not r.valid:
        raise SockbenchError(f"the harness's {transport} run was invalid: {r.invalid_reason}")
    return r.latency_us.p50


def compare(rounds, warmup, duration, transports=TRANSPORTS, server_cpu=0, client_cpu=1):
    """Rounds of sockperf and the harness in alternation; ``{transport: TransportSummary}`` and the rounds."""
    check_cpus(server_cpu, client_cpu)
    exe = find_sockperf()
    rows = []
    for i in range(rounds):
        for transport in transports:
            order = ("sockperf", "harness") if i % 2 == 0 else ("harness", "sockperf")
            got = {}
            for who in order:
                if who == "sockperf":
                    got[who] = run_sockperf(exe, transport, warmup + duration, server_cpu, client_cpu).p50_rtt_us
                else:
                    got[who] = run_harness(transport, warmup, duration, server_cpu, client_cpu)
            rows.append(Round(transport, got["sockperf"], got["harness"], got["harness"] / got["sockperf"]))
    out = {}
    for transport in transports:
        mine = [r for r in rows if r.transport == transport]
        ratio = spread([r.ratio for r in mine])
        out[transport] = TransportSummary(transport, spread([r.sockperf_p50_us for r in mine]),
                                          spread([r.harness_p50_us for r in mine]), ratio,
                                          ratio.median <= TARGET_RATIO if ratio is not None else None)
    return out, rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.vs_sockperf",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="udp,tcp (default both)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args(argv)
    transports = tuple(t for t in a.transports.split(",") if t)
    try:
        if not set(transports) <= set(TRANSPORTS) or not transports:
            raise SockbenchError(f"--transports takes udp and/or tcp, not {a.transports!r}", exit_code=2)
        out, rows = compare(a.rounds, a.warmup, a.duration, transports, a.server_cpu, a.client_cpu)
    except SockbenchError as e:
        print(f"vs_sockperf: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{SIZE} B, 1 flow, 1 in flight, server {SERVER}; {a.rounds} rounds; p50 round trip in µs, medians [min..max]")
    for s in out.values():
        verdict = "-" if s.within_target is None else ("ok" if s.within_target else "OVER")
        print(f"  {s.transport}: sockperf {fmt_spread(s.sockperf_p50_us, '.1f')}   harness "
              f"{fmt_spread(s.harness_p50_us, '.1f')}   ratio {fmt_spread(s.ratio, '.3f')} "
              f"(<= {TARGET_RATIO}) {verdict}")
    if a.json:
        write_json_atomic(a.json, {"summary": {t: asdict(s) for t, s in out.items()},
                                   "rounds": [asdict(r) for r in rows], "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
