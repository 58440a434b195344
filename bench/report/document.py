"""Build ``report.md`` and a self-contained ``report.html`` (plots embedded) from a results folder.

Why it is built this way: the report is rebuilt from ``raw/*.json`` alone
(``sockbench report DIR``), so it works the same after a complete run, after a
Ctrl-C, or on a folder copied from another machine.  The Markdown file is for
reading in a repository (it links ``plots/*.png``); the HTML file is the one to
share: one file, images inlined as base64, no network, no scripts.

What a reader needs first comes first: the machine, the commit and the
settings; then the warnings (invalid, client-bound, unstable runs), because a
figure under a warning must not be quoted; then one table per workload with a
row per server (a framed protocol's workload is a workload of its own); then,
when the run has a protocol section, what each protocol costs over ``raw`` in
server CPU per message, per server, from the same run at the same workload
(user+sys, and user alone: the interpreter's share, where the implementations
differ); and the plots.
"""

import base64
import html
import math
import os

from sockbench.bench.report.plots import make_plots
from sockbench.bench.report.store import load_results, machine_line
from sockbench.thresholds import UNSTABLE_SPREAD
from sockbench.errors import SockbenchError
from sockbench.timestamps import iso_utc
from sockbench.units import format_size
from sockbench.procfs import TICK_S

__all__ = ["build_report", "workload_title", "table_rows", "protocol_cost_rows", "FLAG_HELP", "PROTO_COLUMNS"]

FLAG_HELP = {
    "INVALID": "a wrong echoed byte, a lost connection or another error made a round invalid: do not quote it",
    "CLIENT-BOUND": "the load client saturated its CPU: the figure measures the client, not the server",
    "UNSTABLE": f"the spread between rounds is {UNSTABLE_SPREAD:.0%} of the median or more (pyperf's rule): re-run on a quieter machine",
    "BEHIND": "open loop: the client fell behind its send schedule",
}

COLUMNS = [
    "server", "msgs/s (median ± sd)", "MB/s", "p50 µs", "p99 µs", "p99.9 µs",
    "server CPU µs/msg", "RSS peak", "errors", "flags", "vs fastest",
]


PROTO_COLUMNS = [
    "server", "protocol", "msgs/s (median ± sd)", "vs raw", "server CPU µs/msg (user+sys)", "cost over raw",
    "user µs/msg", "user cost over raw", "1 CPU tick in µs/msg", "flags",
]


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _mib(b):
    return f"{b / (1 << 20):.1f} MiB" if b else "n/a"


def workload_title(cell):
    t = f"{cell.mode} loop · {format_size(cell.size)} messages · {cell.conns} connection{'s' if cell.conns != 1 else ''}"
    if cell.depth != 1:
        t += f" · depth {cell.depth}"
    if cell.mode == "open":
        t += f" · {cell.load_pct}% of each server's peak"
    if cell.protocol != "raw":
        t += f" · {cell.protocol} protocol"
    return t


def _delta(v, base):
    if not (math.isfinite(v) and math.isfinite(base)):
        return "n/a"
    return f"{v - base:+.3g}"


def _range(vals):
    return f" ({min(vals):.3g}–{max(vals):.3g})" if len(vals) >= 2 else ""


def _tick_us(c):
    """The resolution of a round's user CPU per message: one clock tick over the messages of its window."""
    durs = [float((r.get("workload") or {}).get("duration_s") or 0) for r in c.runs]
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
        cell = raw_any.cell
        title = (f"{cell.mode} loop · {format_size(cell.size)} payload · {cell.conns} connection{'s' if cell.conns != 1 else ''}"
                 + (f" · depth {cell.depth}" if cell.depth != 1 else "") + f" · {', '.join(protos)}")
        out.append((title, rows))
    return out


PROTO_NOTE = ("Server CPU per message (µs, user+sys, and user alone), median over rounds with the min–max in brackets; "
              "*cost over raw* is the framed protocol's median minus the raw median of the same server, measured "
              "in the same run at the same workload: the price of parsing and building each message. *vs raw* is "
              "the ratio of msgs/s. The total is exact (the scheduler's runtime of the server's threads); its split "
              "into user and system comes from clock ticks of 10 ms, so a user figure (and a user difference) "
              "smaller than *1 CPU tick in µs/msg* is below what one round can resolve. "
              "A flagged row's figures must not be quoted (see the warnings).")


