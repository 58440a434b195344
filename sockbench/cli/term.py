"""The consoles the commands print through: the terminal's width on a terminal, no wrapping when piped.

Why it is built this way: rich wraps at 80 columns whenever it cannot ask a
terminal, so output piped to a file was broken mid-phrase, while a few
commands forced a width of 100 or 140 that overflowed a real 80-column
terminal (which then wrapped mid-word).  Here, on a terminal, the width is
the terminal's, and a table fits it by wrapping the text inside its wide
columns (names and numbers are ``no_wrap``); piped, a line is as long as its
content, as ``grep`` and a file expect.
"""

import sys

__all__ = ["console", "PIPED_WIDTH"]

#: the width a console assumes when its stream is not a terminal: no line is that long
PIPED_WIDTH = 10_000


def console(stderr=False):
    """A rich Console on stdout (or stderr): the terminal's width, or unwrapped when not a terminal."""
    # deferred: rich costs ~0.1 s to import, and `sockbench serve` never prints through it
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)
