"""``sockbench compare A B``: is B slower or faster than A, cell by cell, and is it significant?

Why it is built this way (after pyperf's ``compare_to``): a ratio of two
medians alone cannot tell a regression from noise, so every (server,
workload) present in both folders also gets a significance call over its
rounds, with the Mann-Whitney U test: it assumes no distribution (round
throughputs are not normal), and it is exact for the handful of rounds a
benchmark has.  The exact p-value enumerates every split of the pooled rounds
(mid-ranks for ties) when there are at most ``EXACT_LIMIT`` splits; beyond
that, the normal approximation with tie and continuity corrections.  The test
is one-sided in the direction the medians moved.  It is small enough to carry
here instead of adding scipy as a dependency.

A cell is a (server, workload) pair, and the workload includes the wire
protocol: ``closed-64B-c100-d16-json`` is compared only with the same json
cell of the other run, never with raw.  A folder written before the protocol
dimension existed reads as raw (its ids are the raw ids), so old baselines
still compare.

Each workload is judged on the figure that matters for it:

* closed loop: throughput, msgs/s per round (higher is better);
* open loop: p99 latency per round (lower is better), since the throughput of
  an open-loop run is the offered rate, not a measurement of the server.

With 3 rounds against 3, the smallest one-sided p-value possible is 1/20 =
0.05, so a change is significant at the default ``alpha`` of 0.05 only when
every round of B is beyond every round of A.  Fewer rounds can never be
significant, and the table says so.

``--fail-above 5%`` turns the comparison into a CI guard: exit status 1 when
any cell got significantly worse by more than that.
"""

import itertools
import math

from sockbench.bench.report.store import load_results

__all__ = ["mann_whitney_u", "compare", "render", "EXACT_LIMIT", "ALPHA"]

EXACT_LIMIT = 200_000
ALPHA = 0.05

#: what of the two machines is worth a note when it differs: (label, how to read it)
_MACHINE_NOTES = (
    ("cpu_model", lambda m: m.cpu_model),
    ("cores", lambda m: m.cores),
    ("kernel", lambda m: m.kernel),
    ("python", lambda m: m.python),
    ("hostname", lambda m: m.hostname),
)


