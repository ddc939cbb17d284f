"""``python -m relgraph``: the command line (see ``relgraph.cli.main``)."""

from relgraph.cli.main import main

raise SystemExit(main())
