"""``python -m syncsvc`` runs the command-line interface."""

from syncsvc.cli import main

raise SystemExit(main())
