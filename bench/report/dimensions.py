"""The report's dimensions beside the servers: the transports, the worker counts, TLS, and UDP's loss.

Why it is built this way: the summary and the grid's tables compare servers
on one transport and one worker count (``Results.in_base``: tcp and one
server process when measured), because a row per server must mean one thing.
The other transports and worker counts answer other questions, each at the
summary's headline workload (the closed-loop raw cell with the smallest
message and the most connections), so every figure here has a twin in the
summary:

* **transports**: per server, msgs/s and server CPU per message over each
  transport measured, each as a ratio to the base transport's, and a
  sentence per transport that answers the IPC question for this machine
  ("Unix domain sockets cost 0.62x the server CPU per message of loopback
  TCP with cython ..."); two figures within ``SAME_COST_SHARE`` of each other
  read as "about the same";
* **workers**: per server, msgs/s and server CPU per message against the
  number of server processes, with how many CPUs the server had: more
  workers than CPUs share them, and the caption says so;
* **TLS** (``sockbench run --tls off on``): what TLS costs each server, from
  cells of one run: per TLS workload (the plan's ``tls_workloads``, 100 x 64 B
  and 10 x 16 KiB), msgs/s and server CPU per message plain and over TLS, the
  tax as a ratio and in µs per message; and handshakes per second (connect
  mode: plain connections, full and resumed TLS handshakes) with the server
  CPU each costs, and what the handshakes negotiated.  Its own section, not
  the headline workload's: TLS is priced at the workloads it was asked at;
* **loss**: a udp cell's share of datagrams lost (and its duplicates and
  out-of-order echoes when there are any), shown in every table that holds
  one, flagged LOSSY above ``LOSSY_SHARE``.

Nothing here names a server: rows come from the cells present, so a server
added to the registry appears in every table by itself.  A section is absent
(``None``) when its dimension has one value in the run.
"""

import math
from dataclasses import dataclass, replace

from sockbench.thresholds import LOSSY_SHARE, SAME_COST_SHARE

__all__ = [
    "fmt", "loss_text", "has_loss", "headline_cells", "Section", "transport_section", "workers_section", "python_section",
    "TRANSPORT_WORDS", "server_cpus", "TlsSection", "tls_section", "TLS_TAX_COLUMNS",
    "TLS_HANDSHAKE_COLUMNS",
]

#: how a sentence names a transport (for processes on one host: the IPC question)
TRANSPORT_WORDS = {
    "tcp": "loopback TCP",
    "tcp6": "loopback TCP over IPv6",
    "unix": "Unix domain sockets",
    "udp": "UDP",
}


def fmt(v, digits=3):
    """A figure for a table cell: ``n/a`` when unknown, thousands grouped, else ``digits`` significant digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def loss_text(c):
    """A udp cell's loss for its table row: ``0.12%``, plus duplicates and out-of-order when non-zero; "" for a stream."""
    d = c.datagrams
    if d is None:
        return ""
    share = d.loss_share
    if share is None:
        text = "n/a (none sent)"
    elif 0 < share < 0.00005:
        text = f"<0.01% ({d.lost:,} lost)"  # "0.00%" would read as none
    else:
        text = f"{share:.2%}"
    extra = [f"{n:,} {what}" for n, what in ((d.duplicates, "dup"), (d.out_of_order, "out of order"),
                                              (d.late, "late"), (d.corrupt, "corrupt")) if n]
    return text + (f" ({', '.join(extra)})" if extra else "")


def has_loss(cells):
    """True when any of ``cells`` is a udp cell (it carries a datagram accounting): its table gets a loss column."""
    return any(c.datagrams is not None for c in cells)


