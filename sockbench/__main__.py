from sockbench.cli import main

raise SystemExit(main())
