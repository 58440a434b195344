"""``sockbench compare A B``: is B slower or faster than A, cell by cell, and can the rounds tell?

A ratio of medians alone cannot tell a change from noise, and a p-value alone
cannot tell a change that matters from one that does not.  So each (server,
workload) cell present in both folders gets B/A of its figure with a 95%
Hodges-Lehmann interval (``stats.ratio_interval``), and the verdict is where
the whole interval lies against the threshold t (``--fail-above``, default 5%):
``slower``/``faster`` beyond t, ``same`` within t, ``undecided (needs more
rounds)`` when it straddles t or the rounds are too few for any interval.

Rules:

* A cell's workload includes the wire protocol (json is compared only with
  json); a folder older than that dimension reads as raw.
* Closed loop is judged on msgs/s per round, open loop on p99 per round
  (its throughput is the offered rate) (``CellStats.figures``).
* Two runs meet the machine in different states, and all of a server's cells
  can move together between them in a way no cell's rounds show (a block of
  the run, in folders made before the passes were interleaved; since, slow
  stretches that a run's detectors missed).  That drift is estimated from the
  runs themselves (median log ratio per server, MAD across servers; open loop
  separately) and widens every interval once ``DRIFT_MIN_SERVERS`` servers
  show it.
* An open-loop cell whose clients' stall shares differ (``client_stalls_differ``,
  see ``sockbench.thresholds``) is marked ``STALLS differ``; a DISTURBED
  cell is marked; neither fails ``--fail-above``.  INVALID and STARVED are marked.
* Two folders are two runs made apart; ``sockbench ab`` measures side by side
  and is the decisive test, and every comparison says so (``AB_NOTE``).
"""

import dataclasses
import math
import statistics

from sockbench.bench.report.stats import CONFIDENCE, ratio_interval
from sockbench.bench.report.store import load_results
from sockbench.damon import running as damon_running
from sockbench.thresholds import CLIENT_STALLS_DIFFER_FLOOR, CLIENT_STALLS_DIFFER_RATIO

__all__ = ["compare", "render", "verdict", "machine_notes", "server_drift", "widened", "client_stalls_differ", "ALPHA", "DEFAULT_THRESHOLD", "UNDECIDED",
           "DRIFT_MIN_SERVERS", "AB_NOTE"]

#: 1 - the confidence of the interval (``--alpha``)
ALPHA = round(1.0 - CONFIDENCE, 10)
#: the threshold of the verdict when ``--fail-above`` is not given
DEFAULT_THRESHOLD = 0.05
UNDECIDED = "undecided (needs more rounds)"
#: the fewest servers that can show the drift between them (fewer: no drift is estimated)
DRIFT_MIN_SERVERS = 4
#: what every comparison says about itself: two runs made apart, not side by side
AB_NOTE = ("compare judges two runs made at different times, and the machine drifts between them; to decide "
           "whether a change made a server slower, measure both side by side: `sockbench ab A B` (or `sockbench ab "
           "--rev BASE HEAD NAME`) interleaves them round by round and pairs their rounds")
#: the flags that mark a cell's figure in the verdict column, in this order
_MARKED = ("DISTURBED", "STARVED", "INVALID")

#: what of the two machines is worth a note when it differs: (label, how to read it)
_MACHINE_NOTES = (
    ("cpu_model", lambda m: m.cpu_model),
    ("cores", lambda m: m.cores),
    ("kernel", lambda m: m.kernel),
    ("python", lambda m: m.python),
    ("hostname", lambda m: m.hostname),
    # a monitor that samples on a timer sets open-loop tails (sockbench.damon): on in one run, paused in the other
    ("DAMON", lambda m: None if m.damon is None else "on" if damon_running(m.damon) else "off"),
)


def machine_notes(ma, mb):
    """One line for each thing of the two runs' machines (``Machine``) that differs and is worth knowing."""
    notes = []
    for name, of in _MACHINE_NOTES:
        va, vb = of(ma), of(mb)
        if va and vb and va != vb:
            notes.append(f"machine {name} differs: A {va}, B {vb}")
    return notes


def _change(ratio, higher_is_better):
    """A ratio B/A as a change: + better, - worse (a fraction)."""
    if not math.isfinite(ratio):
        return float("nan") if not math.isinf(ratio) else (math.inf if higher_is_better else -math.inf)
    return ratio - 1.0 if higher_is_better else 1.0 - ratio


def verdict(interval, higher_is_better, threshold):
    """The verdict on an interval of B/A: slower, faster, same, or undecided; and the interval as changes.

    Returns ``(verdict, (change_lo, change_hi))`` with changes as in ``_change`` (+ better, - worse).
    """
    ends = sorted((_change(interval.lo, higher_is_better), _change(interval.hi, higher_is_better)))
    lo, hi = ends
    if not interval.bounded:
        return UNDECIDED, (lo, hi)
    if hi < -threshold:
        return "slower", (lo, hi)
    if lo > threshold:
        return "faster", (lo, hi)
    if -threshold <= lo and hi <= threshold:
        return "same", (lo, hi)
    return UNDECIDED, (lo, hi)