def headline_cells(results):
    """The summary's headline workload on the base transport and worker count: ``([CellStats], title)``.

    The closed-loop raw cells of the grid (the grid's depth) with the smallest message and, at that size,
    the most connections.
    """
    depth = results.grid_depth()
    grid = [c for c in results.cells.values()
            if c.cell.mode == "closed" and c.cell.protocol == "raw" and c.cell.depth == depth and results.in_base(c)]
    if not grid:
        return [], None
    size = min(c.cell.size for c in grid)
    conns = max(c.cell.conns for c in grid if c.cell.size == size)
    cells = [c for c in grid if c.cell.size == size and c.cell.conns == conns]
    return cells, cells[0].cell.title()


@dataclass
class Section:
    """A dimension's section: its table (``columns`` and ``[(strings, flags, CellStats)]``), caption, sentences."""

    title: str
    columns: list
    rows: list
    caption: str
    sentences: list
    #: the values of the dimension, in order, and the base one the ratios are to
    values: list
    base: object
    #: (server, value) -> CellStats, for the plot
    cells: dict
    #: the one sentence the summary's verdict repeats ("" for none)
    verdict: str = ""


def _ratio(v, base):
    return v / base if math.isfinite(v) and math.isfinite(base) and base > 0 else float("nan")


def _x(r):
    return f"{r:.2f}×" if math.isfinite(r) else "n/a"


def _dimension_rows(results, ref, key, values, base, label):
    """Rows per server, then per value of the dimension ``key`` (a Cell field) at the workload of ``ref``."""
    cells = {}
    for server in results.servers():
        for v in values:
            c = results.cell(server, replace(ref, **{key: v}).workload_id)
            if c is not None:
                cells[(server, v)] = c
    lossy = has_loss(cells.values())
    rows = []
    for server in results.servers():
        b = cells.get((server, base))
        for v in values:
            c = cells.get((server, v))
            if c is None:
                continue
            flags = c.flags()
            if v == base:
                vs = cpu_vs = "(baseline)"
            elif b is None or b.invalid or c.invalid:
                vs = cpu_vs = "n/a"
            else:
                vs, cpu_vs = _x(_ratio(c.median, b.median)), _x(_ratio(c.cpu_us_per_msg, b.cpu_us_per_msg))
            row = [server, label(v), f"{fmt(c.median)} ± {fmt(c.stdev)}", vs, fmt(c.cpu_us_per_msg), cpu_vs,
                   fmt(c.latency_summary().p99)]
            if lossy:
                row.append(loss_text(c) or "–")
            row.append(" ".join(flags) or "ok")
            rows.append((row, flags, c))
    return rows, cells, lossy


def _pairs(cells, servers, value, base):
    """``[(server, msgs/s ratio, CPU ratio, CellStats)]`` of ``value`` over ``base``, valid cells with both figures."""
    out = []
    for s in servers:
        c, b = cells.get((s, value)), cells.get((s, base))
        if c is None or b is None or c.invalid or b.invalid:
            continue
        m, cpu = _ratio(c.median, b.median), _ratio(c.cpu_us_per_msg, b.cpu_us_per_msg)
        if math.isfinite(m) and math.isfinite(cpu):
            out.append((s, m, cpu, c))
    return out


def _span(pairs, i):
    """``0.62× (cython) to 0.85× (selectors)`` over the figure ``i`` of ``_pairs``; one figure when they agree."""
    lo = min(pairs, key=lambda p: p[i])
    hi = max(pairs, key=lambda p: p[i])
    if len(pairs) == 1:
        return f"{lo[i]:.2f}× ({lo[0]})"
    if f"{lo[i]:.2f}" == f"{hi[i]:.2f}":
        return f"{lo[i]:.2f}× (every server)"
    return f"{lo[i]:.2f}× ({lo[0]}) to {hi[i]:.2f}× ({hi[0]})"


