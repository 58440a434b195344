"""``sockbench history DIR...``: its arguments and entry point (the work is ``bench.report.history``).

Why it is built this way: as for ``run`` and ``compare``, the command line
only parses and prints; the history is built from the results folders by the
report room, and matplotlib is imported only when the plot is drawn.
"""

from sockbench.cli.run import warn_left_out
from sockbench.cli.term import console as make_console

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p):
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results folders written by `sockbench run` (any order)")
    p.add_argument("--cells", nargs="+", metavar="PATTERN",
                   help="cells to follow, SERVER:WORKLOAD with shell wildcards (e.g. 'uvloop:closed-*' '*:open-64B-*'); "
                        "default: the headline workload's cells of the newest folder")
    p.add_argument("--out", metavar="PNG", default="history.png", help="where to draw the plot (default history.png)")


def run_cli(args):
    # deferred: the report room (hdrhistogram, and matplotlib for the plot) and rich
    from rich.table import Table

    from sockbench.bench.report.history import build_history, history_rows, plot_history

    h = build_history(args.dirs, args.cells)
    warn_left_out(h.skipped)
    columns, rows = history_rows(h)
    table = Table(title="sockbench history (ordered by start time)", box=None, show_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for row in rows:
        table.add_row(*row)
    console = make_console()
    console.print(table)
    try:
        plot_history(h, args.out)
    except OSError as e:
        from sockbench.errors import SockbenchError  # deferred with the error it raises, on this path only

        raise SockbenchError(f"cannot write {args.out}: {e.strerror or e}") from None
    console.print(f"plot: {args.out}", highlight=False)
    return 0
