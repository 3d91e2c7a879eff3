"""`python -m workbench`: the headless CLI."""

from workbench.cli import main

raise SystemExit(main())
