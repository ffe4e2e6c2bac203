"""The core never imports Flask: ``import flask_dbpool`` and a Pool work without it."""

from __future__ import annotations

import subprocess
import sys


def test_core_does_not_import_flask(tmp_path: object) -> None:
    code = (
        "import sys, flask_dbpool\n"
        "p = flask_dbpool.Pool('sqlite:///:memory:')\n"
        "with p.connection() as c: c.execute('select 1')\n"
        "p.close()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', 'click')"
        " or m.startswith('flask_dbpool.flask'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_dbpool_resolves_lazily() -> None:
    import flask_dbpool
    from flask_dbpool.flask import DBPool

    assert flask_dbpool.DBPool is DBPool
