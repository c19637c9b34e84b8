"""Allow ``python -m rotator``."""

from rotator.cli import main

raise SystemExit(main())
