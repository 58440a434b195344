"""Issue 6's speed check through the harness itself: ``sockbench load --protocol frame|json``, every server side by side.

Why it exists next to ``framed_cpu.py`` (which drives the servers with its own
C client): this one measures with the product's own load path
(``sockbench.bench.load.harness.run_load``, the Cython loop that builds, verifies
and times every framed message), so it shows both what the servers cost and
whether the harness keeps up.  For each repeat it runs every (server,
protocol) cell once, rotating the server order between repeats so that no
server always runs first or last on this shared, noisy machine, and reports
per cell the medians with their spread (min..max) of:

* msgs/s (every answer verified: header, content-length, request-id, payload);
* the server's user and system CPU per message (µs; netperf's service demand);
* the client's (load process's) CPU per message and its utilisation, and
  ``limited_by``: when the client CPU is saturated, the msgs/s are the
  harness's limit, not the server's, and the CPU per message is the figure
  that tells the servers apart;

and the per-repeat ratios cython/uvloop against issue 6's targets
(frame: msgs/s >= 2.5x, user CPU/msg <= 0.15x; json: msgs/s >= 4x).  Every
ratio is taken within one repeat (side by side), then its median is given.

It also gives the *kernel ceiling* of the msgs/s ratio per protocol: uvloop's
whole server CPU per message divided by cython's system CPU per message.  A
server that echoes 16 messages per read still has to make one recv and one send
per batch, and on loopback that send carries the whole TCP path of both ends
(transmit, the peer's receive in softirq, the ACK).  Cython's user time is
already near zero, so its kernel time is the floor for any server on this
machine, and no client, however fast, can lift the msgs/s ratio above
uvloop's CPU per message over that floor.  When the ceiling is below a target,
the target is out of this machine's reach, and the line says so.

Run: ``python -m sockbench.bench.calibrate.framed_load [--repeats 3] [--duration 3]
[--servers cython,uvloop] [--protocols frame,json] [--conns 100 --size 64
--depth 16] [--json PATH]``.  Server on CPU 0, load on CPU 1 (the harness's
defaults).  Not part of the unit tests: it carries speed targets.
"""

import argparse
import sys

from sockbench.servers import registry
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.jsonfile import write_json_atomic
from sockbench.bench.calibrate.spread import fmt_spread, spread
from sockbench.errors import SockbenchError, UsageError

__all__ = ["TARGETS", "run_benchmark", "summarize", "render", "main"]

#: (protocol, metric, bound, "min" | "max") as cython / uvloop ratios: issue 6's targets
TARGETS = (
    ("frame", "msgs_per_s", 2.5, "min"),
    ("frame", "server_user_us", 0.15, "max"),
    ("json", "msgs_per_s", 4.0, "min"),
)
METRICS = ("msgs_per_s", "server_user_us", "server_sys_us", "client_us", "client_util")


def _cell(r):
    sp, cl = r["server_proc"], r["client"]
    client_us = None
    if cl["us_per_msg"]["user"] is not None:
        client_us = cl["us_per_msg"]["user"] + cl["us_per_msg"]["sys"]
    return {
        "valid": r["valid"],
        "invalid_reason": r["invalid_reason"],
        "limited_by": r["limited_by"],
        "msgs_per_s": r["throughput"]["msgs_per_s"],
        "server_user_us": sp["us_per_msg"]["user"],
        "server_sys_us": sp["us_per_msg"]["sys"],
        "client_us": client_us,
        "client_util": cl["cpu_util"],
    }


def run_benchmark(servers, protocols, repeats, duration_s, warmup_s, conns, size, depth, log=print):
    """``{(server, protocol): [cell per repeat]}``; each repeat runs every cell once, rotated."""
    cells = {(s, p): [] for p in protocols for s in servers}
    for rep in range(repeats):
        order = servers[rep % len(servers):] + servers[: rep % len(servers)]
        for p in protocols:
            for s in order:
                spec = LoadSpec(server=s, protocol=p, mode="closed", conns=conns, size=size, depth=depth,
                                duration_s=duration_s, warmup_s=warmup_s)
                c = _cell(run_load(spec).to_json())
                cells[(s, p)].append(c)
                log(f"repeat {rep + 1}/{repeats} {p:5} {s:16} {c['msgs_per_s']:>10,.0f} msgs/s  "
                    f"server user {c['server_user_us'] or 0:.3f} sys {c['server_sys_us'] or 0:.3f} µs/msg  "
                    f"client {c['client_us'] or 0:.3f} µs/msg ({(c['client_util'] or 0):.0%})  "
                    f"limited by {c['limited_by']}{'' if c['valid'] else '  INVALID: ' + c['invalid_reason']}")
    return cells



