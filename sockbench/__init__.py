"""sockbench: honest, reproducible socket echo benchmarks for Python servers.

The pieces:

* ``sockbench.servers`` (``servers/`` in the source tree): interchangeable echo
  servers, one module each, all started through ``sockbench serve NAME``.
* ``sockbench.ext`` (``ext/``): the Cython extensions.
* ``sockbench.bench`` (``bench/``): the load harness, the benchmark suite and
  the reports.
* ``sockbench.servers.registry``: the one table that maps a server name to how it starts.
"""

__version__ = "0.1.0"
