"""Framed protocols (``frame``, ``json``): server msgs/s and CPU per message, every server side by side.

This is the benchmark behind issue 6's "Speed" targets (100 connections x 64 B
payload x 16 in flight, pinned cores): ``frame``: cython >= 2.5x uvloop's
msgs/s and <= 0.15x its user CPU per message; ``json``: cython >= 4x
uvloop's msgs/s.  It is a script, not a test: timings on a shared 2-core
machine are noisy, so every server runs in one invocation, the whole set is
repeated (rotating the order), and the report gives medians with their spread
(min..max) and the ratios per repeat.

Why it is built this way:

* **A C load client** (``framed_client.c``, compiled on first use with gcc
  into a cache folder under the temp dir, keyed by its source hash).  The
  harness (``sockbench load``) does not speak the protocols yet, and a Python
  client would cost more per message than the fastest server.  It keeps
  ``depth`` requests in flight per connection, replaces every answer with a
  new request in one send per read, and checks every answer byte for byte.
  Its own CPU in the window is reported, so a client-bound run says so.
* **CPU per message from /proc**: the server's ``utime``/``stime``
  (``sockbench.procfs.read_proc_stat``) are read when the client opens its
  measured window (it prints ``window``) and when it closes it (its result
  line), and divided by the answers verified in between (netperf's service
  demand).  The kernel samples user/system at each tick, so the split is
  coarse for short windows; ``/proc/PID/schedstat`` gives the exact total
  runtime as a cross-check (``total_us``).
* **Pinned**: the server on ``--server-cpu``, the client on ``--client-cpu``
  (``os.sched_setaffinity``), so they never steal each other's time.
* **Bounded**: every client run stops by itself after warmup + duration and
  is killed (by pid, through ``subprocess``) if it overruns by 30 s; every
  server is stopped by pid when its cell ends.

Run: ``python -m sockbench.bench.calibrate.framed_cpu [--repeats 3] [--duration 4]
[--servers cython,uvloop,...] [--protocols frame,json] [--json PATH] [--md PATH]``.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from sockbench.servers import registry
from sockbench.bench.calibrate.spread import fmt_spread, spread
from sockbench.errors import SockbenchError, UsageError
from sockbench.timestamps import iso_utc
from sockbench.procfs import read_proc_stat, read_task_cpu_s
from sockbench.servers.process import ServerProcess

__all__ = ["build_client", "run_cell", "run_benchmark", "summarize", "render_markdown", "main", "TARGETS"]

_CLIENT_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "framed_client.c")
FRAMED = ("frame", "json")

#: issue 6's targets: (protocol, metric, bound, "min"|"max"), as cython / uvloop ratios
TARGETS = (
    ("frame", "msgs_per_s", 2.5, "min"),
    ("frame", "user_us_per_msg", 0.15, "max"),
    ("json", "msgs_per_s", 4.0, "min"),
)


def build_client(src=_CLIENT_SRC):
    """Compile the C client once per source version; return the binary's path."""
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "sockbench-framed-client")
    os.makedirs(cache, exist_ok=True)
    exe = os.path.join(cache, f"framed_client-{digest}")
    if os.path.exists(exe):
        return exe
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SockbenchError("the framed load client needs a C compiler (gcc or cc on PATH)")
    tmp = f"{exe}.{os.getpid()}.tmp"
    r = subprocess.run([gcc, "-O2", "-Wall", "-o", tmp, src], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SockbenchError(f"cannot compile {src}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'gcc failed'}")
    os.replace(tmp, exe)
    return exe


def _queues(port):
    """For a stalled run: the socket queues on both sides (who holds the unanswered bytes)."""
    try:
        out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ss failed: {e}"
    server_rq = server_sq = client_rq = client_sq = 0
    for ln in out.splitlines():
        f = ln.split()
        if len(f) < 4:
            continue
        rq, sq, local = int(f[0]), int(f[1]), f[2]
        if local.endswith(f":{port}"):
            server_rq, server_sq = server_rq + rq, server_sq + sq
        else:
            client_rq, client_sq = client_rq + rq, client_sq + sq
    return f"queued bytes: server recv {server_rq} send {server_sq}, client recv {client_rq} send {client_sq}"


def _proc_state(pid):
    """For a stalled run: is the server running, and how loaded is the machine?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
    except OSError as e:
        return f"server state unknown: {e}"
    return f"server state {state}, load average {load}"


def run_cell(client, server, protocol, conns, depth, size, warmup, duration, client_cpu):
    """One client run against a started server; returns a dict of figures (``valid`` False on any error)."""
    host, port = server.address
    cmd = [client, host, str(port), protocol, str(conns), str(depth), str(size), str(warmup), str(duration)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {client_cpu}),
    )
    deadline = time.monotonic() + warmup + duration + 30
    before = after = None
    result = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "window":
                before = (read_proc_stat(server.pid), read_task_cpu_s(server.pid))
            elif line.startswith("{"):
                after = (read_proc_stat(server.pid), read_task_cpu_s(server.pid))
                result = json.loads(line)
                if "stalled" in result.get("error", "") or result.get("stuck"):
                    result["error"] += "; " + _queues(port) + "; " + _proc_state(server.pid)
                proc.stdin.close()  # a client that reported an error waits for this before it exits
                break
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    if result is None or before is None or after is None:
        return {"valid": False, "error": (stderr.strip() or "no result from the client")[-300:]}
    msgs, secs = result["msgs"], result["seconds"]
    (u0, s0), t0 = before
    (u1, s1), t1 = after
    ok = proc.returncode == 0 and not result.get("errors") and msgs > 0
    per = 1e6 / msgs if msgs else float("nan")
    return {
        "valid": ok,
        "error": result.get("error") or ("" if ok else (stderr.strip() or f"client exit {proc.returncode}")[-300:]),
        "msgs": msgs,
        "seconds": secs,
        "msgs_per_s": msgs / secs if secs else 0.0,
        "user_us_per_msg": (u1 - u0) * per,
        "sys_us_per_msg": (s1 - s0) * per,
        "total_us_per_msg": (t1 - t0) * per,
        "server_util": (t1 - t0) / secs if secs else 0.0,
        "client_user_us_per_msg": result["user_s"] * per,
        "client_sys_us_per_msg": result["sys_s"] * per,
        "client_util": (result["user_s"] + result["sys_s"]) / secs if secs else 0.0,
    }


def _check_cpus(server_cpu, client_cpu):
    allowed = os.sched_getaffinity(0)
    for what, cpu in (("--server-cpu", server_cpu), ("--client-cpu", client_cpu)):
        if cpu not in allowed:
            raise UsageError(f"{what} {cpu} is not a CPU this process may use ({sorted(allowed)})")
    if server_cpu == client_cpu:
        raise UsageError("--server-cpu and --client-cpu must differ: the client would steal the server's time")


def run_benchmark(servers, protocols=FRAMED, repeats=3, conns=100, depth=16, size=64, warmup=1.0, duration=4.0,
                  server_cpu=0, client_cpu=1, log=None):
    """Every (protocol, server) cell, ``repeats`` times, the server order rotated per repeat."""
    _check_cpus(server_cpu, client_cpu)
    client = build_client()
    runs = []
    for rep in range(repeats):
        order = servers[rep % len(servers):] + servers[: rep % len(servers)]
        for protocol in protocols:
            for name in order:
                with ServerProcess(name, cpus=[server_cpu], extra_args=("--protocol", protocol)) as server:
                    cell = run_cell(client, server, protocol, conns, depth, size, warmup, duration, client_cpu)
                cell.update(server=name, protocol=protocol, repeat=rep)
                runs.append(cell)
                if log:
                    if cell["valid"]:
                        log(f"[{rep + 1}/{repeats}] {protocol:5} {name:18} {cell['msgs_per_s']:>11,.0f} msgs/s  "
                            f"server user {cell['user_us_per_msg']:.3f} sys {cell['sys_us_per_msg']:.3f} "
                            f"total {cell['total_us_per_msg']:.3f} us/msg (util {cell['server_util']:.2f})  "
                            f"client util {cell['client_util']:.2f}")
                    else:
                        log(f"[{rep + 1}/{repeats}] {protocol:5} {name:18} INVALID: {cell['error']}")
    return runs



METRICS = ("msgs_per_s", "user_us_per_msg", "sys_us_per_msg", "total_us_per_msg", "server_util",
           "client_user_us_per_msg", "client_sys_us_per_msg", "client_util")


def summarize(runs, focus="cython", base="uvloop"):
    """Medians with spread per (protocol, server); ratios focus/base computed per repeat, then summarized."""
    cells = {}
    for r in runs:
        if r["valid"]:
            cells.setdefault((r["protocol"], r["server"]), []).append(r)
    table = {f"{p}/{s}": {m: spread([r[m] for r in rs]) for m in METRICS} for (p, s), rs in cells.items()}
    ratios, checks = {}, []
    for protocol in sorted({r["protocol"] for r in runs}):
        for metric in ("msgs_per_s", "user_us_per_msg", "total_us_per_msg"):
            per_rep = []
            for rep in sorted({r["repeat"] for r in runs}):
                a = [r for r in cells.get((protocol, focus), []) if r["repeat"] == rep]
                b = [r for r in cells.get((protocol, base), []) if r["repeat"] == rep]
                if a and b and b[0][metric]:
                    per_rep.append(a[0][metric] / b[0][metric])
            ratios[f"{protocol}/{metric}"] = spread(per_rep)
    for protocol, metric, bound, kind in TARGETS:
        st = ratios.get(f"{protocol}/{metric}")
        if st is None:
            checks.append({"target": f"{protocol} {focus}/{base} {metric} {'>=' if kind == 'min' else '<='} {bound}",
                           "median": None, "met": None})
            continue
        met = st["median"] >= bound if kind == "min" else st["median"] <= bound
        checks.append({"target": f"{protocol} {focus}/{base} {metric} {'>=' if kind == 'min' else '<='} {bound}",
                       "median": st["median"], "min": st["min"], "max": st["max"], "met": met})
    # the client is (one of) the limit(s) when its CPU is saturated, whatever the server's
    client_bound = sorted({f"{r['protocol']}/{r['server']} (repeat {r['repeat'] + 1}: client {r['client_util']:.2f}, "
                           f"server {r['server_util']:.2f})" for r in runs if r["valid"] and r["client_util"] >= 0.9})
    invalid = [f"{r['protocol']}/{r['server']} (repeat {r['repeat'] + 1}): {r['error']}" for r in runs if not r["valid"]]
    return {"table": table, "ratios": ratios, "checks": checks, "client_bound": client_bound, "invalid": invalid}



def render_markdown(summary, meta):
    lines = [
        f"# Framed protocols: {meta['conns']} conns x {meta['size']} B x {meta['depth']} in flight",
        "",
        f"{meta['started_at']}, {meta['machine']}, server CPU {meta['server_cpu']}, client CPU {meta['client_cpu']}, "
        f"{meta['repeats']} repeats x {meta['duration']} s (+{meta['warmup']} s warmup).  Median (min..max).",
        "",
        "| protocol/server | msgs/s | server user us/msg | sys us/msg | total us/msg | server util | client us/msg | client util |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(summary["table"]):
        t = summary["table"][key]
        client_us = None
        if t["client_user_us_per_msg"] and t["client_sys_us_per_msg"]:
            client_us = {k: t["client_user_us_per_msg"][k] + t["client_sys_us_per_msg"][k] for k in ("median", "min", "max")}
        lines.append(f"| {key} | {fmt_spread(t['msgs_per_s'], ',.0f')} | {fmt_spread(t['user_us_per_msg'], '.3f')} | "
                     f"{fmt_spread(t['sys_us_per_msg'], '.3f')} | {fmt_spread(t['total_us_per_msg'], '.3f')} | "
                     f"{fmt_spread(t['server_util'], '.2f')} | {fmt_spread(client_us, '.3f')} | {fmt_spread(t['client_util'], '.2f')} |")
    lines += ["", "Ratios cython/uvloop (per repeat, then median (min..max)):", ""]
    for key, st in sorted(summary["ratios"].items()):
        lines.append(f"- {key}: {fmt_spread(st, '.3f')}")
    lines += ["", "Targets:", ""]
    for c in summary["checks"]:
        verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
        val = "" if c["median"] is None else f": {c['median']:.3f} ({c['min']:.3f}..{c['max']:.3f})"
        lines.append(f"- {c['target']}{val} -> {verdict}")
    if summary["client_bound"]:
        lines += ["", "Client-saturated runs (client CPU >= 0.9; the client is a limit there, so the server's",
                  "msgs/s is a lower bound; its CPU per message still holds):", ""]
        lines += [f"- {x}" for x in summary["client_bound"]]
    if summary["invalid"]:
        lines += ["", "Invalid runs:", ""] + [f"- {x}" for x in summary["invalid"]]
    return "\n".join(lines) + "\n"


def _parser():
    p = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.framed_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--servers", default=None, help="comma-separated; default: every available server speaking both protocols")
    p.add_argument("--protocols", default="frame,json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--json", dest="json_path", default=None, help="write every run and the summary here")
    p.add_argument("--md", dest="md_path", default=None, help="write the markdown report here (it is printed anyway)")
    return p


def _parse(argv):
    p = _parser()

    def error(message):
        raise UsageError(f"framed_cpu: {message}")

    p.error = error
    a = p.parse_args(argv)
    protocols = tuple(x for x in a.protocols.split(",") if x)
    bad = [x for x in protocols if x not in FRAMED]
    if bad or not protocols:
        error(f"--protocols takes frame and/or json, got {a.protocols!r}")
    if a.servers:
        servers = [x for x in a.servers.split(",") if x]
        for s in servers:
            spec = registry.get(s)
            missing = [x for x in protocols if x not in spec.protocols]
            if missing:
                error(f"server {s!r} does not speak {', '.join(missing)}")
            ok, why = spec.availability()
            if not ok:
                error(f"server {s!r}: {why}")
    else:
        servers = [n for n in registry.available_names() if all(x in registry.SERVERS[n].protocols for x in protocols)]
    if not servers:
        error("no server to run")
    if not 1 <= a.repeats <= 50 or not 1 <= a.conns <= 10000 or not 1 <= a.depth <= 1024 or not 0 <= a.size <= 65536:
        error("--repeats 1..50, --conns 1..10000, --depth 1..1024, --size 0..65536")
    if not 0 <= a.warmup <= 60 or not 0.5 <= a.duration <= 120:
        error("--warmup 0..60 s, --duration 0.5..120 s")
    return a, servers, protocols


def main(argv=None):
    try:
        a, servers, protocols = _parse(sys.argv[1:] if argv is None else argv)
        meta = {
            "started_at": iso_utc(),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}",
            "servers": servers, "protocols": protocols, "repeats": a.repeats, "conns": a.conns, "depth": a.depth,
            "size": a.size, "warmup": a.warmup, "duration": a.duration,
            "server_cpu": a.server_cpu, "client_cpu": a.client_cpu,
        }
        runs = run_benchmark(servers, protocols, a.repeats, a.conns, a.depth, a.size, a.warmup, a.duration,
                             a.server_cpu, a.client_cpu, log=lambda m: print(m, file=sys.stderr, flush=True))
        summary = summarize(runs)
        md = render_markdown(summary, meta)
        sys.stdout.write(md)
        if a.md_path:
            with open(a.md_path, "w") as f:
                f.write(md)
        if a.json_path:
            with open(a.json_path, "w") as f:
                json.dump({"schema": 1, "meta": meta, "runs": runs, "summary": summary}, f, indent=1)
        return 1 if summary["invalid"] else 0
    except SockbenchError as e:
        print(f"sockbench: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print("sockbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
