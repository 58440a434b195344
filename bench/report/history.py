"""``sockbench history DIR...``: chosen cells across results folders, ordered by time, labelled with commits.

Why it is built this way: asv's idea (a figure per commit, over a project's
history) from the folders sockbench already writes, with nothing new to
record: each folder's ``meta.json`` carries its start time and commit, and
its rounds are read by the same store as the report.  The folders are
ordered by their start time, not by their names or the order given, and each
point is labelled with the commit that made it (``+dirty`` when the tree had
uncommitted changes), so a step in the line points at a commit.

The figure of a cell is the one it is judged on (``CellStats.figure_name``):
the median msgs/s in closed loop, the median p99 in open loop, with the
rounds' min-max.  Without ``--cells``, the cells are the headline workload's
of the newest folder (the summary's first column), so ``sockbench history
results/*`` shows at once what a change did to every server.  A folder
without a chosen cell leaves a gap, never a zero.  A raw file the store
leaves out (unreadable, inconsistent) is listed in ``History.skipped`` for
the command to warn about, one line each, as ``report`` and ``compare`` do.
"""

import fnmatch
import math
import os
from dataclasses import dataclass, field

from sockbench.bench.report.store import load_results
from sockbench.bench.report.summary import build_summary
from sockbench.errors import SockbenchError

__all__ = ["HistoryPoint", "History", "build_history", "plot_history", "history_rows"]


@dataclass(frozen=True)
class HistoryPoint:
    median: float
    lo: float
    hi: float
    rounds: int
    flags: tuple


@dataclass
class History:
    folders: list  # [(path, started_at, commit)] ordered by time
    cells: list  # cell ids, in the order chosen
    figure: dict  # cell id -> "msgs/s" | "p99 µs"
    points: dict  # (folder index, cell id) -> HistoryPoint
    skipped: list = field(default_factory=list)  # [(raw file, reason)]: each folder's ``Results.skipped``


def _started(results):
    return str(results.meta.started_at or min((str(r.started_at) for r in results.results if r.started_at),
                                                      default=""))


def build_history(paths, patterns=None):
    """The ``History`` of the cells matching ``patterns`` (fnmatch on ``server:workload``) over ``paths``."""
    if len(paths) < 1:
        raise SockbenchError("history: give at least one results folder", exit_code=2)
    loaded = [load_results(p) for p in paths]
    skipped = [pair for res in loaded for pair in res.skipped]
    loaded.sort(key=_started)
    if patterns:
        cells = []
        for res in loaded:
            for c in res.cells.values():
                if any(fnmatch.fnmatchcase(c.cell.id, pat) for pat in patterns) and c.cell.id not in cells:
                    cells.append(c.cell.id)
        if not cells:
            raise SockbenchError(f"history: no cell matches {' '.join(patterns)} in these folders "
                                 f"(cells are named SERVER:WORKLOAD, e.g. uvloop:closed-64B-c100)", exit_code=2)
    else:
        summary = build_summary(loaded[-1])
        cells = [r.headline.cell.id for r in summary.rows if r.headline is not None]
        if not cells:
            cells = [c.cell.id for c in loaded[-1].cells.values()]
    folders, points, figure = [], {}, {}
    for i, res in enumerate(loaded):
        folders.append((res.path, _started(res), res.commit()))
        for c in res.cells.values():
            if c.cell.id not in cells:
                continue
            figs = c.figures()
            if not figs:
                continue
            figure[c.cell.id] = c.figure_name
            med = c.interval().median
            points[(i, c.cell.id)] = HistoryPoint(med, min(figs), max(figs), len(figs), tuple(c.flags()))
    return History(folders, cells, figure, points, skipped)


def _fmt(v):
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def history_rows(h):
    """``(columns, rows)``: one row per folder (time, commit, one column per cell), as strings."""
    columns = ["started", "commit"] + [f"{cid} ({h.figure.get(cid, '')})" for cid in h.cells]
    rows = []
    for i, (path, started, commit) in enumerate(h.folders):
        row = [started or os.path.basename(path), commit]
        for cid in h.cells:
            p = h.points.get((i, cid))
            row.append("-" if p is None else _fmt(p.median) + (f" {' '.join(p.flags)}" if p.flags else ""))
        rows.append(row)
    return columns, rows


def plot_history(h, path):
    """Draw the history to ``path`` (PNG): one panel per figure kind, one line per cell, min-max bars."""
    # deferred: matplotlib, only when a plot is drawn
    from sockbench.bench.report.plots import plt, save_plain

    kinds = [k for k in ("msgs/s", "p99 µs") if k in h.figure.values()]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(max(7.0, 2.0 + 1.1 * len(h.folders)), 3.8 * len(kinds)),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    xs = list(range(len(h.folders)))
    for ax, kind in zip(axes[:, 0], kinds):
        for j, cid in enumerate(c for c in h.cells if h.figure.get(c) == kind):
            pts = [(i, h.points[(i, cid)]) for i in xs if (i, cid) in h.points]
            if not pts:
                continue
            x = [i for i, _ in pts]
            y = [p.median for _, p in pts]
            err = [[p.median - p.lo for _, p in pts], [p.hi - p.median for _, p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=cmap(j % 10), label=cid)
        ax.set_ylabel(f"{kind} ({'higher' if kind == 'msgs/s' else 'lower'} is better)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{commit}\n{started[:16]}" for _, started, commit in h.folders], fontsize=7)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("results folder, ordered by start time: commit and start (UTC)")
    fig.suptitle("sockbench history: median over rounds, bars span the rounds' min-max")
    fig.tight_layout()
    save_plain(fig, path)
    return path
