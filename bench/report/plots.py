"""The plots of a sockbench report, drawn with matplotlib's Agg backend (no display needed).

Why it is built this way: a plot is often seen alone (pasted in a chat, an
issue, a README), so each carries what is needed to read it: a title naming
the workload, axis labels with units, a legend, a footnote with machine,
commit and date, and a caption in the report (``PLOT_CAPTIONS``).  Colours are
fixed per server (distinct for up to twenty) across all plots.

Rules:

* Drawn from ``store.Results`` (the raw rounds) only, so an interrupted run's
  report can be rebuilt.
* A plot without data is skipped and reported, never drawn empty; a curve of
  one point becomes bars or is left out with a note.  Short log axes still get
  labelled ticks (``short_log_ticks``); point labels are avoided where they
  would overlap.
* A legend entry (plot 7: the axis label) carries DISTURBED or STARVED when a
  round drawn there was, so such a figure is not quoted as it stands.
* Plots 1-6 show the closed-loop grid and the open-loop sweep (raw, the grid's
  depth); the protocol section appears only in plot 7.

1. ``throughput_vs_conns.png``  closed loop, msgs/s against connections, one panel per size, min-max band
2. ``throughput_bars.png``      grouped bars of msgs/s per server by size, min-max error bars, value labels
3. ``latency_spectrum.png``     HDR-style percentile spectrum, x = 1/(1-p) on a log axis
4. ``latency_vs_load.png``      open-loop p50 and p99 against the share of each server's peak offered
5. ``efficiency.png``           msgs per server CPU-second (netperf's service demand, inverted)
6. ``run_chart.png``            throughput per interval over one run, warmup shaded
7. ``protocol_cost.png``        server CPU µs per message by protocol, user and sys stacked, cost over raw on each bar

``DIMENSION_PLOTS`` (``make_dimension_plots``, only when the run has the
dimension): ``transports.png`` and ``workers.png`` (msgs/s and server CPU per
message by transport, and against the server processes).
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sockbench.bench.report.dimensions import server_cpus  # noqa: E402
from sockbench.units import format_size  # noqa: E402

__all__ = ["PLOTS", "PLOT_CAPTIONS", "make_plots", "si", "short_log_ticks", "save_plain", "DIMENSION_PLOTS",
           "make_dimension_plots", "TRANSPORT_COLORS"]

#: (file name, title) in report order
PLOTS = [
    ("throughput_vs_conns.png", "Throughput against concurrency"),
    ("throughput_bars.png", "Throughput by message size"),
    ("latency_spectrum.png", "Latency percentile spectrum"),
    ("latency_vs_load.png", "Latency against offered load"),
    ("efficiency.png", "Server CPU efficiency"),
    ("run_chart.png", "Throughput over one run"),
    ("protocol_cost.png", "Server CPU cost of each protocol"),
]

#: one sentence under each plot in the report: what it shows and where its figures come from
PLOT_CAPTIONS = {
    "throughput_vs_conns.png": "Median msgs/s of each server against the number of connections, one panel per message "
                               "size; the band spans the rounds' min-max.",
    "throughput_bars.png": "Median msgs/s per server and message size at the most connections measured; error bars "
                           "span the rounds' min-max.",
    "latency_spectrum.png": "Every percentile of the merged HDR histograms (all rounds, all load processes); open-loop "
                            "latency counts from each message's intended send time.",
    "latency_vs_load.png": "Open-loop p50 and p99 against the load offered, as a share of each server's own "
                           "closed-loop peak, so every server is compared at the same share.",
    "efficiency.png": "Messages echoed per server CPU-second: the server's CPU is the scheduler's runtime of its "
                      "threads over the measured window (/proc/PID/task/TID/schedstat, in ns), not clock ticks.",
    "run_chart.png": "Throughput per interval over the median round of each server; the warmup (shaded) is "
                     "excluded from every figure.",
    "protocol_cost.png": "Server CPU per message by protocol: the total is the scheduler's runtime of the server's "
                         "threads (schedstat); its user/sys split comes from the 10 ms clock ticks.",
}

DPI = 110
SPECTRUM_TICKS = [(50.0, "50%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%")]


def si(v, unit=""):
    """1234 -> '1.23k'; readable value labels on bars."""
    if v is None or not math.isfinite(v):
        return "n/a"
    a = abs(v)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            x = v / div
            return f"{x:.3g}{suf}{unit}"
    return f"{v:.3g}{unit}"


def _log_axis(axis):
    """Readable log-scale labels: 1k, 2k, 5k... instead of 2x10^3."""
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))

    def minor(v, _):
        lead = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
        return si(v) if round(lead) in (2, 5) else ""

    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor))


def short_log_ticks(axis):
    """Tick labels for a log axis spanning less than a decade, where the default locator labels nothing.

    Picks round values (1, 1.5, 2, 3 ... 9 times a power of ten) inside the view, at most six; with fewer
    than two of those, four values evenly spaced on the log scale, to two significant digits.
    """
    lo, hi = sorted(axis.get_view_interval())
    if not (lo > 0 and math.isfinite(hi)) or hi / lo >= 10:
        return
    cands = [m * 10.0 ** d for d in range(int(math.floor(math.log10(lo))), int(math.ceil(math.log10(hi))) + 1)
             for m in (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)]
    ticks = [v for v in cands if lo <= v <= hi]
    if len(ticks) > 6:
        ticks = ticks[:: math.ceil(len(ticks) / 6)]
    if len(ticks) < 2:
        ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 4)})
    axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


#: the flags a legend entry carries (the figure measures the machine, or not every connection)
LEGEND_FLAGS = ("DISTURBED", "STARVED")


def _label(server, cells):
    """A server's legend entry: its name, and the ``LEGEND_FLAGS`` of any of its ``cells`` drawn there."""
    flags = [f for f in LEGEND_FLAGS if any(c.server == server and f in c.flags() for c in cells)]
    return f"{server} ({' '.join(flags)})" if flags else server


