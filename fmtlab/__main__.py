"""`python -m fmtlab` runs the `fmtlab` command."""

from fmtlab.cli import main

raise SystemExit(main())
