"""``python -m relgraph``: the command line (see ``relgraph.cli``)."""

from .cli import main

raise SystemExit(main())