def server_drift(log_ratios):
    """How far servers moved apart between the runs: ``{server: [log B/A of its cells]}`` -> a standard
    deviation of log ratios (0 when no drift is seen), or None with fewer than ``DRIFT_MIN_SERVERS`` servers."""
    per_server = [statistics.median(v) for v in log_ratios.values() if v]
    if len(per_server) < DRIFT_MIN_SERVERS:
        return None
    center = statistics.median(per_server)
    return 1.4826 * statistics.median(abs(x - center) for x in per_server)


def widened(interval, drift, level):
    """``interval`` (a ``RatioInterval`` of B/A) widened by the servers' drift ``drift`` (a standard deviation of
    log ratios) at ``level``, in quadrature around its estimate; an unbounded interval stays as it is."""
    if not drift or not interval.bounded or not interval.estimate > 0:
        return interval
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    e = math.log(interval.estimate)
    lo = e - math.hypot(e - math.log(interval.lo), z * drift)
    hi = e + math.hypot(math.log(interval.hi) - e, z * drift)
    return dataclasses.replace(interval, lo=math.exp(lo), hi=math.exp(hi))


def _median(v):
    s = sorted(v)
    if not s:
        return float("nan")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2.0


def client_stalls_differ(share_a, share_b):
    """True when two runs' clients lost shares of their windows to client stalls far enough apart to set their p99s."""
    if share_a is None or share_b is None:
        return False
    lo, hi = sorted((share_a, share_b))
    return hi >= CLIENT_STALLS_DIFFER_FLOOR and hi >= CLIENT_STALLS_DIFFER_RATIO * lo


def _marks(ca, cb):
    """The flags of either side that mark the verdict: ``DISTURBED in B`` ...; ``STALLS differ`` in open loop."""
    out = []
    for flag in _MARKED:
        sides = [side for side, c in (("A", ca), ("B", cb)) if flag in c.flags()]
        if sides:
            out.append(f"{flag} in {' and '.join(sides)}")
    if ca.cell.mode == "open" and client_stalls_differ(ca.client_stall_share, cb.client_stall_share):
        out.append(f"STALLS differ: A {ca.client_stall_share:.1%}, B {cb.client_stall_share:.1%} of the window")
    return out


def compare(a_path, b_path, alpha=ALPHA, fail_above=None):
    """Compare results folder B against A.

    Returns ``{"rows": [...], "only_a": [...], "only_b": [...], "failed": [...], ...}``;
    each row is a dict with server, workload (its id includes the protocol), protocol, metric, a, b (the
    medians), n_a, n_b, ratio (B/A of the medians), estimate, ci (B/A: lo, hi), confidence, change (+ better,
    - worse, as a fraction), change_ci, verdict (slower, faster, same, undecided), marks (["DISTURBED in B"...]),
    disturbed (bool), stalls_differ (bool).  A row fails only when its verdict is slower by more than
    ``fail_above``, neither side was disturbed and their client stalls do not differ.
    """
    A = load_results(a_path)
    B = load_results(b_path)
    threshold = DEFAULT_THRESHOLD if fail_above is None else fail_above
    level = 1.0 - alpha
    rows, failed = [], []
    pairs = []
    logs = {"closed": {}, "open": {}}
    for key, ca in A.cells.items():
        cb = B.cells.get(key)
        if cb is None:
            continue
        va, vb = ca.figures(), cb.figures()
        ma, mb = _median(va), _median(vb)
        pairs.append((key, ca, cb, va, vb, ma, mb))
        if ca.cell.mode in logs and ma > 0 and mb > 0:
            logs[ca.cell.mode].setdefault(key[0], []).append(math.log(mb / ma))
    drifts = {mode: server_drift(per_server) for mode, per_server in logs.items()}
    for key, ca, cb, va, vb, ma, mb in pairs:
        drift = drifts.get(ca.cell.mode, drifts["closed"])
        higher = ca.higher_is_better
        ratio = mb / ma if ma > 0 else float("nan")
        iv = widened(ratio_interval(va, vb, level), drift, level)
        v, change_ci = verdict(iv, higher, threshold)
        marks = _marks(ca, cb)
        disturbed = any(m.startswith("DISTURBED") for m in marks)
        stalls = any(m.startswith("STALLS") for m in marks)
        row = {
            "server": key[0], "workload": key[1], "protocol": ca.cell.protocol, "metric": ca.figure_name,
            "a": ma, "b": mb, "n_a": len(va), "n_b": len(vb), "ratio": ratio, "estimate": iv.estimate,
            "ci": (iv.lo, iv.hi), "confidence": iv.confidence, "change": _change(ratio, higher),
            "change_ci": change_ci, "verdict": v, "marks": marks, "disturbed": disturbed, "stalls_differ": stalls,
        }
        rows.append(row)
        if fail_above is not None and v == "slower" and not (disturbed or stalls):
            failed.append(row)
    notes = []
    pa, pb = A.plan, B.plan
    for key in ("duration_s", "warmup_s", "min_rounds", "max_rounds", "ci", "ci_p99", "server_cpus", "client_cpus"):
        va, vb = (getattr(p, key) for p in (pa, pb)) if pa is not None and pb is not None else (None, None)
        if va != vb:
            notes.append(f"{key} differs: A {pa.to_json().get(key)}, B {pb.to_json().get(key)}")
    notes += machine_notes(A.machine_record(), B.machine_record())
    only_a = [f"{s}:{w}" for (s, w) in A.cells if (s, w) not in B.cells]
    only_b = [f"{s}:{w}" for (s, w) in B.cells if (s, w) not in A.cells]
    return {"a": A.path, "b": B.path, "rows": rows, "only_a": only_a, "only_b": only_b, "notes": notes,
            "failed": failed, "alpha": alpha, "fail_above": fail_above, "threshold": threshold, "drift": drifts["closed"],
            "drift_servers": len(logs["closed"]), "drift_open": drifts["open"], "drift_open_servers": len(logs["open"]),
            "skipped": A.skipped + B.skipped, "note": AB_NOTE}


