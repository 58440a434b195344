"""The report's first screen: one row per server and a few sentences that state the verdict for this machine.

Why it is built this way: a reader opens a benchmark report to learn which
server to use for which job; the per-workload tables that prove it come
after.  So the summary picks, from whatever the run measured (nothing here
names a server, a protocol or a dimension: rows, columns and sentences come
from the cells present), the figures that decide:

* the **headline workload**: the closed-loop raw cell of the grid with the
  smallest message and the most connections (the most loaded small-message
  point, where the servers differ most), its median msgs/s, its 95%
  interval, and the server CPU per message there;
* the **open-loop p99 at 75% of each server's own peak** (each server is
  offered the same share of what it sustained, so the comparison is fair to
  the slow ones); when the run has no 75% cell, the highest share measured,
  and the column says which;
* the **cost of each framed protocol over raw**, in server CPU µs per
  message, from the protocol section (same server, same run, same workload);
* each server's **ratio to the fastest** (or to ``--baseline NAME``) at the
  headline workload, with its 95% interval from the pass pairs
  (``ratios.workload_ratios``: in a run measured in passes, the rounds of
  one pass are pairs, and the machine's drift leaves their ratio alone),
  and the **ranking** on it, with ties: a server ranks below another only
  when the interval of their ratio lies wholly below 1, so two servers the
  pairs cannot tell apart share a rank (``2=``).  A folder written before
  the passes has no pairs: the interval is then the unpaired one of the two
  cells' rounds, and the note says so.
* the open-loop p99 follows the same rule: its column carries the p99's
  rank (``1=``), and the sentence names a server with "the lowest p99" only
  when the pairs say so, else the servers that tie for it.

The verdict sentences are generated from the same rows: which server is
fastest overall and at each message size, how much of the server CPU per
message is the kernel's (system time) against the interpreter's (user), how
the tails compare at the same share of peak, and what framing costs.
"""

import math
from dataclasses import dataclass, field

from sockbench.bench.report.dimensions import headline_cells
from sockbench.bench.report.ratios import workload_ratios
from sockbench.units import format_size

__all__ = ["Summary", "SummaryRow", "build_summary", "rank_with_ties", "OPEN_SHARE"]

#: the share of each server's own peak at which the summary compares open-loop tails
OPEN_SHARE = 75


@dataclass
class SummaryRow:
    server: str
    rank: str = ""
    headline: object = None  # CellStats of the headline workload, or None
    open_cell: object = None  # CellStats of the open-loop share compared, or None
    proto_cost: dict = field(default_factory=dict)  # protocol -> server CPU µs/msg over raw (nan when unknown)
    flags: list = field(default_factory=list)
    #: the headline figure over the reference's (``ratios.PairedRatio``), None when not ranked
    ratio: object = None
    #: the open-loop p99's rank with ties ("1=") among the servers at the compared share
    open_rank: str = ""


@dataclass
class Summary:
    headline_title: str | None
    open_share: int | None
    open_title: str | None
    protocols: list
    rows: list
    sentences: list
    #: the server the ratios are to (the fastest, or the baseline), and whether it is the baseline asked for
    reference: str | None = None
    baseline: bool = False
    #: True when the ratios come from pass pairs (False: a folder without passes; unpaired intervals)
    paired: bool = True


def _closed_grid(results):
    depth = results.grid_depth()
    return [c for c in results.cells.values()
            if c.cell.mode == "closed" and c.cell.protocol == "raw" and c.cell.depth == depth and results.in_base(c)]


def _bounds(c):
    """The range a ranking compares: the 95% interval of the median, else the rounds' min-max."""
    iv = c.interval()
    if iv.bounded:
        return iv.lo, iv.hi
    m = c.msgs
    return (min(m), max(m)) if m else (float("nan"), float("nan"))


