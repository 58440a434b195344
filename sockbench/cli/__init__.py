"""The ``sockbench`` command line: ``main`` parses, dispatches and turns a ``SockbenchError`` into one line.

``main.py`` registers every subcommand; the arguments and entry points of the
bigger ones live beside it (``load.py`` for ``sockbench load``, ``run.py`` for
``run``, ``report`` and ``compare``).  This is the top of the dependency
order: nothing below imports it.
"""

from sockbench.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
