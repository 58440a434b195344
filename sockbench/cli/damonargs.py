"""``--pause-damon``, one spelling for ``run``, ``ab`` and ``load``: the commands that measure."""

import sys

from sockbench.damon import paused

__all__ = ["add_argument", "pausing"]


def add_argument(p):
    p.add_argument("--pause-damon", action="store_true",
                   help="turn the kernel's DAMON memory monitors off while measuring and on again after (root): "
                        "each of their samples holds a CPU for up to a few ms, which open-loop tails and short "
                        "rounds measure as much as the server")


def pausing(args, log=None):
    """The ``with`` block of a command's measuring: DAMON paused when ``--pause-damon`` asked for it."""
    return paused(args.pause_damon, log=log or (lambda line: print(f"sockbench: {line}", file=sys.stderr, flush=True)))
