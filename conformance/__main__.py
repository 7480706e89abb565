"""`python -m conformance` is the `conformance` console script."""

from conformance.cli import main

raise SystemExit(main())