def _transport_sentence(t, base, pairs):
    word, base_word = TRANSPORT_WORDS.get(t, t), TRANSPORT_WORDS.get(base, base)
    cpu = [p[2] for p in pairs]
    if all(abs(r - 1.0) <= SAME_COST_SHARE for r in cpu):
        text = (f"{word[:1].upper() + word[1:]} cost about the same server CPU per message as {base_word}: "
                f"{_span(pairs, 2)}")
    else:
        text = f"For processes on one host, {word} cost {_span(pairs, 2)} the server CPU per message of {base_word}"
    text += f"; msgs/s is {_span(pairs, 1)} {base_word}'s"
    losses = [(s, c.loss_share) for s, _, _, c in pairs if c.loss_share is not None]
    if losses:
        worst = max(losses, key=lambda p: p[1])
        text += (f", with up to {worst[1]:.2%} of the datagrams lost ({worst[0]})" if worst[1] > 0
                 else ", and no datagram was lost")
    return text + "."


def transport_section(results):
    """The transports at the headline workload (a ``Section``), or None when the run measured one transport."""
    transports = results.transports()
    if len(transports) < 2:
        return None
    head, title = headline_cells(results)
    if not head:
        return None
    base = results.base_transport()
    ref = head[0].cell
    rows, cells, lossy = _dimension_rows(results, ref, "transport", transports, base, str)
    if not rows:
        return None
    cols = ["server", "transport", "msgs/s (median ± sd)", f"vs {base}", "server CPU µs/msg", f"CPU vs {base}", "p99 µs"]
    cols += (["loss"] if lossy else []) + ["flags"]
    servers = results.servers()
    sentences = {}
    for t in transports:
        if t == base:
            continue
        pairs = _pairs(cells, servers, t, base)
        if pairs:
            sentences[t] = _transport_sentence(t, base, pairs)
    # the verdict answers the IPC question when the run measured it (unix against the base), else the first
    verdict = sentences.get("unix") or next(iter(sentences.values()), "")
    caption = (f"Each server over each transport it serves at the headline workload ({title}), same run; "
               f"the ratios are to the same server over {base}. Server CPU per message is user+sys (the scheduler's "
               f"runtime of the server's threads, from schedstat)."
               + (f" Loss is the share of datagrams sent that got no echo within the timeout (LOSSY above "
                  f"{LOSSY_SHARE:.0%}); udp's msgs/s counts the echoes only." if lossy else ""))
    return Section("Transports", cols, rows, caption, list(sentences.values()), transports, base, cells, verdict)


def server_cpus(results):
    """The server's CPUs as the run pinned them (the plan's, else the first result's), or None when unknown."""
    cpus = results.plan.server_cpus if results.plan is not None else None
    if not cpus:
        for r in results.results:
            if r.workload.server_cpus:
                cpus = r.workload.server_cpus
                break
    return list(cpus) if cpus else None


def workers_caption(results, counts):
    """What the worker counts ran on: the server's CPUs, and whether the workers shared them."""
    cpus = server_cpus(results)
    if cpus is None:
        return "The server's CPUs are not recorded, so whether its workers had a CPU each is unknown."
    n = len(cpus)
    text = f"The server had {n} CPU{'s' if n != 1 else ''} (CPU {','.join(map(str, cpus))})"
    shared = [w for w in counts if w > n]
    if shared:
        text += (f": at {', '.join(map(str, shared))} worker{'s' if shared != [1] else ''} the workers shared "
                 f"{'them' if n != 1 else 'it'}, so msgs/s there measures sharing, not scaling")
    else:
        text += ", one for each worker at every count measured"
    return text + "."


def workers_section(results):
    """msgs/s and server CPU per message against the worker count (a ``Section``), or None with one count."""
    counts = results.worker_counts()
    if len(counts) < 2:
        return None
    base = results.base_workers()
    head, title = headline_cells(results)
    if not head:
        return None
    ref = head[0].cell
    rows, cells, lossy = _dimension_rows(results, ref, "workers", counts, base, str)
    if not rows:
        return None
    one = f"{base} worker{'s' if base != 1 else ''}"
    cols = ["server", "workers", "msgs/s (median ± sd)", f"vs {one}", "server CPU µs/msg", f"CPU vs {one}", "p99 µs"]
    cols += (["loss"] if lossy else []) + ["flags"]
    top = counts[-1]
    pairs = _pairs(cells, results.servers(), top, base)
    sentences = []
    if pairs:
        sentences.append(f"With {top} server processes instead of {base}, msgs/s is {_span(pairs, 1)} and server CPU "
                         f"per message {_span(pairs, 2)} what {base} process{'es' if base != 1 else ''} gave. " + workers_caption(results, counts))
    caption = (f"Each server at the headline workload ({title}) with each number of server processes measured, same "
               f"run; the ratios are to the same server with {base}. Server CPU per message is summed over every "
               f"worker (schedstat). " + workers_caption(results, counts))
    return Section("Workers", cols, rows, caption, sentences, counts, base, cells)