def table_rows(results, workload_id):
    """The rows of one workload table, one per server, as lists of strings (plus the flags)."""
    cells = [c for c in results.cells.values() if c.workload_id == workload_id]
    good = [c.median for c in cells if not c.invalid and math.isfinite(c.median)]
    best = max(good) if good else 0.0
    rows = []
    for c in cells:
        lat = c.latency()
        flags = c.flags()
        msgs = f"{_fmt(c.median)} ± {_fmt(c.stdev)} ({c.spread:.1%}, n={len(c.runs)})"
        if c.cell.mode == "open":
            msgs += f" of {_fmt(c.target_rate)} offered"
        errs = str(c.errors_total)
        kinds = {k: v for k, v in c.errors_by_kind.items() if v}
        if kinds:
            errs += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")"
        ratio = f"{c.median / best:.2f}×" if best > 0 and not c.invalid else "n/a"
        if best > 0 and not c.invalid and c.median >= best:
            ratio = "1.00× (fastest)"
        cpu = c.cpu_us_per_msg
        rows.append(([
            c.server, msgs, _fmt(c.mb_per_s), _fmt(lat["p50"]), _fmt(lat["p99"]), _fmt(lat["p999"]),
            _fmt(cpu), _mib(c.rss_peak_bytes), errs, " ".join(flags) or "ok", ratio,
        ], flags, c))
    return rows


def _settings(results):
    plan = results.meta.get("plan") or {}
    out = []
    if plan:
        out.append(("servers", ", ".join(plan.get("servers", []))))
        out.append(("closed loop", f"sizes {', '.join(format_size(s) for s in plan.get('sizes', []))}; "
                                   f"connections {', '.join(str(c) for c in plan.get('conns', []))}; depth {plan.get('depth', 1)}"))
        if plan.get("open_pcts"):
            out.append(("open loop", f"{', '.join(str(p) + '%' for p in plan['open_pcts'])} of each server's peak; "
                                     f"{format_size(plan.get('open_size', 64))}, {plan.get('open_conns')} connections"))
        served = [n for n in plan.get("servers", []) if _speaks_framed(plan, n)]
        if plan.get("protocols") and served:
            out.append(("protocols", f"{', '.join(plan['protocols'])} at {format_size(plan.get('proto_size', 64))}, "
                                     f"{plan.get('proto_conns')} connections, depth {plan.get('proto_depth')}, closed loop; "
                                     f"servers: {', '.join(served)}"))
        out.append(("each round", f"{plan.get('warmup_s')} s warmup (excluded) + {plan.get('duration_s')} s measured, "
                                  f"{plan.get('interval_s')} s intervals; {plan.get('rounds')} rounds per cell"))
        out.append(("CPU pinning", f"server on CPU {plan.get('server_cpus')}, load client on CPU {plan.get('client_cpus')}"))
    out.append(("machine", machine_line(results.machine())))
    out.append(("commit", results.commit()))
    out.append(("started", str(results.meta.get("started_at", "unknown"))))
    if results.meta.get("finished_at"):
        out.append(("finished", str(results.meta["finished_at"])))
    return out


def _speaks_framed(plan, server):
    spoken = (plan.get("speaks") or {}).get(server)
    return any(p != "raw" and (spoken is None or p in spoken) for p in plan.get("protocols") or ())


def _status_banner(results):
    status = results.meta.get("status")
    done = len(results.runs)
    planned = results.meta.get("planned_runs")
    if status in ("interrupted", "failed", "running"):
        what = {"interrupted": "was interrupted", "failed": "failed", "running": "did not finish (still running, or killed)"}[status]
        of = f" {done} of {planned}" if planned else f" {done}"
        return f"INCOMPLETE: this run {what};{of} load runs finished and are reported below."
    return None


