"""``python -m sockbench``: the CLI's entry point, in the one place Python looks for it.

It belongs to the cli room (``tests/unit/test_layers.py`` files it there and
checks it holds this call and nothing else), so the core folder keeps no logic
that depends on the CLI.
"""

from sockbench.cli import main

raise SystemExit(main())
