"""``python -m flask_dbpool.demo`` (``make demo``): see :mod:`flask_dbpool.demo.cli`."""

from flask_dbpool.demo.cli import main

raise SystemExit(main())