def _f(v):
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _pct(v):
    return f"{v:+.1%}" if math.isfinite(v) else ("+inf" if v > 0 else "-inf") if math.isinf(v) else "n/a"


def _ci_text(r):
    lo, hi = r["change_ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"none ({r['n_a']}v{r['n_b']} rounds)"
    return f"{_pct(lo)} .. {_pct(hi)}"


def render(result, console=None):
    """Print the comparison as a rich table, then one summary line."""
    # deferred: rich is needed only to print, not by compare() (tests, CI scripts)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    level = 1.0 - result["alpha"]
    t = Table(title=f"sockbench compare\nA = {result['a']}\nB = {result['b']}", box=None, show_edge=False)
    for col in ("server", "workload", "metric", "A (median)", "B (median)", "B/A", "change",
                f"{level:.0%} interval of the change", "verdict"):
        t.add_column(col, justify="left" if col in ("server", "workload", "metric", "verdict") else "right")
    for r in result["rows"]:
        v = r["verdict"]
        style = "" if r["marks"] else "red" if v == "slower" else "green" if v == "faster" else ""
        text = v + (f" ({', '.join(r['marks'])})" if r["marks"] else "")
        t.add_row(escape(r["server"]), escape(r["workload"]), r["metric"], _f(r["a"]), _f(r["b"]),
                  f"{r['ratio']:.3f}" if math.isfinite(r["ratio"]) else "n/a", _pct(r["change"]),
                  _ci_text(r), f"[{style}]{escape(text)}[/]" if style else escape(text))
    console.print(t)
    for label, items in (("only in A", result["only_a"]), ("only in B", result["only_b"])):
        if items:
            console.print(f"{label} (not compared): {', '.join(items)}", highlight=False)
    for note in result.get("notes", []):
        console.print(f"[yellow]note[/]: {escape(note)} (the two runs were not made the same way)")
    counts = {}
    for r in result["rows"]:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    console.print(f"change: + is better, - is worse (msgs/s for closed loop, p99 latency for open loop); "
                  f"the interval is the Hodges-Lehmann {level:.0%} interval of B/A; a verdict needs the whole interval "
                  f"beyond {result['threshold']:.1%} (slower, faster) or within it (same)", highlight=False)
    for key, what in (("drift", "closed-loop msgs/s"), ("drift_open", "open-loop p99")):
        drift, n = result.get(key), result.get(f"{key}_servers", 0)
        if drift is None:
            if n:
                console.print(f"drift of {what} between the servers from run A to run B: not estimated (fewer than "
                              f"{DRIFT_MIN_SERVERS} servers in both runs)", highlight=False)
        else:
            console.print(f"drift of {what} between the servers from run A to run B: {math.expm1(drift):.1%} (one standard "
                          f"deviation, from {n} servers); each such interval includes it", highlight=False)
    console.print("verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())), highlight=False)
    console.print(f"[yellow]note[/]: {escape(AB_NOTE)}", soft_wrap=True)
    disturbed = [r for r in result["rows"] if r["disturbed"]]
    if disturbed:
        console.print(f"[yellow]{len(disturbed)} cell(s) DISTURBED[/] (foreign load on the pinned CPUs): reported, "
                      f"never failed")
    stalled = [r for r in result["rows"] if r["stalls_differ"]]
    if stalled:
        console.print(f"[yellow]{len(stalled)} open-loop cell(s) with client STALLS that differ[/] between the runs "
                      f"(their p99s measured two machines): reported, never failed", highlight=False)
    if result["fail_above"] is not None:
        if result["failed"]:
            worst = min(result["failed"], key=lambda r: r["change"])
            console.print(f"[red bold]FAIL[/]: {len(result['failed'])} cell(s) slower by more than "
                          f"{result['fail_above']:.1%}; worst {escape(worst['server'])} {escape(worst['workload'])} "
                          f"{worst['change']:+.1%}")
        else:
            console.print(f"[green]OK[/]: no cell slower by more than {result['fail_above']:.1%}")