def python_section(results):
    """msgs/s and server CPU per message under each interpreter measured (``--python``): a ``Section``, or None
    with fewer than two.  The servers sockbench does not run under an interpreter of its choosing (a
    ``--command``) have no row here."""
    labels = results.pythons()
    if len(labels) < 2:
        return None
    base = results.base_python()
    head, title = headline_cells(results)
    if not head:
        return None
    ref = head[0].cell
    if not ref.python:
        ref = next((c.cell for c in head if c.cell.python), None)
        if ref is None:
            return None
    rows, cells, lossy = _dimension_rows(results, ref, "python", labels, base, lambda v: f"Python {v}")
    if not rows:
        return None
    cols = ["server", "interpreter", "msgs/s (median ± sd)", f"vs {base}", "server CPU µs/msg", f"CPU vs {base}",
            "p99 µs"] + (["loss"] if lossy else []) + ["flags"]
    servers = results.servers()
    sentences = []
    for v in labels:
        if v == base:
            continue
        pairs = _pairs(cells, servers, v, base)
        if pairs:
            sentences.append(f"Under Python {v}, msgs/s is {_span(pairs, 1)} and server CPU per message "
                             f"{_span(pairs, 2)} what Python {base} gave.")
    versions = sorted({r.server_proc.python for r in results.results if r.server_proc.python and r.workload.python})
    caption = (f"Each server under each interpreter measured, at the headline workload ({title}), same run; the "
               f"ratios are to the same server under Python {base}. The load, the harness and the report always run "
               f"under sockbench's own interpreter: only the server changes"
               + (f" ({'; '.join(versions)})" if versions else "") + ".")
    return Section("Interpreters", cols, rows, caption, sentences, labels, base, cells)


# --- TLS -----------------------------------------------------------------------------------------


@dataclass
class TlsSection:
    """The TLS section: the tax table (msgs/s and server CPU per message, plain and over TLS, per server and
    workload), the handshake table (connect mode: plain connections, full and resumed TLS handshakes a second,
    and the server CPU each costs), a caption each, and the sentences."""

    title: str
    tax_columns: list
    tax_rows: list
    handshake_columns: list
    handshake_rows: list
    caption: str
    handshake_caption: str
    sentences: list
    verdict: str = ""
    #: for the plot: ``_tls_pairs``' workloads -> server -> (plain, TLS) CellStats, and ``_connect_cells``
    pairs: dict = None
    connect: dict = None


TLS_TAX_COLUMNS = ["server", "workload", "msgs/s plain", "msgs/s TLS", "TLS / plain", "server CPU µs/msg plain",
                   "server CPU µs/msg TLS", "TLS tax ×", "TLS tax µs/msg", "flags"]
TLS_HANDSHAKE_COLUMNS = ["server", "connections/s plain", "full handshakes/s", "resumed handshakes/s",
                         "server CPU µs/connection plain", "µs/full handshake", "µs/resumed handshake", "negotiated",
                         "flags"]


def _tls_base(results, c):
    """True when ``c`` is over the base transport, worker count and interpreter (TLS or not): the cells the section
    compares."""
    return (c.cell.transport == results.base_transport() and c.cell.workers == results.base_workers()
            and c.cell.python in ("", results.base_python() or ""))


