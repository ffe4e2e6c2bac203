"""The core never imports Flask: ``import flask_dbpool`` and a Pool work without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


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


# --- The Flask side is one-way (issue 10 item 5) ---------------------------------------------
# ``extension`` wires the app: it imports ``cli`` and ``dashboard``; they read the app's pool
# through ``flask/state.py`` and build their data with the Flask-free ``flask_dbpool.report``.
# Read from the source (every import, also inside functions and TYPE_CHECKING blocks), so a
# lazy import that only hides a cycle at run time is caught too.

_SRC = Path(__file__).resolve().parent.parent / "src"
_FLASK_SIDE = _SRC / "flask_dbpool" / "flask"
_EXTENSION = "flask_dbpool.flask.extension"
_BANNED_IN_REPORT = ("flask", "werkzeug", "click", "flask_dbpool.flask", "flask_dbpool.pool")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(_SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute; ``from p import name`` gives ``p`` and
    ``p.name`` (``name`` may be a submodule)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _flask_side_imports() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in sorted(_FLASK_SIDE.rglob("*.py"))}
    return {
        name: {other for other in _imports(path) if other in modules and other != name}
        for name, path in modules.items()
    }


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return False


def test_flask_side_is_one_way() -> None:
    graph = _flask_side_imports()
    assert _EXTENSION in graph and "flask_dbpool.flask.cli" in graph
    # The package __init__ re-exports DBPool: importing the package is importing extension.
    into_extension = {_EXTENSION, "flask_dbpool.flask"}
    wrong = sorted(
        f"{name} imports {', '.join(sorted(imports & into_extension))}"
        for name, imports in graph.items()
        if name not in into_extension and imports & into_extension
    )
    assert wrong == [], "only extension.py (and the package) may import the extension"
    cli, dashboard = "flask_dbpool.flask.cli", "flask_dbpool.flask.dashboard"
    assert dashboard not in graph[cli] and cli not in graph[dashboard]
    circles = sorted(name for name in graph if _reaches(graph, name, name))
    assert circles == [], f"import circles in flask_dbpool/flask: {circles}"


def test_report_is_flask_free() -> None:
    imports = _imports(_SRC / "flask_dbpool" / "report.py")
    wrong = sorted(
        name
        for name in imports
        if any(name == banned or name.startswith(banned + ".") for banned in _BANNED_IN_REPORT)
    )
    assert wrong == [], "report.py is core: no Flask stack, no Flask side, no pool.py"