def summarize(cells, protocols):
    """Medians with spread per cell, and the per-repeat cython/uvloop ratios against the targets."""
    out = {"cells": {}, "ratios": [], "ceilings": []}
    for (s, p), runs in cells.items():
        ok = [r for r in runs if r["valid"]]  # an invalid run (errors, a stall) is no measurement
        out["cells"][f"{s}/{p}"] = {m: spread([r[m] for r in ok]) for m in METRICS}
        out["cells"][f"{s}/{p}"]["invalid"] = [r["invalid_reason"] for r in runs if not r["valid"]]
        out["cells"][f"{s}/{p}"]["limited_by"] = [r["limited_by"] for r in ok]
    for p, metric, bound, kind in TARGETS:
        a, b = cells.get(("cython", p)), cells.get(("uvloop", p))
        if not a or not b or p not in protocols:
            continue
        per = [x[metric] / y[metric] for x, y in zip(a, b)
               if x["valid"] and y["valid"] and x[metric] and y[metric]]
        st = spread(per)
        met = None if st is None else (st["median"] >= bound if kind == "min" else st["median"] <= bound)
        out["ratios"].append({"protocol": p, "metric": metric, "target": f"{'>=' if kind == 'min' else '<='} {bound:g}",
                              "per_repeat": per, "stats": st, "met": met})
    for p in protocols:
        a, b = cells.get(("cython", p)), cells.get(("uvloop", p))
        if not a or not b:
            continue
        per = [(y["server_user_us"] + y["server_sys_us"]) / x["server_sys_us"] for x, y in zip(a, b)
               if x["valid"] and y["valid"] and x["server_sys_us"]
               and y["server_user_us"] is not None and y["server_sys_us"] is not None]
        bound = next((t[2] for t in TARGETS if t[0] == p and t[1] == "msgs_per_s"), None)
        st = spread(per)
        out["ceilings"].append({"protocol": p, "per_repeat": per, "stats": st, "target": bound,
                                "reachable": None if st is None or bound is None else st["median"] >= bound})
    return out



def render(summary):
    lines = ["| cell | msgs/s | server user µs/msg | server sys µs/msg | client µs/msg | client util | limited by |",
             "|---|---|---|---|---|---|---|"]
    for name, c in summary["cells"].items():
        bad = f" ({len(c['invalid'])} run(s) invalid, left out)" if c["invalid"] else ""
        lines.append(
            f"| {name}{bad} | {fmt_spread(c['msgs_per_s'], ',.0f')} | "
            f"{fmt_spread(c['server_user_us'], '.3f')} | {fmt_spread(c['server_sys_us'], '.3f')} | "
            f"{fmt_spread(c['client_us'], '.3f')} | {fmt_spread(c['client_util'], '.0%')} | "
            f"{', '.join(str(x) for x in c['limited_by'])} |")
    lines.append("")
    for r in summary["ratios"]:
        per = ", ".join(f"{x:.2f}" for x in r["per_repeat"])
        verdict = {True: "met", False: "NOT met", None: "-"}[r["met"]]
        lines.append(f"cython/uvloop {r['protocol']} {r['metric']}: median {fmt_spread(r['stats'], '.2f')} "
                     f"[per repeat: {per}] target {r['target']}: {verdict}")
    for c in summary.get("ceilings", ()):
        if c["stats"] is None:
            continue
        verdict = {True: "the target is within it", False: "the target is ABOVE it: out of this machine's reach",
                   None: ""}[c["reachable"]]
        lines.append(f"kernel ceiling {c['protocol']} msgs/s ratio (uvloop server CPU/msg over cython's kernel "
                     f"CPU/msg): median {fmt_spread(c['stats'], '.2f')}"
                     + (f"; target >= {c['target']:g}: {verdict}" if c["target"] is not None else ""))
    for name, c in summary["cells"].items():
        for why in c["invalid"]:
            lines.append(f"invalid {name}: {why}")
    return "\n".join(lines)


def _list(text, allowed, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if not items or bad:
        raise UsageError(f"bad --{what} {text!r}; choose from {', '.join(allowed)}")
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.framed_load", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--servers", default="cython,uvloop")
    ap.add_argument("--protocols", default="frame,json")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    try:
        if a.repeats < 1:
            raise UsageError("--repeats must be >= 1")
        servers = _list(a.servers, registry.available_names(), "servers")
        protocols = _list(a.protocols, ("raw", "frame", "json"), "protocols")
        cells = run_benchmark(servers, protocols, a.repeats, a.duration, a.warmup, a.conns, a.size, a.depth,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
    except SockbenchError as e:
        print(f"sockbench: {e}", file=sys.stderr)
        return e.exit_code
    summary = summarize(cells, protocols)
    summary["settings"] = {k: getattr(a, k) for k in ("repeats", "duration", "warmup", "conns", "size", "depth")}
    print(render(summary))
    if a.json:
        write_json_atomic(a.json, {"summary": summary, "runs": {f"{s}/{p}": v for (s, p), v in cells.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
