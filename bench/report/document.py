"""Build ``report.md`` and a self-contained ``report.html`` (plots embedded) from a results folder.

Why it is built this way: the report is rebuilt from ``raw/*.json`` alone
(``sockbench report DIR``), so it works after a complete run, a Ctrl-C, or on
a folder from another machine.  The Markdown links ``plots/*.png`` for reading
in a repository; the HTML is one file to share (images inlined, no network,
no scripts).  The content is built once as a ``blocks.Document``
(``build_document``) and rendered to both by ``render``, so they cannot drift;
``formats.write_formats`` writes the other formats beside them.

What a reader needs first comes first:

1. the summary (``summary.py``); one line counting the flags, and their legend once;
2. the machine and its tuning, the commit, the settings, rounds and re-measures;
3. one table per workload, a row per server with rounds, the 95% interval of
   the median and a flags column (open loop: p99 against the lowest at the same
   share of peak, and a sentence on the client stalls, see ``sockbench.thresholds``);
4. the protocol section's cost over ``raw`` per server (user+sys and user);
5. the dimension sections (``dimensions.py``), only when the run varied them;
6. the plots with captions; last, one line per flagged cell saying why.

A flag is a badge in its row, not a wall of warnings before the results.
"""

import math
import os
from dataclasses import replace

from sockbench.bench.report.blocks import (
    Alert, Code, Document, Emph, Heading, Image, KeyValues, Legend, Paragraph, Row, Strong, Table, WarningList,
)
from sockbench.bench.report.dimensions import (fmt, has_loss, loss_text, python_section, tls_section, transport_section,
                                                workers_section)
from sockbench.bench.report.formats import write_formats
from sockbench.bench.report.plots import PLOT_CAPTIONS, make_dimension_plots, make_plots
from sockbench.bench.report.ratios import workload_ratios
from sockbench.bench.report.render import to_html, to_markdown
from sockbench.bench.report.store import load_results
from sockbench.bench.report.summary import build_summary
from sockbench.damon import note as damon_note, running as damon_running
from sockbench.errors import SockbenchError
from sockbench.procfs import TICK_S
from sockbench.thresholds import (CLIENT_STALL_S, DISTURBED_SHARE, LOSSY_SHARE, OUTLIER_SHARE, STALL_SLICE_S,
                                  UNSTABLE_SPREAD)
from sockbench.timestamps import iso_utc
from sockbench.units import format_size

__all__ = [
    "build_report", "build_document", "table_rows", "protocol_cost_rows", "FLAG_HELP",
    "COLUMNS", "OPEN_COLUMNS", "PROTO_COLUMNS", "summary_table", "with_loss", "dimension_sections",
    "stalls_text", "stalls_sentence",
]

FLAG_HELP = {
    "INVALID": "a wrong echoed byte, a lost connection or another error made a round invalid: do not quote it",
    "STARVED": "a connection completed no message in a round's window: the server left it unserved (the round is invalid)",
    "DISTURBED": (f"other processes (or the hypervisor: steal) used {DISTURBED_SHARE:.0%} of a pinned CPU or more during a "
                  f"round, and measuring it again did not escape them: the figure "
                  "measures the machine as much as the server"),
    "CLIENT-BOUND": "the load client saturated its CPU: the figure measures the client, not the server",
    "UNSTABLE": (f"the spread between rounds is {UNSTABLE_SPREAD:.0%} of the median or more (pyperf's rule, on a spread "
                 "that one outlier round cannot set: the median absolute deviation scaled to a standard deviation): "
                 "re-run on a quieter machine"),
    "OUTLIERS": (f"some rounds' msgs/s lay more than {OUTLIER_SHARE:.0%} from the cell's median: the median does not "
                 "move for them, but they happened, with no foreign load seen (else they would be DISTURBED): a server "
                 "that sometimes degrades for a whole round, or a hiccup; the merged latency includes them"),
    "WIDE-CI": "the cell's rounds ended (time budget or most rounds) before the 95% interval of its median was as narrow as asked: "
               "quote it with its interval",
    "BEHIND": "open loop: the client fell behind its send schedule",
    "LOSSY": (f"udp: more than {LOSSY_SHARE:.0%} of the datagrams sent got no echo within the timeout: msgs/s counts "
              "the echoes only and the latency only the datagrams that came back (the loss column says how many)"),
}