def _warnings(results):
    out = []
    for c in results.cells.values():
        for f in c.flags():
            detail = ""
            if f == "INVALID" and c.invalid_reasons:
                detail = ": " + "; ".join(c.invalid_reasons)
            elif f == "UNSTABLE":
                detail = f": spread {c.spread:.1%} over {len(c.runs)} rounds"
            elif f == "CLIENT-BOUND":
                detail = f": client {'busy' if c.client_polling else 'CPU'} {c.client_load:.0%}"
            out.append((f, f"{c.server}, {workload_title(c.cell)}{detail}"))
    return out


def _md(results, plots):
    L = ["# sockbench report", ""]
    banner = _status_banner(results)
    if banner:
        L += [f"> **{banner}**", ""]
    L += ["| setting | value |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in _settings(results)]
    L.append("")
    warns = _warnings(results)
    L.append("## Warnings")
    L.append("")
    if warns:
        for flag, text in warns:
            L.append(f"- **{flag}** {text}")
        L.append("")
        for flag in sorted({f for f, _ in warns}):
            L.append(f"*{flag}*: {FLAG_HELP[flag]}.  ")
    else:
        L.append("None: every run was valid, no client was saturated, every spread is under "
                 f"{UNSTABLE_SPREAD:.0%} of the median.")
    L.append("")
    L.append("## Results by workload")
    L.append("")
    L.append("msgs/s is the median over rounds ± the standard deviation; latency percentiles come from the "
             "exact merge of every round's HDR histogram; server CPU is user+sys per message echoed; "
             "*vs fastest* is the ratio of msgs/s to the fastest valid server of the same workload "
             "(in open loop each server is offered a share of its own peak, so there it compares "
             "the loads each one sustained; compare latencies at equal shares).")
    for wid, cell in results.workloads().items():
        L += ["", f"### {workload_title(cell)}", ""]
        L.append("| " + " | ".join(COLUMNS) + " |")
        L.append("|" + "---|" * len(COLUMNS))
        for row, flags, _ in table_rows(results, wid):
            if flags:
                row = list(row)
                row[9] = "**" + row[9] + "**"
            L.append("| " + " | ".join(row) + " |")
    proto = protocol_cost_rows(results)
    if proto:
        L += ["", "## Cost of each protocol over raw", "", PROTO_NOTE]
        for title, rows in proto:
            L += ["", f"### {title}", ""]
            L.append("| " + " | ".join(PROTO_COLUMNS) + " |")
            L.append("|" + "---|" * len(PROTO_COLUMNS))
            for row, flags, _ in rows:
                if flags:
                    row = list(row)
                    row[-1] = "**" + row[-1] + "**"
                L.append("| " + " | ".join(row) + " |")
    L += ["", "## Plots", ""]
    for fname, title, skipped in plots:
        if skipped:
            L += [f"**{title}**: not drawn ({skipped}).", ""]
        else:
            L += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
    L.append(f"Generated by `sockbench report` at {iso_utc()}.")
    return "\n".join(L) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
table.settings td{text-align:left;white-space:normal}
tr.flagged td{background:#fff4f0}
.flag{display:inline-block;padding:1px 6px;border-radius:3px;font-weight:bold;font-size:11px;color:#fff;margin-right:3px}
.INVALID{background:#c0392b} .CLIENT-BOUND{background:#d35400} .UNSTABLE{background:#b7950b} .BEHIND{background:#7d3c98}
.ok{color:#1e8449}
.banner{background:#c0392b;color:#fff;padding:.7em 1em;border-radius:4px;font-weight:bold}
.warnbox{border:2px solid #d35400;background:#fdf2e9;padding:.5em 1em;border-radius:4px}
.good{border:1px solid #1e8449;background:#eafaf1;padding:.5em 1em;border-radius:4px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0 1.5em}
.note{color:#555;font-size:13px}
"""


def _badge(flags):
    if not flags:
        return '<span class="ok">ok</span>'
    return "".join(f'<span class="flag {f}" title="{html.escape(FLAG_HELP[f])}">{f}</span>' for f in flags)


def _html(results, plots, plot_dir):
    e = html.escape
    H = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         "<title>sockbench report</title>", f"<style>{_CSS}</style></head><body>", "<h1>sockbench report</h1>"]
    banner = _status_banner(results)
    if banner:
        H.append(f'<p class="banner">{e(banner)}</p>')
    H.append('<table class="settings">')
    for k, v in _settings(results):
        H.append(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>")
    H.append("</table>")
    warns = _warnings(results)
    H.append("<h2>Warnings</h2>")
    if warns:
        H.append('<div class="warnbox"><ul>')
        for flag, text in warns:
            H.append(f"<li>{_badge([flag])} {e(text)}</li>")
        H.append("</ul>")
        for flag in sorted({f for f, _ in warns}):
            H.append(f'<p class="note"><b>{flag}</b>: {e(FLAG_HELP[flag])}.</p>')
        H.append("</div>")
    else:
        H.append(f'<p class="good">None: every run was valid, no client was saturated, every spread is under {UNSTABLE_SPREAD:.0%} of the median.</p>')
    H.append("<h2>Results by workload</h2>")
    H.append('<p class="note">msgs/s is the median over rounds ± the standard deviation; latency percentiles come from the '
             "exact merge of every round's HDR histogram; server CPU is user+sys per message echoed; "
             "<i>vs fastest</i> is the ratio of msgs/s to the fastest valid server of the same workload "
             "(in open loop each server is offered a share of its own peak, so there it compares "
             "the loads each one sustained; compare latencies at equal shares).</p>")
    for wid, cell in results.workloads().items():
        H.append(f"<h3>{e(workload_title(cell))}</h3><table><tr>")
        H.append("".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
        for row, flags, _ in table_rows(results, wid):
            cls = ' class="flagged"' if flags else ""
            tds = [f"<td>{e(v)}</td>" for v in row]
            tds[9] = f"<td>{_badge(flags)}</td>"
            H.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
        H.append("</table>")
    proto = protocol_cost_rows(results)
    if proto:
        H.append("<h2>Cost of each protocol over raw</h2>")
        H.append(f'<p class="note">{e(PROTO_NOTE).replace("*cost over raw*", "<i>cost over raw</i>").replace("*vs raw*", "<i>vs raw</i>").replace("*1 CPU tick in µs/msg*", "<i>1 CPU tick in µs/msg</i>")}</p>')
        for title, rows in proto:
            H.append(f"<h3>{e(title)}</h3><table><tr>")
            H.append("".join(f"<th>{e(c)}</th>" for c in PROTO_COLUMNS) + "</tr>")
            for row, flags, _ in rows:
                cls = ' class="flagged"' if flags else ""
                tds = [f"<td>{e(v)}</td>" for v in row]
                tds[-1] = f"<td>{_badge(flags)}</td>"
                H.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
            H.append("</table>")
    H.append("<h2>Plots</h2>")
    for fname, title, skipped in plots:
        if skipped:
            H.append(f'<p class="note"><b>{e(title)}</b>: not drawn ({e(skipped)}).</p>')
            continue
        with open(os.path.join(plot_dir, fname), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        H.append(f"<h3>{e(title)}</h3>")
        H.append(f'<img alt="{e(title)}" src="data:image/png;base64,{data}">')
    H.append(f'<p class="note">Generated by <code>sockbench report</code> at {e(iso_utc())}.</p>')
    H.append("</body></html>")
    return "\n".join(H) + "\n"


def build_report(path):
    """Rebuild ``plots/``, ``report.md`` and ``report.html`` in a results folder.

    Returns ``{"md": path, "html": path, "plots": [...], "results": Results}``;
    a missing or corrupt folder raises a one-line SockbenchError.
    """
    results = load_results(path)
    plot_dir = os.path.join(path, "plots")
    try:
        plots = make_plots(results, plot_dir)
        md_path = os.path.join(path, "report.md")
        html_path = os.path.join(path, "report.html")
        with open(md_path, "w") as f:
            f.write(_md(results, plots))
        with open(html_path, "w") as f:
            f.write(_html(results, plots, plot_dir))
    except OSError as e:
        raise SockbenchError(f"cannot write the report into {path}: {e.strerror or e}") from None
    return {"md": md_path, "html": html_path, "plots": plots, "results": results}