def rank_with_ties(cells):
    """``{server: "1" | "2=" ...}`` by median msgs/s: a server is outranked only by one whose range lies wholly above."""
    good = [c for c in cells if not c.invalid and math.isfinite(c.median)]
    bounds = {c.server: _bounds(c) for c in good}
    ranks = {}
    for c in good:
        ranks[c.server] = 1 + sum(1 for o in good if o is not c and bounds[o.server][0] > bounds[c.server][1])
    out = {}
    for s, r in ranks.items():
        shared = sum(1 for v in ranks.values() if v == r) > 1
        out[s] = f"{r}=" if shared else str(r)
    for c in cells:
        out.setdefault(c.server, "n/a")
    return out


def _open_share(results):
    opens = [c for c in results.cells.values() if c.cell.mode == "open" and c.cell.protocol == "raw" and results.in_base(c)]
    if not opens:
        return [], None, None
    shares = sorted({c.cell.load_pct for c in opens})
    share = OPEN_SHARE if OPEN_SHARE in shares else shares[-1]
    cells = [c for c in opens if c.cell.load_pct == share]
    return cells, share, cells[0].cell.title()


def _us(v):
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _fmt_rate(v):
    if not math.isfinite(v):
        return "n/a"
    return f"{v / 1000:.3g}k" if v >= 1000 else f"{v:.3g}"


def _join(items):
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _by_size_sentence(results, baseline=None):
    grid = _closed_grid(results)
    sizes = sorted({c.cell.size for c in grid})
    if len(sizes) < 2:
        return None
    parts = []
    for size in sizes:
        conns = max(c.cell.conns for c in grid if c.cell.size == size)
        cells = [c for c in grid if c.cell.size == size and c.cell.conns == conns]
        ranks = workload_ratios(cells, baseline).ranks
        top = [c.server for c in cells if ranks.get(c.server) in ("1", "1=")]
        if top:
            parts.append(f"{format_size(size)}: {' / '.join(top)}")
    return ("Fastest by message size (closed loop, the most connections measured; a slash is a tie): "
            + "; ".join(parts) + ".") if parts else None


def _kernel_sentence(cells):
    rows = []
    for c in cells:
        tot, user = c.cpu_us_per_msg, c.user_us_per_msg
        if math.isfinite(tot) and tot > 0 and math.isfinite(user):
            rows.append((c.server, tot, max(0.0, tot - user)))
    if len(rows) < 1:
        return None
    kernel = sorted(s for _, _, s in rows)
    lean = min(rows, key=lambda r: r[1])
    heavy = max(rows, key=lambda r: r[1])
    text = (f"Server CPU per message runs from {lean[1]:.3g} µs ({lean[0]}) to {heavy[1]:.3g} µs ({heavy[0]}); "
            f"the kernel's share (system time) is {kernel[0]:.3g}–{kernel[-1]:.3g} µs of it for every server, "
            f"{lean[2] / lean[1]:.0%} of {lean[0]}'s total")
    if heavy[0] != lean[0]:
        text += f" and {heavy[2] / heavy[1]:.0%} of {heavy[0]}'s: the rest is the interpreter and the event loop (user time)"
    return text + "."


def _tail_sentence(opens, share, ranked):
    """The sentence on the open-loop tails: the lowest p99 only when the pairs decide it, else the tie."""
    tails = {c.server: c.latency_summary().p99 for c in opens if not c.invalid}
    tails = {s: v for s, v in tails.items() if v is not None and math.isfinite(v)}
    if len(tails) < 2 or not ranked.ranks:
        return None
    leaders = [s for s in ranked.leaders() if s in tails]
    last = [s for s, r in ranked.ranks.items() if s in tails and r.rstrip("=").isdigit()]
    worst_rank = max((int(ranked.ranks[s].rstrip("=")) for s in last), default=0)
    worst = [s for s in last if int(ranked.ranks[s].rstrip("=")) == worst_rank]
    if len(leaders) == 1:
        text = f"Offered {share}% of its own peak, {leaders[0]} has the lowest p99 ({_us(tails[leaders[0]])} µs)"
    else:
        low = min(leaders or tails, key=lambda s: tails[s])
        text = (f"Offered {share}% of its own peak, {_join(sorted(leaders))} tie for the lowest p99 (the 95% "
                f"intervals of their ratios include 1; the lowest median is {low}'s, {_us(tails[low])} µs)")
    if len(worst) == 1 and worst_rank > 1:
        text += f", and {worst[0]} has the highest ({_us(tails[worst[0]])} µs)"
    return text + "."