def _colors(servers):
    """One colour per server, distinct for up to 20: tab10's ten, then tab20's light twins of them.

    Past ten servers (the registry has eleven) tab10 alone would give the eleventh the first one's colour.
    """
    dark = plt.get_cmap("tab10")
    light = plt.get_cmap("tab20")
    return {s: dark(i) if i < 10 else light(2 * ((i - 10) % 10) + 1) for i, s in enumerate(servers)}


def _finish(fig, results, path, note=None):
    foot = results.footnote()
    if note:
        foot = note + "\n" + foot
    fig.text(0.01, 0.005, foot, fontsize=7, color="0.35", ha="left", va="bottom")
    # "tight" keeps the legends placed outside the axes inside the image
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    _shrink(path)


def save_plain(fig, path):
    """Save a figure that carries no single run's footnote (``sockbench history``), shrunk like the others."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    _shrink(path)


def _shrink(path):
    """Re-save a plot with a 256-colour palette: a third of the bytes, so the self-contained HTML stays small.

    A plot has a few flat colours and their anti-aliased edges; no dithering keeps the lines clean.
    """
    from PIL import Image  # deferred: Pillow comes with matplotlib, and only drawing needs it

    with Image.open(path) as im:
        pal = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal.save(path, optimize=True)


def _closed(results):
    """The closed-loop grid: raw cells at the grid's depth (not the protocol section's)."""
    depth = results.grid_depth()
    return [c for c in results.cells.values()
            if c.cell.mode == "closed" and c.cell.protocol == "raw" and c.cell.depth == depth and results.in_base(c)]


def _open(results):
    return [c for c in results.cells.values() if c.cell.mode == "open" and c.cell.protocol == "raw" and results.in_base(c)]


def _rounds_note(cells):
    n = sorted({len(c.results) for c in cells})
    txt = str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"
    return f"{txt} round{'s' if n != [1] else ''} per point"


def _headline_closed(results):
    """The closed-loop cells at the largest connection count (the most loaded grid column)."""
    closed = _closed(results)
    if not closed:
        return [], None
    top = max(c.cell.conns for c in closed)
    return [c for c in closed if c.cell.conns == top], top


def plot_throughput_vs_conns(results, path, colors):
    closed = _closed(results)
    if not closed:
        return "no closed-loop cells in this run"
    sizes = sorted({c.cell.size for c in closed})
    conns_all = sorted({c.cell.conns for c in closed})
    if len(conns_all) < 2:
        # one point per line is no curve: the bars by message size show these cells
        return (f"one connection count measured ({conns_all[0]}): its figures are the bars of "
                f"\"Throughput by message size\"")
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes) + 0.8, 4.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for server in results.servers():
            pts = sorted((c for c in closed if c.server == server and c.cell.size == size), key=lambda c: c.cell.conns)
            if not pts:
                continue
            x = [c.cell.conns for c in pts]
            y = [c.median for c in pts]
            lo = [min(c.msgs) for c in pts]
            hi = [max(c.msgs) for c in pts]
            ax.plot(x, y, marker="o", color=colors[server], label=_label(server, closed))
            ax.fill_between(x, lo, hi, color=colors[server], alpha=0.18, linewidth=0)
        ax.set_title(f"{format_size(size)} messages")
        ax.set_xlabel("concurrent connections")
        if len(conns_all) > 1 and conns_all[-1] / conns_all[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(conns_all)
        ax.set_xticklabels([str(c) for c in conns_all])
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("throughput (msgs/s, median)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(matplotlib.patches.Patch(color="0.6", alpha=0.3))
    labels.append("band: min-max over rounds")
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=1, bbox_to_anchor=(0.995, 0.9))
    fig.suptitle("Closed-loop echo throughput against concurrency (higher is better)")
    fig.tight_layout(rect=(0, 0.06, 0.84, 0.95))
    _finish(fig, results, path, _rounds_note(closed) + "; each connection keeps one message in flight")
    return None


def _grouped_bars(ax, groups, servers, colors, value_of, err_of, label_fmt, labels=None):
    n = max(1, len(servers))
    width = 0.8 / n
    xs = np.arange(len(groups))
    for i, server in enumerate(servers):
        vals, lo, hi = [], [], []
        for g in groups:
            v = value_of(server, g)
            e = err_of(server, g)
            vals.append(v if v is not None else np.nan)
            lo.append(max(0.0, v - e[0]) if v is not None else 0.0)
            hi.append(max(0.0, e[1] - v) if v is not None else 0.0)
        pos = xs - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, vals, width * 0.92, color=colors[server], label=(labels or {}).get(server, server),
                      yerr=[lo, hi], capsize=3, error_kw={"elinewidth": 1, "ecolor": "0.2"})
        for b, v, up in zip(bars, vals, hi):
            if v is not None and math.isfinite(v):
                # above the error bar, so the label never sits on it
                ax.annotate(label_fmt(v), (b.get_x() + b.get_width() / 2, v + up),
                            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7, rotation=90 if n > 4 else 0)
    ax.set_xticks(xs)
    return xs


def _bars_by_size(results, path, colors, cells, value, rounds, ylabel, title, note):
    """Grouped bars, one group per message size, one bar per server; error bars span the rounds."""
    sizes = sorted({c.cell.size for c in cells})
    servers = [s for s in results.servers() if any(c.server == s for c in cells)]
    by = {(c.server, c.cell.size): c for c in cells}
    fig, ax = plt.subplots(figsize=(max(7.5, 2.8 + 0.55 * len(servers) * len(sizes)), 5))

    def val(s, g):
        c = by.get((s, g))
        return value(c) if c else None

    def err(s, g):
        c = by.get((s, g))
        r = rounds(c) if c else []
        return (min(r), max(r)) if r else (0, 0)

    _grouped_bars(ax, sizes, servers, colors, val, err, si, {s: _label(s, cells) for s in servers})
    ax.set_xticklabels([f"{format_size(s)} messages" for s in sizes])
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
    ax.margins(y=0.18)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="server", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _finish(fig, results, path, note)


def plot_throughput_bars(results, path, colors):
    cells, top = _headline_closed(results)
    if not cells:
        return "no closed-loop cells in this run"
    _bars_by_size(results, path, colors, cells, lambda c: c.median, lambda c: c.msgs,
                  "throughput (msgs/s, median of rounds)",
                  f"Closed-loop msgs/s per server by message size, {top} connections (higher is better)",
                  _rounds_note(cells) + "; error bars: min-max over rounds")
    return None


def _spectrum(ax, cells, colors):
    drawn = 0
    for c in cells:
        h = c.hdr()
        if h is None or h.get_total_count() == 0:
            continue
        count = h.get_total_count()
        xmax = max(2.0, min(1e5, float(count)))
        xs = np.logspace(0, math.log10(xmax), 160)
        pct = 100.0 * (1.0 - 1.0 / xs)
        ys = [max(1e-3, c.percentile_us(p)) for p in pct]
        ax.plot(xs, ys, color=colors[c.server], label=f"{_label(c.server, [c])}, n={si(count)}")
        drawn += 1
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1.0 / (1.0 - p / 100.0) for p, _ in SPECTRUM_TICKS]
    ax.set_xticks(ticks)
    ax.set_xticklabels([t for _, t in SPECTRUM_TICKS])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(1, max(ticks[-1], ax.get_xlim()[1]))
    ax.set_xlabel("percentile (log scale of 1/(1-p))")
    _log_axis(ax.yaxis)
    short_log_ticks(ax.yaxis)
    ax.grid(True, which="major", alpha=0.3)
    # the curves rise to the right: the lower right corner is where they never are
    ax.legend(fontsize=8, loc="lower right")
    return drawn


def plot_latency_spectrum(results, path, colors):
    panels = []
    cells, top = _headline_closed(results)
    if cells:
        size = min(c.cell.size for c in cells)
        pick = [c for c in cells if c.cell.size == size]
        panels.append((pick, f"closed loop, {format_size(size)}, {top} connections"))
    opens = _open(results)
    if opens:
        pcts = sorted({c.cell.load_pct for c in opens})
        pct = min(pcts, key=lambda p: abs(p - 75))
        pick = [c for c in opens if c.cell.load_pct == pct]
        o = pick[0].cell
        panels.append((pick, f"open loop at {pct}% of each server's peak, {format_size(o.size)}, {o.conns} connections"))
    if not panels:
        return "no cells in this run"
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    drawn = 0
    for ax, (pick, title) in zip(axes[0], panels):
        drawn += _spectrum(ax, pick, colors)
        ax.set_title(title, fontsize=9)
    if not drawn:
        plt.close(fig)
        return "no latency histograms (hdr) in this run"
    axes[0][0].set_ylabel("round-trip latency (µs, log scale)")
    fig.suptitle("Latency by percentile, HDR style (lower is better; every round's histogram merged)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    _finish(fig, results, path, "open-loop latency is measured from the intended send time (no coordinated omission)")
    return None


def plot_latency_vs_load(results, path, colors):
    """The open-loop "hockey stick": p50 and p99 against the share of each server's peak offered.

    The x axis is the share, the same for every server, so no point needs a label; with one share only,
    a curve would be a single point, and the figures are drawn as bars instead.
    """
    opens = _open(results)
    if not opens:
        return "no open-loop cells in this run"
    servers = [s for s in results.servers() if any(c.server == s for c in opens)]
    shares = sorted({c.cell.load_pct for c in opens})
    o = opens[0].cell
    figures = ((lambda lat: lat.p50, "median (p50)"), (lambda lat: lat.p99, "p99"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, (figure, label) in zip(axes, figures):
        if len(shares) >= 2:
            for server in servers:
                pts = sorted((c for c in opens if c.server == server), key=lambda c: c.cell.load_pct)
                ax.plot([c.cell.load_pct for c in pts], [figure(c.latency_summary()) for c in pts], marker="o",
                        color=colors[server], label=_label(server, pts))
            ax.set_xticks(shares)
            ax.set_xticklabels([f"{p}%" for p in shares])
            ax.set_xlabel("offered load, share of the server's own closed-loop peak")
        else:
            pick = {c.server: c for c in opens}
            xs = np.arange(len(servers))
            vals = [figure(pick[s].latency_summary()) for s in servers]
            bars = ax.bar(xs, vals, 0.7, color=[colors[s] for s in servers])
            for b, v in zip(bars, vals):
                if v is not None and math.isfinite(v):
                    ax.annotate(si(v), (b.get_x() + b.get_width() / 2, v), xytext=(0, 2), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7)
            ax.set_xticks(xs)
            ax.set_xticklabels([_label(s, opens) for s in servers], rotation=20 if len(servers) > 4 else 0,
                               ha="right" if len(servers) > 4 else "center", fontsize=8)
            ax.set_xlabel(f"server, each offered {shares[0]}% of its own closed-loop peak")
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.grid(True, which="both", axis="y", alpha=0.25)
        ax.set_title(f"{label} latency", fontsize=10)
    short_log_ticks(axes[0].yaxis)
    axes[0].set_ylabel("round-trip latency (µs, log scale)")
    if len(shares) >= 2:
        axes[1].legend(fontsize=8, title="server", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Open-loop latency against offered load, {format_size(o.size)}, {o.conns} connections (lower is better)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    _finish(fig, results, path, _rounds_note(opens) + "; latency from the intended send time, merged HDR histograms; "
            "each server is offered the same shares of its own peak")
    return None


def plot_efficiency(results, path, colors):
    cells, top = _headline_closed(results)
    cells = [c for c in cells if math.isfinite(c.msgs_per_cpu_s)]
    if not cells:
        return "no server CPU figures in this run"
    _bars_by_size(results, path, colors, cells, lambda c: c.msgs_per_cpu_s, lambda c: c.msgs_per_cpu_s_rounds(),
                  "messages echoed per server CPU-second (user+sys)",
                  f"Server CPU efficiency, closed loop, {top} connections (higher is better)",
                  "server CPU over the measured window: the scheduler's runtime of its threads (schedstat), split into "
                  "user and sys by the clock ticks\n(the ticks alone in a round where a thread ended inside the window); "
                  "error bars: min-max over rounds")
    return None


def plot_run_chart(results, path, colors):
    cells, top = _headline_closed(results)
    if cells:
        size = min(c.cell.size for c in cells)
        cells = [c for c in cells if c.cell.size == size]
    else:
        cells = list(results.cells.values())[:8]
    drawn = 0
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    warm_end = 0.0
    for c in cells:
        if not c.results:
            continue
        # the round whose throughput is the median one: a typical run, not the best
        order = sorted(range(len(c.results)), key=lambda i: c.msgs[i])
        idx = order[len(order) // 2]
        ts = c.results[idx].timeseries
        msgs = ts.msgs or []
        iv = float(ts.interval_s or 0)
        if not msgs or iv <= 0:
            continue
        # interval i covers [i*iv, (i+1)*iv): draw it as a flat step over that span
        t = np.arange(len(msgs) + 1) * iv
        y = np.asarray(list(msgs) + [msgs[-1]], dtype=float) / iv
        ax.step(t, y, where="post", color=colors[c.server],
                label=f"{_label(c.server, [c])}, round {idx + 1} of {len(c.results)}")
        warm_end = max(warm_end, int(ts.warmup_intervals or 0) * iv)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no per-interval time series in this run"
    if warm_end > 0:
        ax.axvspan(0, warm_end, color="0.85", zorder=0, label="warmup (excluded from results)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("throughput per interval (msgs/s)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    c0 = cells[0].cell
    ax.set_title(f"Run chart: {c0.mode} loop, {format_size(c0.size)}, {c0.conns} connections (the median round of each server)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _finish(fig, results, path, "a steady line after the warmup means a stable measurement")
    return None


#: one fixed colour per protocol (the bars of one server are its protocols)
PROTOCOL_COLORS = {"raw": "#7f8c8d", "frame": "#2e86c1", "json": "#d68910"}


def plot_protocol_cost(results, path, colors):
    sections = [sec for sec in results.protocol_sections() if any(results.in_base(c) for c in sec[2].values())]
    if not sections:
        return "no cell measured in a framed protocol and in raw at the same workload"
    # the section with the most cells (the run's protocol section)
    base, protos, cells = max(sections, key=lambda s: len(s[2]))
    servers = [s for s in results.servers() if any(k[0] == s for k in cells)]
    if not any(math.isfinite(c.cpu_us_per_msg) for c in cells.values()):
        return "no server CPU figures in the protocol cells"
    n = len(protos)
    width = 0.8 / n
    xs = np.arange(len(servers))
    fig, ax = plt.subplots(figsize=(max(8.0, 2.6 + 0.42 * len(servers) * n), 5.2))
    ymax = 0.0
    for i, proto in enumerate(protos):
        pos = xs - 0.4 + width * (i + 0.5)
        user, sys_, lo, hi = [], [], [], []
        for s in servers:
            c = cells.get((s, proto))
            tot = c.cpu_us_per_msg if c else float("nan")
            u = c.user_us_per_msg if c else float("nan")
            user.append(u)
            sys_.append(tot - u if math.isfinite(tot) and math.isfinite(u) else float("nan"))
            r = c.cpu_us_per_msg_rounds() if c else []
            lo.append(max(0.0, tot - min(r)) if r and math.isfinite(tot) else 0.0)
            hi.append(max(0.0, max(r) - tot) if r and math.isfinite(tot) else 0.0)
        col = PROTOCOL_COLORS.get(proto, plt.get_cmap("tab10")(i % 10))
        ax.bar(pos, user, width * 0.92, color=col, label=f"{proto}: user")
        tops = [u + sy for u, sy in zip(user, sys_)]
        ax.bar(pos, sys_, width * 0.92, bottom=user, color=col, alpha=0.45, hatch="///", edgecolor="white",
               linewidth=0, label=f"{proto}: sys",
               yerr=[lo, hi], capsize=2.5, error_kw={"elinewidth": 1, "ecolor": "0.2"})
        for j, (x, top, up) in enumerate(zip(pos, tops, hi)):
            if not math.isfinite(top):
                continue
            ymax = max(ymax, top + up)
            text = f"{top:.3g}"
            raw = cells.get((servers[j], "raw"))
            if proto != "raw" and raw is not None and math.isfinite(raw.cpu_us_per_msg):
                text += f"\n{top - raw.cpu_us_per_msg:+.2g}"
            ax.annotate(text, (x, top + up), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=6.5, linespacing=0.95)
    ax.set_xticks(xs)
    ax.set_xticklabels([_label(s, list(cells.values())) for s in servers], rotation=20 if len(servers) > 4 else 0,
                       ha="right" if len(servers) > 4 else "center")
    ax.set_ylabel("server CPU per message (µs, user + sys)")
    ax.set_ylim(0, ymax * 1.14 if ymax > 0 else 1.0)  # room for the two-line labels
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="protocol: CPU", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    any_cell = next(iter(cells.values())).cell
    depth = f", {any_cell.depth} in flight per connection" if any_cell.depth != 1 else ""
    ax.set_title(f"Server CPU per message by protocol: closed loop, {format_size(any_cell.size)} payload, "
                 f"{any_cell.conns} connections{depth} (lower is better)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _finish(fig, results, path, "solid: user CPU, hatched: sys CPU, stacked to user+sys; error bars: min-max of user+sys over rounds\n"
            "labels: user+sys µs/msg and, for a framed protocol, its cost over raw (same server, same run, same workload)")
    return None


#: one fixed colour per transport (the bars of one server are its transports)
TRANSPORT_COLORS = {"tcp": "#4c72b0", "tcp6": "#8fb0de", "unix": "#55a868", "udp": "#c44e52"}

#: the plots of the dimension sections (``dimensions.py``), drawn only when the run has the dimension
DIMENSION_PLOTS = [
    ("transports.png", "Throughput and server CPU by transport"),
    ("workers.png", "Throughput and server CPU against server processes"),
    ("tls.png", "What TLS costs each server: CPU per message and per handshake"),
]


def _section_bars(ax, section, servers, value, ylabel):
    """Grouped bars on ``ax``: one group per server, one bar per value of the section's dimension."""
    vals = section.values
    n = len(vals)
    width = 0.8 / n
    xs = np.arange(len(servers))
    top = 0.0
    for i, v in enumerate(vals):
        pos = xs - 0.4 + width * (i + 0.5)
        ys = [value(section.cells[(s, v)]) if (s, v) in section.cells else float("nan") for s in servers]
        col = TRANSPORT_COLORS.get(v, plt.get_cmap("Set2")(i % 8))
        bars = ax.bar(pos, ys, width * 0.92, color=col, label=str(v))
        for b, y in zip(bars, ys):
            if math.isfinite(y):
                top = max(top, y)
                ax.annotate(si(y), (b.get_x() + b.get_width() / 2, y), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6.5, rotation=90 if len(servers) * n > 16 else 0)
    ax.set_xticks(xs)
    rot = len(servers) > 4
    ax.set_xticklabels([_label(s, list(section.cells.values())) for s in servers], rotation=30 if rot else 0,
                       ha="right" if rot else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
    ax.grid(True, axis="y", alpha=0.3)


def plot_transports(results, path, colors, section):
    """Two panels of bars, server by transport: msgs/s (higher is better), server CPU µs/msg (lower is better)."""
    servers = [s for s in results.servers() if any(k[0] == s for k in section.cells)]
    width = max(7.0, 1.4 + 0.32 * len(servers) * len(section.values))
    fig, axes = plt.subplots(2, 1, figsize=(width, 8.2))
    _section_bars(axes[0], section, servers, lambda c: c.median, "msgs/s (median of rounds)")
    axes[0].set_title("msgs/s (higher is better)", fontsize=10)
    _section_bars(axes[1], section, servers, lambda c: c.cpu_us_per_msg, "server CPU µs per message (user+sys)")
    axes[1].set_title("server CPU per message (lower is better)", fontsize=10)
    axes[0].legend(fontsize=8, title="transport", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    any_cell = next(iter(section.cells.values())).cell
    fig.suptitle(f"By transport: closed loop, {format_size(any_cell.size)}, {any_cell.conns} connections", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    _finish(fig, results, path, _rounds_note(list(section.cells.values())) + "; server CPU from schedstat; "
            "udp's msgs/s counts the echoes only (loss in the table)")
    return None


def plot_workers(results, path, colors, section):
    """Two panels of lines against the worker count, one line per server: msgs/s and server CPU µs/msg."""
    servers = [s for s in results.servers() if any(k[0] == s for k in section.cells)]
    counts = section.values
    cpus = server_cpus(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (value, ylabel, title) in zip(axes, (
            (lambda c: c.median, "msgs/s (median of rounds)", "msgs/s (higher is better)"),
            (lambda c: c.cpu_us_per_msg, "server CPU µs per message, all workers (user+sys)",
             "server CPU per message (lower is better)"))):
        for i, s in enumerate(servers):
            pts = [(w, section.cells[(s, w)]) for w in counts if (s, w) in section.cells]
            ax.plot([w for w, _ in pts], [value(c) for _, c in pts], marker="o", color=colors[s],
                    linestyle="-" if i < 10 else "--", label=_label(s, [c for _, c in pts]))
        if cpus and counts[-1] > len(cpus):
            # past the server's CPUs the workers share them: shade that part of the axis
            ax.axvspan(max(len(cpus) + 0.5, counts[0] - 0.5), counts[-1] + 0.5, color="0.9", zorder=0,
                       label=f"workers share the server's {len(cpus)} CPU(s)")
        ax.set_xticks(counts)
        ax.set_xticklabels([str(w) for w in counts])
        ax.set_xlabel("server processes (--workers)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
        ax.grid(True, alpha=0.3)
        ax.set_title(title, fontsize=10)
    axes[1].legend(fontsize=8, title="server", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    any_cell = next(iter(section.cells.values())).cell
    fig.suptitle(f"Against server processes: closed loop, {format_size(any_cell.size)}, {any_cell.conns} connections"
                 f"{'' if any_cell.transport == 'tcp' else ', over ' + any_cell.transport}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    where = (f"the server had {len(cpus)} CPU(s): {','.join(map(str, cpus))}" if cpus else "the server's CPUs are unrecorded")
    _finish(fig, results, path, _rounds_note(list(section.cells.values())) + f"; {where}; server CPU summed over the "
            "workers (schedstat)")
    return None


def _pair_bars(ax, servers, series, ylabel, title):
    """Grouped bars: one group per server, one bar per ``(label, colour, {server: (value, lo, hi)})`` of ``series``."""
    n = len(series)
    width = 0.8 / n
    xs = np.arange(len(servers))
    top = 0.0
    for i, (label, col, values) in enumerate(series):
        pos = xs - 0.4 + width * (i + 0.5)
        ys = [values.get(s, (float("nan"),))[0] for s in servers]
        ax.bar(pos, ys, width * 0.92, color=col, label=label)
        for x, y in zip(pos, ys):
            if math.isfinite(y):
                top = max(top, y)
                ax.annotate(si(y), (x, y), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=6.5, rotation=90 if len(servers) * n > 16 else 0)
    ax.set_xticks(xs)
    rot = len(servers) > 4
    ax.set_xticklabels(servers, rotation=30 if rot else 0, ha="right" if rot else "center", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, top * 1.2 if top > 0 else 1.0)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def plot_tls(results, path, colors, section):
    """One panel per TLS workload (server CPU µs/msg, plain and over TLS) and one of server CPU per connection
    (plain, full handshake, resumed); lower is better everywhere."""
    panels = []
    for key, servers in (section.pairs or {}).items():
        names = [s for s in results.servers() if s in servers]
        plain = {s: (servers[s][0].cpu_us_per_msg,) for s in names}
        tls = {s: (servers[s][1].cpu_us_per_msg,) for s in names}
        panels.append((names, [("plain", "#8fb0de", plain), ("TLS", "#c44e52", tls)], "server CPU µs per message",
                       f"closed loop, {key.conns} × {format_size(key.size)}: CPU per message (lower is better)"))
    connect = section.connect or {}
    names = [s for s in results.servers() if s in connect and ({"full", "resumed"} & set(connect[s]))]
    if names:
        series = []
        for kind, label, col in (("plain", "plain connection", "#8fb0de"), ("full", "full handshake", "#c44e52"),
                                 ("resumed", "resumed handshake", "#dd8452")):
            vals = {s: (connect[s][kind].cpu_us_per_msg,) for s in names if kind in connect[s]}
            if vals:
                series.append((label, col, vals))
        panels.append((names, series, "server CPU µs per connection",
                       "connect mode: CPU per connection, echo of 64 B included (lower is better)"))
    if not panels:
        return "no cell was measured both plain and over TLS"
    width = max(7.0, 1.6 + 0.5 * max(len(p[0]) for p in panels) * 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.4 * len(panels) + 0.8), squeeze=False)
    for ax, (names, series, ylabel, title) in zip(axes[:, 0], panels):
        _pair_bars(ax, names, series, ylabel, title)
    fig.suptitle(f"TLS against plain, same run, over {results.base_transport()}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    cells = [c for v in (section.pairs or {}).values() for pair in v.values() for c in pair]
    cells += [c for kinds in connect.values() for c in kinds.values()]
    _finish(fig, results, path, _rounds_note(cells) + "; server CPU user+sys from schedstat, median of rounds")
    return None


def make_dimension_plots(results, outdir, sections):
    """Draw the plot of each present section (``{"transports": Section or None, "workers": ...}``) into ``outdir``.

    Returns ``{file name: title}`` of the plots drawn; a stale one of an absent section is removed.
    """
    os.makedirs(outdir, exist_ok=True)
    colors = _colors(results.servers())
    draw = {"transports.png": (plot_transports, sections.get("transports")),
            "workers.png": (plot_workers, sections.get("workers")),
            "tls.png": (plot_tls, sections.get("tls"))}
    out = {}
    for fname, title in DIMENSION_PLOTS:
        path = os.path.join(outdir, fname)
        if os.path.exists(path):
            os.unlink(path)
        fn, section = draw[fname]
        if section is not None and fn(results, path, colors, section) is None:
            out[fname] = title
    return out


_DRAW = {
    "throughput_vs_conns.png": plot_throughput_vs_conns,
    "throughput_bars.png": plot_throughput_bars,
    "latency_spectrum.png": plot_latency_spectrum,
    "latency_vs_load.png": plot_latency_vs_load,
    "efficiency.png": plot_efficiency,
    "run_chart.png": plot_run_chart,
    "protocol_cost.png": plot_protocol_cost,
}


def make_plots(results, outdir):
    """Draw every plot the data allows into ``outdir``.

    Returns ``[(file name, title, None or the reason it was skipped)]`` in report order.
    """
    os.makedirs(outdir, exist_ok=True)
    colors = _colors(results.servers())
    out = []
    for fname, title in PLOTS:
        path = os.path.join(outdir, fname)
        if os.path.exists(path):
            os.unlink(path)
        skipped = _DRAW[fname](results, path, colors)
        out.append((fname, title, skipped))
    return out