def _tls_pairs(results):
    """``{workload (plain Cell, server-free): {server: (plain CellStats, TLS CellStats)}}`` of closed raw cells
    measured both ways at the base transport and worker count, in run order."""
    plain, over = {}, {}
    for c in results.cells.values():
        if c.cell.mode != "closed" or c.cell.protocol != "raw" or not _tls_base(results, c):
            continue
        key = replace(c.cell, server="", tls=False, resumed=False)
        (over if c.cell.tls else plain).setdefault(key, {})[c.server] = c
    out = {}
    for key, servers in over.items():
        both = {s: (plain[key][s], c) for s, c in servers.items() if s in plain.get(key, {})}
        if both:
            out[key] = both
    return out


def _negotiated(c):
    """What a TLS cell's handshakes negotiated, from its first round that says: ``TLSv1.3 TLS_AES_256_GCM_SHA384 x25519``."""
    for r in c.results:
        t = r.tls
        if t is not None and t.version:
            return " ".join(x for x in (t.version, t.cipher, t.group) if x)
    return "n/a"


def _tax_rows(results, pairs):
    rows = []
    for key, servers in pairs.items():
        label = f"{key.conns} × {format_size_short(key.size)}"
        for server in results.servers():
            if server not in servers:
                continue
            p, t = servers[server]
            flags = sorted(set(p.flags()) | set(t.flags()))
            bad = p.invalid or t.invalid
            ratio = "n/a" if bad else _x(_ratio(t.median, p.median))
            tax = "n/a" if bad else _x(_ratio(t.cpu_us_per_msg, p.cpu_us_per_msg))
            delta = t.cpu_us_per_msg - p.cpu_us_per_msg
            rows.append(([server, label, f"{fmt(p.median)} ± {fmt(p.stdev)}", f"{fmt(t.median)} ± {fmt(t.stdev)}",
                          ratio, fmt(p.cpu_us_per_msg), fmt(t.cpu_us_per_msg), tax,
                          "n/a" if bad else f"{delta:+.3g}", " ".join(flags) or "ok"], flags, t))
    return rows


def _connect_cells(results):
    """``{server: {"plain" | "full" | "resumed": CellStats}}`` of the connect-mode cells at the base transport."""
    out = {}
    for c in results.cells.values():
        if c.cell.mode != "connect" or not _tls_base(results, c):
            continue
        kind = "plain" if not c.cell.tls else ("resumed" if c.cell.resumed else "full")
        out.setdefault(c.server, {})[kind] = c
    return out


def _handshake_rows(results, connect):
    rows = []
    for server in results.servers():
        kinds = connect.get(server)
        if not kinds or not ({"full", "resumed"} & set(kinds)):
            continue
        flags = sorted({f for c in kinds.values() for f in c.flags()})

        def rate(kind):
            c = kinds.get(kind)
            return "–" if c is None else ("n/a" if c.invalid else fmt(c.median))

        def cpu(kind):
            c = kinds.get(kind)
            return "–" if c is None else ("n/a" if c.invalid else fmt(c.cpu_us_per_msg))

        tls_cell = kinds.get("full") or kinds.get("resumed")
        rows.append(([server, rate("plain"), rate("full"), rate("resumed"), cpu("plain"), cpu("full"),
                      cpu("resumed"), _negotiated(tls_cell), " ".join(flags) or "ok"], flags, tls_cell))
    return rows