def build_summary(results, baseline=None):
    """The ``Summary`` of ``results`` (see the module doc); ratios to ``baseline`` (default: the meta's
    ``baseline``, else the fastest server)."""
    baseline = baseline or results.meta.baseline
    head, head_title = headline_cells(results)
    opens, share, open_title = _open_share(results)
    sections = [sec for sec in results.protocol_sections() if any(results.in_base(c) for c in sec[2].values())]
    protos = []
    cost = {}
    if sections:
        _, section_protos, section_cells = sections[0]
        protos = [p for p in section_protos if p != "raw"]
        for (server, proto), c in section_cells.items():
            raw = section_cells.get((server, "raw"))
            if proto != "raw" and raw is not None:
                cost[(server, proto)] = c.cpu_us_per_msg - raw.cpu_us_per_msg
    servers = results.servers()
    ranked = workload_ratios(head, baseline) if head else None
    ranks = ranked.ranks if ranked is not None else {}
    open_ranked = workload_ratios(opens, baseline) if opens else None
    by_server_head = {c.server: c for c in head}
    by_server_open = {c.server: c for c in opens}
    rows = []
    for s in servers:
        row = SummaryRow(s, ranks.get(s, ""), by_server_head.get(s), by_server_open.get(s),
                         {p: cost.get((s, p), float("nan")) for p in protos},
                         ratio=ranked.ratios.get(s) if ranked is not None else None,
                         open_rank=open_ranked.ranks.get(s, "") if open_ranked is not None else "")
        flags = []
        for c in (row.headline, row.open_cell):
            for f in (c.flags() if c is not None else ()):
                if f not in flags:
                    flags.append(f)
        row.flags = flags
        rows.append(row)
    # rows in rank order, a tie by median, unranked last
    rows.sort(key=lambda r: (int(r.rank.rstrip("=")) if r.rank.rstrip("=").isdigit() else 10**6,
                             -(r.headline.median if r.headline is not None and math.isfinite(r.headline.median) else 0.0)))
    sentences = []
    valid = [c for c in head if not c.invalid and math.isfinite(c.median)]
    if valid:
        top = [c for c in valid if ranks.get(c.server) in ("1", "1=")]
        slow = min(valid, key=lambda c: c.median)
        best = max(valid, key=lambda c: c.median)
        if len(top) > 1:
            lead = (f"At the headline workload ({head_title}), {_join(c.server for c in top)} tie for fastest "
                    f"(the 95% intervals of their ratios include 1; {best.server} has the highest median, "
                    f"{_fmt_rate(best.median)} msgs/s)")
        else:
            lead = f"At the headline workload ({head_title}), {best.server} is fastest with {_fmt_rate(best.median)} msgs/s"
        if slow is not best and slow.median > 0:
            lead += f", {best.median / slow.median:.2g}× the slowest ({slow.server}, {_fmt_rate(slow.median)})"
        sentences.append(lead + ".")
    by_size = _by_size_sentence(results, baseline)
    if by_size:
        sentences.append(by_size)
    kernel = _kernel_sentence(valid)
    if kernel:
        sentences.append(kernel)
    tail = _tail_sentence(opens, share, open_ranked) if open_ranked is not None else None
    if tail:
        sentences.append(tail)
    for p in protos:
        vals = [(s, cost[(s, p)]) for s in servers if math.isfinite(cost.get((s, p), float("nan")))]
        if vals:
            lo, hi = min(vals, key=lambda t: t[1]), max(vals, key=lambda t: t[1])
            text = f"The {p} protocol costs {lo[1]:+.2g} µs per message over raw in {lo[0]}"
            if hi[0] != lo[0]:
                text += f" up to {hi[1]:+.2g} µs in {hi[0]}"
            sentences.append(text + " (server CPU, same run and workload).")
    return Summary(head_title, share, open_title, protos, rows, sentences,
                   reference=ranked.reference if ranked is not None else None,
                   baseline=bool(ranked is not None and ranked.baseline),
                   paired=ranked.paired if ranked is not None else True)
