"""The wire protocols' table: their names, in index order, and the default message limit.

An index is what crosses from Python to C (``run_loop(protocol=...)``,
``serve(protocol=...)``), so C and Python must hold the same table.  The
extensions are built from this file (``setup.py`` reads it with ``ast`` and
writes ``ext/protocols.h``), so it lives in the core, below ``ext/``; the
protocols themselves (their spec and Python codecs) are
``sockbench.servers.protocols``, which re-exports these names.
"""

__all__ = ["PROTOCOLS", "DEFAULT_MAX_MESSAGE"]

PROTOCOLS = ("raw", "frame", "json")
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
