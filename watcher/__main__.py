"""``python -m watcher``: the same as the ``sklm-watcher`` console script."""

from watcher.cli import main

raise SystemExit(main())