def _midranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    ties = []
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def mann_whitney_u(a, b, alternative="less"):
    """Mann-Whitney U of ``b`` against ``a``; returns ``(U_b, p, method)``.

    ``U_b`` counts the pairs where the b value is larger (ties count 1/2).
    ``alternative="less"``: p-value of "b tends to be smaller than a";
    ``"greater"``: "b tends to be larger".
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan"), 1.0, "none"
    pooled = list(a) + list(b)
    ranks, ties = _midranks(pooled)
    offset = n2 * (n2 + 1) / 2.0
    u_obs = sum(ranks[n1:]) - offset
    n = n1 + n2
    if math.comb(n, n2) <= EXACT_LIMIT:
        count = 0
        total = 0
        eps = 1e-9
        for idx in itertools.combinations(range(n), n2):
            u = sum(ranks[i] for i in idx) - offset
            total += 1
            if (alternative == "less" and u <= u_obs + eps) or (alternative == "greater" and u >= u_obs - eps):
                count += 1
        return u_obs, count / total, "exact"
    mu = n1 * n2 / 2.0
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0:
        return u_obs, 1.0, "normal"
    if alternative == "less":
        z = (u_obs - mu + 0.5) / sigma
    else:
        z = (mu - u_obs + 0.5) / sigma
    p = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    return u_obs, min(1.0, p), "normal"


def _metric(cellstats):
    """(name, per-round values, higher_is_better) for one cell."""
    if cellstats.cell.mode == "open":
        vals = [float(r.latency_us.p99 or float("nan")) for r in cellstats.results]
        return "p99 µs", [v for v in vals if math.isfinite(v)], False
    return "msgs/s", [v for v in cellstats.msgs if math.isfinite(v)], True


def _median(v):
    s = sorted(v)
    if not s:
        return float("nan")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2.0


def compare(a_path, b_path, alpha=ALPHA, fail_above=None):
    """Compare results folder B against A.

    Returns ``{"rows": [...], "only_a": [...], "only_b": [...], "failed": [...]}``;
    each row is a dict with server, workload (its id includes the protocol), protocol, metric, a, b, ratio (B/A of the
    metric), change (+ better, - worse, as a fraction), p, verdict.
    """
    A = load_results(a_path)
    B = load_results(b_path)
    rows, failed = [], []
    for key, ca in A.cells.items():
        cb = B.cells.get(key)
        if cb is None:
            continue
        name, va, higher = _metric(ca)
        _, vb, _ = _metric(cb)
        ma, mb = _median(va), _median(vb)
        ratio = mb / ma if ma > 0 else float("nan")
        change = (ratio - 1.0) if higher else (1.0 - ratio)
        b_worse = (mb < ma) if higher else (mb > ma)
        alt = ("less" if b_worse else "greater") if higher else ("greater" if b_worse else "less")
        _, p, method = mann_whitney_u(va, vb, alt)
        min_p = 1.0 / math.comb(len(va) + len(vb), len(vb)) if va and vb else 1.0
        if not math.isfinite(ratio) or mb == ma:
            verdict = "same"
        elif p <= alpha:
            verdict = "slower" if b_worse else "faster"
        elif min_p > alpha:
            verdict = "too few rounds"
        else:
            verdict = "not significant"
        if ca.invalid or cb.invalid:
            verdict += " (INVALID run)"
        row = {
            "server": key[0], "workload": key[1], "protocol": ca.cell.protocol, "metric": name, "a": ma, "b": mb,
            "n_a": len(va), "n_b": len(vb), "ratio": ratio, "change": change, "p": p,
            "method": method, "verdict": verdict,
        }
        rows.append(row)
        if fail_above is not None and verdict.startswith("slower") and -change > fail_above:
            failed.append(row)
    notes = []
    pa, pb = A.meta.get("plan") or {}, B.meta.get("plan") or {}
    for key in ("duration_s", "warmup_s", "rounds", "server_cpus", "client_cpus"):
        if key in pa and key in pb and pa[key] != pb[key]:
            notes.append(f"{key} differs: A {pa[key]}, B {pb[key]}")
    ma, mb = A.machine_record(), B.machine_record()
    for name, of in _MACHINE_NOTES:
        va, vb = of(ma), of(mb)
        if va and vb and va != vb:
            notes.append(f"machine {name} differs: A {va}, B {vb}")
    only_a = [f"{s}:{w}" for (s, w) in A.cells if (s, w) not in B.cells]
    only_b = [f"{s}:{w}" for (s, w) in B.cells if (s, w) not in A.cells]
    return {"a": A.path, "b": B.path, "rows": rows, "only_a": only_a, "only_b": only_b, "notes": notes,
            "failed": failed, "alpha": alpha, "fail_above": fail_above}


def _f(v):
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def render(result, console=None):
    """Print the comparison as a rich table, then one summary line."""
    # deferred: rich is needed only to print, not by compare() (tests, CI scripts)
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"sockbench compare\nA = {result['a']}\nB = {result['b']}", box=None, show_edge=False)
    for col in ("server", "workload", "metric", "A (median)", "B (median)", "B/A", "change", "p (MWU)", "verdict"):
        t.add_column(col, justify="left" if col in ("server", "workload", "metric", "verdict") else "right")
    for r in result["rows"]:
        v = r["verdict"]
        style = "red" if v.startswith("slower") else "green" if v.startswith("faster") else ""
        change = f"{r['change']:+.1%}" if math.isfinite(r["change"]) else "n/a"
        t.add_row(r["server"], r["workload"], r["metric"], _f(r["a"]), _f(r["b"]),
                  f"{r['ratio']:.3f}" if math.isfinite(r["ratio"]) else "n/a", change,
                  f"{r['p']:.3f} ({r['n_a']}v{r['n_b']})", f"[{style}]{v}[/]" if style else v)
    console.print(t)
    for label, items in (("only in A", result["only_a"]), ("only in B", result["only_b"])):
        if items:
            console.print(f"{label} (not compared): {', '.join(items)}")
    for note in result.get("notes", []):
        console.print(f"[yellow]note[/]: {note} (the two runs were not made the same way)")
    console.print(f"change: + is better, - is worse (msgs/s for closed loop, p99 latency for open loop); "
                  f"significant: one-sided Mann-Whitney U p <= {result['alpha']}")
    if result["fail_above"] is not None:
        if result["failed"]:
            worst = min(result["failed"], key=lambda r: r["change"])
            console.print(f"[red bold]FAIL[/]: {len(result['failed'])} significant slowdown(s) above "
                          f"{result['fail_above']:.1%}; worst {worst['server']} {worst['workload']} {worst['change']:+.1%}")
        else:
            console.print(f"[green]OK[/]: no significant slowdown above {result['fail_above']:.1%}")