def format_size_short(n):
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _tax_sentences(pairs):
    out = []
    for key, servers in pairs.items():
        ok = {s: (p, t) for s, (p, t) in servers.items() if not p.invalid and not t.invalid
              and math.isfinite(t.cpu_us_per_msg) and math.isfinite(p.cpu_us_per_msg) and p.cpu_us_per_msg > 0}
        if not ok:
            continue
        label = f"{key.conns} × {format_size_short(key.size)}"
        deltas = sorted(((t.cpu_us_per_msg - p.cpu_us_per_msg, s) for s, (p, t) in ok.items()))
        ratios = sorted(((t.cpu_us_per_msg / p.cpu_us_per_msg, s) for s, (p, t) in ok.items()))
        lo, hi = deltas[0], deltas[-1]
        text = (f"At {label}, TLS costs the server {lo[0]:+.3g} µs of CPU per message ({lo[1]})"
                + (f" to {hi[0]:+.3g} µs ({hi[1]})" if len(deltas) > 1 else "")
                + f", {ratios[0][0]:.2f}× ({ratios[0][1]})"
                + (f" to {ratios[-1][0]:.2f}× ({ratios[-1][1]})" if len(ratios) > 1 else "")
                + " its plain CPU per message")
        over = sorted((t.cpu_us_per_msg, s) for s, (_, t) in ok.items())
        if len(over) > 1:
            best, second = over[0], over[1]
            text += (f"; over TLS the least CPU per message is {best[1]}'s ({best[0]:.3g} µs), "
                     f"{best[0] / second[0]:.2f}× that of the next, {second[1]} ({second[0]:.3g} µs)")
        out.append(text + ".")
    return out


def _handshake_sentence(connect):
    full = [(kinds["full"].cpu_us_per_msg, s, kinds["full"]) for s, kinds in connect.items()
            if "full" in kinds and not kinds["full"].invalid and math.isfinite(kinds["full"].cpu_us_per_msg)]
    if not full:
        return None
    full.sort(key=lambda x: x[0])
    text = (f"A full TLS handshake costs the server {full[0][0]:,.0f} µs of CPU ({full[0][1]})"
            + (f" to {full[-1][0]:,.0f} µs ({full[-1][1]})" if len(full) > 1 else ""))
    res = sorted((kinds["resumed"].cpu_us_per_msg, s) for s, kinds in connect.items()
                 if "resumed" in kinds and not kinds["resumed"].invalid
                 and math.isfinite(kinds["resumed"].cpu_us_per_msg))
    if res:
        text += (f"; a resumed one {res[0][0]:,.0f} µs ({res[0][1]})"
                 + (f" to {res[-1][0]:,.0f} µs ({res[-1][1]})" if len(res) > 1 else ""))
    bound = [s for _, s, c in full if c.client_bound]
    if bound:
        text += (f". The load client was CPU-bound for {', '.join(bound)} (a TLS client spends about what the "
                 f"server does on a handshake): read their handshakes/s as the client's, their CPU per handshake "
                 f"as the server's")
    return text + " (each per connection: connect, handshake, one 64 B echo, close)."


def tls_section(results):
    """The TLS section (a ``TlsSection``), or None when the run measured nothing over TLS."""
    if not results.has_tls():
        return None
    pairs = _tls_pairs(results)
    connect = _connect_cells(results)
    tax = _tax_rows(results, pairs)
    hs = _handshake_rows(results, connect)
    if not tax and not hs:
        return None
    sentences = _tax_sentences(pairs)
    hs_sentence = _handshake_sentence(connect)
    if hs_sentence:
        sentences.append(hs_sentence)
    caption = ("Each server plain and over TLS at each TLS workload, same run, same transport "
               f"({results.base_transport()}); closed loop, one message in flight per connection, every TLS "
               "connection's handshake done before the window. TLS / plain is msgs/s over TLS over plain; the TLS "
               "tax is the server CPU per message over TLS over plain (×) and their difference (µs per message); "
               "server CPU is user+sys, the scheduler's runtime of the server's threads.")
    hs_caption = ("Connect mode: each of the connections at a time connects, shakes hands (over TLS), echoes one "
                  "64 B message and closes, over and over; a figure per second is of connections (plain) or "
                  "handshakes, and the server CPU is per connection. Full: every handshake a full one; resumed: each "
                  "connection offers the session of the previous one on its slot. The load verifies no "
                  "certificate; it does the client's share of the key exchange, so it may be the limit "
                  "(CLIENT-BOUND).")
    return TlsSection("TLS", TLS_TAX_COLUMNS, tax, TLS_HANDSHAKE_COLUMNS, hs, caption, hs_caption, sentences,
                      sentences[0] if sentences else "", pairs, connect)
