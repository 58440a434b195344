"""sockbench: honest, reproducible socket echo benchmarks for Python servers.

The rooms, in dependency order (each imports only from those after it; see
ARCHITECTURE.md):

* ``sockbench.cli``: the command line.
* ``sockbench.bench.suite`` (``bench/suite/``): ``sockbench run``, its plan and
  its pytest-benchmark suite; ``sockbench.bench.calibrate``: the tools that
  check the harness and the servers against outside references.
* ``sockbench.bench.report``: read a results folder, statistics, compare,
  plots and the report.
* ``sockbench.bench.load``: the load harness and the load processes.
* ``sockbench.bench.schema``: the one owner of the result JSON.
* ``sockbench.servers`` (``servers/``): the registry and the echo servers,
  one module each, all started through ``sockbench serve NAME``.
* ``sockbench.ext`` (``ext/``): the Cython extensions.
* the core, here: errors, units and value parsers, thresholds, /proc readers,
  machine metadata, time stamps, the atomic JSON writer, child processes.
"""

#: the one definition of the version (pyproject.toml reads it from here)
__version__ = "0.1.0"