COLUMNS = [
    "server", "msgs/s (median ± sd)", "rounds", "95% interval", "MB/s", "p50 µs", "p99 µs", "p99.9 µs",
    "server CPU µs/msg", "RSS peak", "errors", "flags", "vs fastest",
]

#: an open-loop table compares tails at the same share of each server's peak, not the rates offered, and says
#: how often the client's CPU was taken from it (a polling client's stalls), which can set a tail by itself
OPEN_COLUMNS = COLUMNS[:-1] + ["p99 vs lowest", "client stalls"]


PROTO_COLUMNS = [
    "server", "protocol", "msgs/s (median ± sd)", "vs raw", "server CPU µs/msg (user+sys)", "cost over raw",
    "user µs/msg", "user cost over raw", "1 CPU tick in µs/msg", "flags",
]


_fmt = fmt


def _mib(b):
    return f"{b / (1 << 20):.1f} MiB" if b else "n/a"


def _delta(v, base):
    if not (math.isfinite(v) and math.isfinite(base)):
        return "n/a"
    return f"{v - base:+.3g}"


def _range(vals):
    return f" ({min(vals):.3g}–{max(vals):.3g})" if len(vals) >= 2 else ""


def _tick_us(c):
    """The resolution of a round's user CPU per message: one clock tick over the messages of its window."""
    durs = [float(r.workload.duration_s or 0) for r in c.results]
    msgs = c.median * (sorted(durs)[len(durs) // 2] if durs else 0.0)
    return TICK_S * 1e6 / msgs if msgs > 0 else float("nan")


def protocol_cost_rows(results):
    """The protocol-cost tables: ``[(title, [(row strings, flags, CellStats)])]``, one per protocol section.

    One row per (server, protocol), raw first; the cost columns are the
    framed cell's median minus the raw cell's median of the same server, same
    workload, same run.  CPU figures carry their min–max over rounds.
    """
    out = []
    for base, protos, cells in results.protocol_sections():
        raw_any = next(c for (s, p), c in cells.items() if p == "raw")
        rows = []
        for server in results.servers():
            raw = cells.get((server, "raw"))
            for proto in protos:
                c = cells.get((server, proto))
                if c is None:
                    continue
                tot, user = c.cpu_us_per_msg, c.user_us_per_msg
                if proto == "raw":
                    vs = cost = ucost = "(baseline)"
                elif raw is None:
                    vs = cost = ucost = "n/a (no raw cell)"
                else:
                    vs = f"{c.median / raw.median:.2f}×" if raw.median > 0 else "n/a"
                    cost = _delta(tot, raw.cpu_us_per_msg)
                    ucost = _delta(user, raw.user_us_per_msg)
                flags = c.flags()
                rows.append(([
                    server, proto, f"{_fmt(c.median)} ± {_fmt(c.stdev)}", vs,
                    _fmt(tot) + _range(c.cpu_us_per_msg_rounds()), cost,
                    _fmt(user) + _range(c.user_us_per_msg_rounds()), ucost, _fmt(_tick_us(c), 2), " ".join(flags) or "ok",
                ], flags, c))
        out.append((f"{raw_any.cell.title('payload')} · {', '.join(protos)}", rows))
    return out


PROTO_NOTE = ("Server CPU per message (µs, user+sys, and user alone), median over rounds with the min–max in brackets; ",
              Emph("cost over raw"), " is the framed protocol's median minus the raw median of the same server, measured "
              "in the same run at the same workload: the price of parsing and building each message. ", Emph("vs raw"),
              " is the ratio of msgs/s. The total is exact (the scheduler's runtime of the server's threads); its split "
              "into user and system comes from clock ticks of 10 ms, so a user figure (and a user difference) "
              "smaller than ", Emph("1 CPU tick in µs/msg"), " is below what one round can resolve. "
              "A flagged row's figures must not be quoted (see the warnings).")


def stalls_text(c):
    """An open-loop cell's "client stalls" cell: ``N, longest X ms`` over every round, "–" when not measured."""
    stalls = c.client_stalls
    if stalls is None:
        return "–"
    n, _, longest = stalls
    return f"{n}, longest {longest * 1e3:.1f} ms" if n else "0"


def stalls_sentence(cells):
    """The sentence under an open-loop table whose client was stalled (its CPU taken from it), or None."""
    seen = [c.client_stalls for c in cells if c.client_stalls is not None]
    n = sum(s[0] for s in seen)
    if not n:
        return None
    longest = max(s[2] for s in seen)
    return (f"The client's CPU was taken from it {n} time{'s' if n != 1 else ''} for {CLIENT_STALL_S * 1e3:g} ms "
            f"or more (longest {longest * 1e3:.1f} ms) during these windows: a p99 near that length says as much "
            "about this machine as about the server.")


#: how many of the threads that held an open-loop table's pinned CPUs its note names, longest first
HELD_NAMED = 3


def held_sentence(cells):
    """The sentence under an open-loop table whose pinned CPUs other threads held in long slices (the
    threads named, longest first), or None when none did or it was not measured."""
    held = [(c, h) for c in cells if (h := c.held) is not None]
    if not held or not any(h[1] > 0 for _, h in held):
        return None
    rounds = sorted(h[0] for _, h in held)
    typical, most = rounds[len(rounds) // 2], max(h[1] for _, h in held)
    threads = {}
    for _, (_, _, named) in held:
        for thread, pid, seconds in named:
            threads[(thread, pid)] = threads.get((thread, pid), 0.0) + seconds
    top = sorted(threads.items(), key=lambda kv: -kv[1])[:HELD_NAMED]
    names = ", ".join(f"{thread} (pid {pid}, {seconds * 1e3:.0f} ms in all)" for (thread, pid), seconds in top)
    return (f"Other threads held the pinned CPUs in slices of {STALL_SLICE_S * 1e3:g} ms or more for {typical * 1e3:.1f} ms "
            f"of a typical cell's round here (up to {most * 1e3:.1f} ms in one): {names}. A message due while one "
            "held the server's CPU or its load's could wait for it, so a p99 or p99.9 near those lengths may "
            "measure them as much as the server.")


def with_loss(columns):
    """``columns`` with a loss column before the flags (the columns of a table that holds a udp cell)."""
    i = columns.index("flags")
    return columns[:i] + ["loss"] + columns[i:]


def table_rows(results, workload_id):
    """The rows of one workload table, one per server, as lists of strings (plus the flags).

    A workload with a udp cell gets its loss before the flags (``with_loss`` names the column).
    """
    cells = [c for c in results.cells.values() if c.workload_id == workload_id]
    lossy = has_loss(cells)
    ranked = workload_ratios(cells, results.meta.baseline)
    rows = []
    for c in cells:
        lat = c.latency_summary()
        flags = c.flags()
        msgs = f"{_fmt(c.median)} ± {_fmt(c.stdev)} ({c.spread:.1%})"
        if c.cell.mode == "open":
            msgs += f" of {_fmt(c.target_rate)} offered"
        rounds = str(len(c.results)) + (f" ({c.remeasured} re-measured)" if c.remeasured else "")
        interval = c.interval().text() + (" of p99" if c.cell.mode == "open" else "")
        errs = str(c.errors_total)
        kinds = {k: v for k, v in c.errors_by_kind.items() if v}
        if kinds:
            errs += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")"
        # each server against the workload's reference (the fastest, or the lowest p99 in open loop, where each
        # server is offered the same share of its own peak; or the baseline), from the pass pairs
        r = ranked.ratios.get(c.server)
        if r is None:
            ratio = "n/a"
        elif c.server == ranked.reference:
            ratio = "1.00× (baseline)" if ranked.baseline else "1.00× (lowest)" if c.cell.mode == "open" else "1.00× (fastest)"
        else:
            ratio = r.text()
        ratio += f", rank {ranked.ranks.get(c.server, 'n/a')}"
        cpu = c.cpu_us_per_msg
        row = [c.server, msgs, rounds, interval, _fmt(c.mb_per_s), _fmt(lat.p50), _fmt(lat.p99), _fmt(lat.p999),
               _fmt(cpu), _mib(c.rss_peak_bytes), errs]
        if lossy:
            row.append(loss_text(c) or "–")
        tail = [stalls_text(c)] if c.cell.mode == "open" else []
        rows.append((row + [" ".join(flags) or "ok", ratio] + tail, flags, c))
    return rows


def _settings(results):
    plan = results.plan
    out = []
    if plan is not None:
        out.append(("servers", ", ".join(plan.servers)))
        out.append(("closed loop", f"sizes {', '.join(format_size(s) for s in plan.sizes)}; "
                                   f"connections {', '.join(str(c) for c in plan.conns)}; depth {plan.depth}"))
        if plan.open_pcts:
            out.append(("open loop", f"{', '.join(str(p) + '%' for p in plan.open_pcts)} of each server's peak; "
                                     f"{format_size(plan.open_size)}, {plan.open_conns} connections"))
        served = [n for n in plan.servers if _speaks_framed(plan, n)]
        if plan.protocols and served:
            out.append(("protocols", f"{', '.join(plan.protocols)} at {format_size(plan.proto_size)}, "
                                     f"{plan.proto_conns} connections, depth {plan.proto_depth}, closed loop; "
                                     f"servers: {', '.join(served)}"))
        out.append(("each round", _round_setting(plan, results)))
        out.append(("rounds per cell", _rounds_setting(plan)))
        out.append(("CPU pinning", f"server on CPU {list(plan.server_cpus)}, load client on CPU {list(plan.client_cpus)}"))
    out.append(("load engine", engine_setting(results)))
    out.append(("rounds", _rounds_taken(results)))
    out.append(("machine", results.machine_record().line()))
    tuning = _tuning(results.machine_record(), results.meta.damon_paused)
    if tuning:
        out.append(("machine tuning", tuning))
    out.append(("commit", results.commit()))
    out.append(("started", str(results.meta.started_at or "unknown")))
    if results.meta.finished_at:
        out.append(("finished", str(results.meta.finished_at)))
    return out


def engine_setting(results):
    """Which load loop measured which cells: one engine for all, or each engine with the cells it measured."""
    by_engine = {}
    for c in results.cells.values():
        by_engine.setdefault("+".join(c.engines), []).append(c)
    if len(by_engine) <= 1:
        engine = next(iter(by_engine), "epoll")
        return f"{engine} (every cell)"
    return "; ".join(f"{engine}: " + ", ".join(f"{c.server} {c.cell.workload_id}" for c in cells)
                     for engine, cells in sorted(by_engine.items()))


def _round_setting(plan, results):
    durations = sorted({float(r.workload.duration_s) for c in results.cells.values() if c.cell.mode == "open"
                        for r in c.results if r.workload.duration_s})
    open_s = ""
    if durations and durations != [plan.duration_s]:
        open_s = (f" (open loop: {', '.join(f'{d:g}' for d in durations)} s, long enough that one 4 ms scheduler "
                  f"hiccup cannot set a p99)")
    return (f"{plan.warmup_s} s warmup (excluded) + {plan.duration_s} s measured{open_s}, "
            f"{plan.interval_s} s intervals")


def _rounds_setting(plan):
    lo, hi = plan.min_rounds, plan.max_rounds
    if lo == hi:
        return f"{lo} (fixed)"
    budget = f"; the cells shared a run budget of {plan.run_budget_s:g} s" if plan.run_budget_s else ""
    p99 = float(plan.ci_for("open"))
    target = (f"the median msgs/s is within ±{float(plan.ci):.0%} of it (open loop: p99, ±{p99:.0%})"
              if p99 != float(plan.ci) else f"the median msgs/s (open loop: p99) is within ±{float(plan.ci):.0%} of it")
    return (f"{lo} to {hi}: until the 95% interval of {target}, at most {plan.cell_budget_s:g} s a cell{budget}; "
            f"an open-loop p99 leaves sooner when even {hi} rounds could not narrow it that far; "
            f"a disturbed round is measured again up to {plan.remeasure} times")


def _rounds_taken(results):
    cells = list(results.cells.values())
    counts = [len(c.results) for c in cells]
    again = sum(c.remeasured for c in cells)
    attempts = sum(len(c.discarded) for c in cells)
    kept = sum(c.disturbed_rounds for c in cells)
    per = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
    text = (f"{sum(counts)} in {len(cells)} cells ({per} per cell); "
            f"{again} re-measured because foreign load disturbed them ({attempts} attempt{'s' if attempts != 1 else ''} "
            f"set aside in raw/)")
    if kept:
        text += f"; {kept} kept disturbed (flagged DISTURBED)"
    return text


def _tuning(m, damon_paused=None):
    """The machine's tuning as ``pyperf system show`` would judge it, and DAMON's state, in one line ("" when
    unrecorded)."""
    parts = []
    if m.isolcpus is not None:
        parts.append(f"isolated CPUs {','.join(map(str, m.isolcpus)) or 'none'}")
    if m.nohz_full is not None:
        parts.append(f"nohz_full {','.join(map(str, m.nohz_full)) or 'none'}")
    if m.governor:
        gov = m.governor if isinstance(m.governor, str) else ", ".join(f"CPU {k}: {v}" for k, v in sorted(m.governor.items()))
        parts.append(f"governor {gov}")
    if m.smt is not None:
        parts.append(f"SMT {'on' if m.smt else 'off'}")
    if m.aslr:
        parts.append(f"ASLR {m.aslr}")
    if m.loadavg:
        parts.append("load average " + " ".join(f"{x:.2f}" for x in m.loadavg))
    if damon_paused:
        parts.append(f"DAMON paused for the run (--pause-damon: kdamond {', '.join(map(str, damon_paused))})")
    elif m.damon is not None:
        on = damon_running(m.damon)
        parts.append(f"DAMON on (kdamond {', '.join(str(x.get('kdamond')) for x in on)})" if on else "DAMON off")
    return "; ".join(parts)


def _damon_alert(results):
    """The warning of a run measured while DAMON was on (any round's machine, or the run's): "" when it was not."""
    for m in [results.machine_record()] + [r.machine for r in results.results if r.machine is not None]:
        text = damon_note(m.damon)
        if text:
            return text[0].upper() + text[1:] + "."
    return ""


def _speaks_framed(plan, server):
    spoken = plan.speaks.get(server)
    return any(p != "raw" and (spoken is None or p in spoken) for p in plan.protocols)


def _status_banner(results):
    status = results.meta.status
    if status in ("interrupted", "failed", "running"):
        what = {"interrupted": "was interrupted", "failed": "failed", "running": "did not finish (still running, or killed)"}[status]
        planned = results.meta.planned_cells
        if planned:
            return (f"INCOMPLETE: this run {what}; {len(results.cells)} of {planned} cells were measured "
                    f"({len(results.results)} rounds) and are reported below; the last one may have been cut short.")
        done = len(results.results)
        planned = results.meta.planned_runs
        of = f" {done} of {planned}" if planned else f" {done}"
        return f"INCOMPLETE: this run {what};{of} load runs finished and are reported below."
    return None



def _foreign(c):
    server, client, steal = c.interference_summary()
    parts = [f"{label} {v:.0%}" for label, v in (("server CPUs", server), ("client CPUs", client), ("steal", steal))
             if v is not None and v > 0]
    return f" (foreign load up to: {', '.join(parts)})" if parts else ""


def _warnings(results):
    out = []
    for c in results.cells.values():
        for f in c.flags():
            detail = ""
            if f == "INVALID" and c.invalid_reasons:
                detail = ": " + "; ".join(c.invalid_reasons)
            elif f == "STARVED":
                detail = f": up to {c.starved} of {c.cell.conns} connections completed no message in a round"
            elif f == "DISTURBED":
                detail = f": {c.disturbed_rounds} of {len(c.results)} rounds" + _foreign(c)
            elif f == "WIDE-CI":
                detail = f": interval {c.interval().text()} after {len(c.results)} rounds, asked ±{c.ci_target:.0%}"
            elif f == "UNSTABLE":
                detail = f": spread {c.robust_spread:.1%} over {len(c.results)} rounds"
            elif f == "OUTLIERS":
                off = ", ".join(_fmt(x) for x in c.outlier_rounds)
                detail = f": {len(c.outlier_rounds)} of {len(c.results)} rounds ({off} msgs/s, median {_fmt(c.median)})"
            elif f == "LOSSY":
                d = c.datagrams
                detail = f": {d.lost:,} of {d.sent:,} datagrams lost ({c.loss_share:.2%}) over {len(c.results)} rounds"
            elif f == "CLIENT-BOUND":
                detail = (f": client {'busy' if c.client_polling else 'CPU'} {c.client_load:.0%} "
                          f"({'+'.join(c.engines)} load engine)")
            out.append((f, f"{c.server}, {c.cell.title()}{detail}"))
    return out


RESULTS_NOTE = ("msgs/s is the median over rounds ± the standard deviation; ", Emph("rounds"), " counts the rounds "
                "kept (and those measured again because foreign load disturbed them); ", Emph("95% interval"),
                " is the distribution-free 95% confidence interval of the median msgs/s (open loop: of the median "
                "p99), from the rounds' order statistics (none below 6 rounds); latency percentiles come from the "
                "exact merge of every round's HDR histogram; server CPU is user+sys per message echoed (the "
                "scheduler's runtime of the server's threads, from schedstat); ",
                Emph("vs fastest"), " is the ratio of msgs/s to the fastest valid server of the same workload (or to "
                "the baseline, ", Code("--baseline NAME"), "), the Hodges-Lehmann estimate from the pairs of rounds "
                "measured in the same pass, with its 95% interval (Wilcoxon's signed-rank; none below 6 pairs), and "
                "the rank on it: a server ranks below another only when the interval of their ratio lies wholly "
                "below 1, so = marks a tie the pairs cannot break; in open "
                "loop each server is offered the same share of its own peak, so its msgs/s is the rate offered and ",
                Emph("p99 vs lowest"), " compares instead its p99 with the lowest p99 at that share, the same way. ",
                Emph("client stalls"), f" (open loop, a polling client): how many times over all of the cell's rounds "
                f"the client's CPU was taken from it for {CLIENT_STALL_S * 1e3:g} ms or more (a gap between two passes "
                "of its loop: a kernel thread, another process, the hypervisor), and the longest; every message due "
                "in one went out late, so a p99 near that length measures the machine too. Not a flag.")


def _left_out(results):
    """The banner naming the raw files the figures leave out, unreadable or inconsistent ("" when none)."""
    if not results.skipped:
        return ""
    n = len(results.skipped)
    files = "; ".join(f"{os.path.basename(f)} ({why})" for f, why in results.skipped)
    return (f"{n} raw file{'s' if n != 1 else ''} left out of every figure, unreadable or inconsistent "
            f"(kept in raw/): {files}")


def _flag_counts(results):
    counts = {}
    for c in results.cells.values():
        for f in c.flags():
            counts[f] = counts.get(f, 0) + 1
    return counts


def _flags_line(results):
    """One line counting the flagged cells by flag ("" parts for none)."""
    counts = _flag_counts(results)
    n = len(results.cells)
    if not counts:
        return ("Flags: none. None: every run was valid and served every connection, no round was left disturbed, "
                f"no client was saturated, every spread is under {UNSTABLE_SPREAD:.0%} of the median.")
    flagged = sum(1 for c in results.cells.values() if c.flags())
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"Flags: {flagged} of {n} cells carry a flag ({parts}); a flagged figure must not be quoted as it "
            f"stands. Each table's flags column marks them; why each cell was flagged is listed at the end.")


def summary_table(summary):
    """The summary's Table: one row per server (``summary.build_summary``)."""
    share = f"p99 µs at {summary.open_share}% of peak (rank)" if summary.open_share is not None else None
    versus = f"vs {summary.reference}" if summary.baseline else "vs fastest"
    cols = ["server", "rank", "msgs/s", "95% interval", versus, "server CPU µs/msg"]
    if share:
        cols.append(share)
    cols += [f"{p} over raw µs/msg" for p in summary.protocols]
    lossy = has_loss(r.headline for r in summary.rows if r.headline is not None)
    if lossy:
        cols.append("loss")
    cols.append("flags")
    rows = []
    for r in summary.rows:
        h = r.headline
        cells = [r.server, r.rank or "n/a"]
        if h is not None:
            vs = "n/a" if r.ratio is None else "1.00×" if r.server == summary.reference else r.ratio.text()
            cells += [_fmt(h.median), h.interval().text() if h.interval().bounded else
                      f"{_fmt(min(h.msgs))}–{_fmt(max(h.msgs))} (rounds)", vs, _fmt(h.cpu_us_per_msg)]
        else:
            cells += ["n/a", "n/a", "n/a", "n/a"]
        if share:
            cells.append(f"{_fmt(r.open_cell.latency_summary().p99)} ({r.open_rank or 'n/a'})"
                         if r.open_cell is not None else "n/a")
        for p in summary.protocols:
            v = r.proto_cost.get(p, float("nan"))
            cells.append(f"{v:+.3g}" if math.isfinite(v) else "n/a")
        if lossy:
            cells.append((loss_text(r.headline) if r.headline is not None else "") or "n/a")
        cells.append(" ".join(r.flags) or "ok")
        rows.append(Row(tuple(cells), tuple(r.flags)))
    return Table(tuple(cols), tuple(rows), cols.index("flags"))


def _summary_note(summary):
    parts = []
    if summary.headline_title:
        parts.append(f"msgs/s, its 95% interval and server CPU are the headline workload's ({summary.headline_title})")
    if summary.open_share is not None:
        which = ("" if summary.open_share == 75 else
                 f"; this run has no 75% cell, so the highest share measured, {summary.open_share}%")
        parts.append(f"p99 is open loop at {summary.open_share}% of each server's own peak{which}")
    if summary.protocols:
        parts.append("the protocol columns are each protocol's server CPU per message minus raw's, same server, "
                     "same run, same workload")
    text = "; ".join(parts)
    ref = f"the baseline, {summary.reference}" if summary.baseline else "the fastest server"
    how = ("from the pairs of rounds measured in the same pass (Wilcoxon's signed-rank interval)" if summary.paired else
           "from the two cells' rounds, unpaired (this folder was not measured in passes)")
    return ((text[:1].upper() + text[1:] + ". ") if text else "") + (
        f"Each server's msgs/s is given as a ratio to {ref}, with its 95% interval {how}. Rank: a server ranks "
        "below another only when the interval of their ratio lies wholly below 1 (for the p99, above 1); an = "
        "marks a tie the rounds cannot break.")


def _section(doc, section, note, drawn, plot):
    """A dimension's section (``dimensions.Section``): its note, table, sentences and, when drawn, its plot."""
    doc.add(Heading(2, section.title), Paragraph(note, "note"), _table(section.columns, section.rows))
    for sentence in section.sentences:
        doc.add(Paragraph(sentence, "verdict"))
    if plot in drawn:
        doc.add(Heading(3, drawn[plot]), Image(f"plots/{plot}", drawn[plot]))


def dimension_sections(results):
    """``{"transports": ..., "workers": ..., "pythons": ..., "tls": ...}``, each a Section (``TlsSection`` for TLS) or
    None (``dimensions.py``)."""
    return {"transports": transport_section(results), "workers": workers_section(results),
            "pythons": python_section(results), "tls": tls_section(results)}


def _tls_section(doc, section, drawn):
    """The TLS section (``dimensions.TlsSection``): the tax table, the handshake table, the sentences, the plot."""
    doc.add(Heading(2, section.title))
    if section.tax_rows:
        doc.add(Heading(3, "What TLS costs per message"), Paragraph(section.caption, "note"),
                _table(section.tax_columns, section.tax_rows))
    if section.handshake_rows:
        doc.add(Heading(3, "Handshakes"), Paragraph(section.handshake_caption, "note"),
                _table(section.handshake_columns, section.handshake_rows))
    for sentence in section.sentences:
        doc.add(Paragraph(sentence, "verdict"))
    if "tls.png" in drawn:
        doc.add(Heading(3, drawn["tls.png"]), Image("plots/tls.png", drawn["tls.png"]))


def build_document(results, plots, sections=None, dimension_plots=None):
    """The report of ``results`` as a Document; ``plots`` is what ``make_plots`` returned (files under ``plots/``).

    ``sections`` is ``dimension_sections(results)`` (built when not given), ``dimension_plots`` what
    ``make_dimension_plots`` returned (``{file name: title}`` of those drawn).
    """
    sections = dimension_sections(results) if sections is None else sections
    dimension_plots = dimension_plots or {}
    doc = Document("sockbench report", flag_help=FLAG_HELP)
    banner = _status_banner(results)
    if banner:
        doc.add(Alert(banner))
    left_out = _left_out(results)
    if left_out:
        doc.add(Alert(left_out))
    damon = _damon_alert(results)
    if damon:
        doc.add(Alert(damon))
    summary = build_summary(results)
    doc.add(Heading(2, "Summary"), Paragraph(_summary_note(summary), "note"), summary_table(summary))
    verdict = list(summary.sentences)
    if sections.get("transports") is not None and sections["transports"].verdict:
        verdict.append(sections["transports"].verdict)
    if sections.get("tls") is not None and sections["tls"].verdict:
        verdict.append(sections["tls"].verdict)
    for sentence in verdict:
        doc.add(Paragraph(sentence, "verdict"))
    counts = _flag_counts(results)
    doc.add(Paragraph(_flags_line(results), "flags" if counts else "good"))
    if counts:
        doc.add(Legend(tuple(sorted(counts))))
    doc.add(Heading(2, "Machine and settings"), KeyValues(tuple(_settings(results))))
    doc.add(Heading(2, "Results by workload"), Paragraph(RESULTS_NOTE, "note"))
    for wid, cell in results.workloads().items():
        cols = OPEN_COLUMNS if cell.mode == "open" else COLUMNS
        rows = table_rows(results, wid)
        if has_loss(c for _, _, c in rows):
            cols = with_loss(cols)
        doc.add(Heading(3, cell.title()), _table(cols, rows))
        stalled = stalls_sentence(c for _, _, c in rows) if cell.mode == "open" else None
        if stalled:
            doc.add(Paragraph(stalled, "note"))
        held = held_sentence([c for _, _, c in rows]) if cell.mode == "open" else None
        if held:
            doc.add(Paragraph(held, "note"))
    proto = protocol_cost_rows(results)
    if proto:
        doc.add(Heading(2, "Cost of each protocol over raw"), Paragraph(PROTO_NOTE, "note"))
        for title, rows in proto:
            doc.add(Heading(3, title), _table(PROTO_COLUMNS, rows))
    for key, plot in (("transports", "transports.png"), ("workers", "workers.png"), ("pythons", None)):
        if sections.get(key) is not None:
            _section(doc, sections[key], sections[key].caption, dimension_plots, plot)
    if sections.get("tls") is not None:
        _tls_section(doc, sections["tls"], dimension_plots)
    doc.add(Heading(2, "Plots"))
    for fname, title, skipped in plots:
        if skipped:
            doc.add(Paragraph((Strong(title), f": not drawn ({skipped})."), "note"))
        else:
            doc.add(Heading(3, title), Image(f"plots/{fname}", title))
            if PLOT_CAPTIONS.get(fname):
                doc.add(Paragraph(PLOT_CAPTIONS[fname], "note"))
    warns = _warnings(results)
    if warns:
        doc.add(Heading(2, "Flagged cells"), WarningList(tuple(warns), legend=False))
    doc.add(Paragraph(("Generated by ", Code("sockbench report"), f" at {iso_utc()}."), "note"))
    return doc


def _table(columns, rows):
    """A flagged table from ``[(row strings, flags, CellStats)]``; the flags column is the one named "flags"."""
    return Table(tuple(columns), tuple(Row(tuple(r), tuple(f)) for r, f, _ in rows), columns.index("flags"))


def build_report(path, baseline=None):
    """Rebuild ``plots/``, ``report.md``, ``report.html`` and the formats (``hgrm/``, ``results.csv``, ``ci/``).

    ``baseline``: the server every ratio is to (default: the run's ``--baseline``, in ``meta.json``, else
    the fastest at each workload).  Returns ``{"md": path, "html": path, "plots": [...], "results": Results,
    "formats": [paths], "sections": dimension_sections(), "dimension_plots": {file name: title}}``;
    a missing or corrupt folder, or a baseline that is no server of it, raises a one-line SockbenchError.
    """
    results = load_results(path)
    if baseline is not None:
        if baseline not in results.servers():
            raise SockbenchError(f"--baseline {baseline} is not a server of {path}; its servers: "
                                 f"{', '.join(results.servers())}", exit_code=2)
        results.meta = replace(results.meta, baseline=baseline)
    plot_dir = os.path.join(path, "plots")
    try:
        plots = make_plots(results, plot_dir)
        sections = dimension_sections(results)
        dimension_plots = make_dimension_plots(results, plot_dir, sections)
        md_path = os.path.join(path, "report.md")
        html_path = os.path.join(path, "report.html")
        doc = build_document(results, plots, sections, dimension_plots)
        with open(md_path, "w") as f:
            f.write(to_markdown(doc))
        with open(html_path, "w") as f:
            f.write(to_html(doc, path))
        formats = write_formats(results, path)
    except OSError as e:
        raise SockbenchError(f"cannot write the report into {path}: {e.strerror or e}") from None
    return {"md": md_path, "html": html_path, "plots": plots, "results": results, "formats": formats,
            "sections": sections, "dimension_plots": dimension_plots}
