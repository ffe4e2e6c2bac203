"""The core never imports Flask: ``import flask_dbpool`` and a Pool work without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import NamedTuple


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
    from flask_dbpool.aio import AsyncPool

    assert flask_dbpool.AsyncPool is AsyncPool


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


def _import_statements(path: Path) -> list[tuple[str, list[str], ast.stmt]]:
    """Every import statement of ``path`` (also inside functions and TYPE_CHECKING blocks) as
    ``(module, names, node)``, the module absolute: ``import a.b`` gives ``("a.b", [])``,
    ``from p import x, y`` gives ``("p", ["x", "y"])``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str], ast.stmt]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.append((source, [alias.name for alias in node.names], node))
    return found


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute; ``from p import name`` gives ``p`` and
    ``p.name`` (``name`` may be a submodule)."""
    found: set[str] = set()
    for source, names, _ in _import_statements(path):
        found.add(source)
        found.update(f"{source}.{name}" for name in names)
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


# --- Layering enforced (issue 10 item 4) ------------------------------------------------------
# All from the source, every module of the package.

_PACKAGE = _SRC / "flask_dbpool"
_ROOT = "flask_dbpool"


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(_PACKAGE.rglob("*.py"))}


# --- 1. No reaching into another object's private members --------------------------------------
# A private member is ``_name`` or ``__name`` (not ``__dunder__``). Reaching one is
# ``x._name`` with ``x`` other than ``self``, ``cls`` or ``super()``; the same through
# ``getattr``/``setattr``/``hasattr``/``delattr`` with the name written out; and
# ``from module import _name`` (a private submodule such as ``flask_dbpool._fork`` is the
# package's own, not a member). Names built at run time are not seen.


class _Allowed(NamedTuple):
    owner: str  # whose private member it is: a third-party project, or _OURS
    why: str


_OURS = "flask_dbpool"
_OUR_LIMIT = 10  # of our own members reached across objects: keep the list short

#: (module, private member) -> whose member and why reaching it is right. It must stay true:
#: an entry no longer used fails the test as much as a reach not listed.
_ALLOWED: dict[tuple[str, str], _Allowed] = {
    # werkzeug: LocalProxy._get_current_object() is LocalProxy's documented way to the
    # proxied object (werkzeug.local.LocalProxy; Flask's docs use it on current_app).
    ("flask_dbpool.flask.extension", "_get_current_object"): _Allowed(
        "werkzeug", "the app object itself, not the proxy, is what its pool is kept on"
    ),
    ("flask_dbpool.flask.state", "_get_current_object"): _Allowed(
        "werkzeug", "current_pool() looks the pool up on the app object, not the proxy"
    ),
    ("flask_dbpool.demo.app", "_get_current_object"): _Allowed(
        "werkzeug", "the demo's /stats looks up the app's pool and counters on the app object"
    ),
    # CPython: sys._getframe() is documented in the sys module (an implementation detail).
    ("flask_dbpool.leaks", "_getframe"): _Allowed(
        "CPython", "capture_site() walks up to the caller outside the package, cheaply"
    ),
    ("flask_dbpool.flask.extension", "_getframe"): _Allowed(
        "CPython", "finds whether Flask's CLI is running our own command (get_command's frame)"
    ),
    # PyMySQL (drivers/mysql.py): it has no public API for any of these.
    ("flask_dbpool.drivers.mysql", "_read_timeout"): _Allowed(
        "PyMySQL",
        "bounds a ping and the login handshake: PyMySQL applies its private read/write "
        "timeouts to the socket itself before each read (no public setter); put back after",
    ),
    ("flask_dbpool.drivers.mysql", "_write_timeout"): _Allowed(
        "PyMySQL", "as _read_timeout, for writes"
    ),
    ("flask_dbpool.drivers.mysql", "_result"): _Allowed(
        "PyMySQL",
        "the last result: a multi-result reply (CALL, multi-statement) or an unbuffered one "
        "not read to its end would reach the next borrower; PyMySQL's cursors read it so too",
    ),
    ("flask_dbpool.drivers.mysql", "_finish_unbuffered_query"): _Allowed(
        "PyMySQL",
        "reads out an unfinished SSCursor result before the rollback, as PyMySQL itself "
        "does before its next command (without its warning)",
    ),
    ("flask_dbpool.drivers.postgres", "_notifies_backlog"): _Allowed(
        "psycopg",
        "the notifications received for the previous borrower and not read: emptied by "
        "reset_on_return='discard' (no public way without waiting on the socket)",
    ),
    ("flask_dbpool.drivers.mysql", "_sock"): _Allowed(
        "PyMySQL", "the socket's descriptor, pointed at /dev/null in a forked child"
    ),
    # psycopg 3 (drivers/postgres.py): no public way to list the handlers a borrower added.
    ("flask_dbpool.drivers.postgres", "_notice_handlers"): _Allowed(
        "psycopg", "save_settings() records them so the return puts them back"
    ),
    ("flask_dbpool.drivers.postgres", "_notify_handlers"): _Allowed(
        "psycopg", "as _notice_handlers"
    ),
    # Ours: a handle's entry (PooledConnection._entry, a slot), read directly only on the
    # pool's inlined release path, where a call (proxy.entry_of) would cost on every return;
    # everywhere else through proxy.entry_of / proxy.set_entry.
    ("flask_dbpool.pool", "_entry"): _Allowed(_OURS, "the pool's inlined hot path"),
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_own(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: the object's own members."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


_BY_NAME = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private_reaches(path: Path, modules: Collection[str]) -> Counter[str]:
    """The private members of other objects that ``path`` reaches, with how often."""
    found: Counter[str] = Counter()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Attribute):
            if _is_private(node.attr) and not _is_own(node.value):
                found[node.attr] += 1
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _BY_NAME
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and not _is_own(node.args[0])
        ):
            found[node.args[1].value] += 1
    for source, names, _ in _import_statements(path):
        found.update(
            name for name in names if _is_private(name) and f"{source}.{name}" not in modules
        )
    return found


def test_no_reaching_into_private_members() -> None:
    modules = _modules()
    reaches = {
        (module, member): count
        for module, path in modules.items()
        for member, count in _private_reaches(path, modules).items()
    }
    unexpected = sorted(
        f"{module}: {member} ({count}x)"
        for (module, member), count in reaches.items()
        if (module, member) not in _ALLOWED
    )
    assert unexpected == [], (
        "private members of other objects reached; make them public, restructure, or add "
        "them to _ALLOWED with the reason:\n  " + "\n  ".join(unexpected)
    )
    unused = sorted(
        f"{module}: {member}" for module, member in _ALLOWED if (module, member) not in reaches
    )
    assert unused == [], "_ALLOWED entries no longer used, remove them:\n  " + "\n  ".join(unused)
    assert all(allowed.owner and allowed.why for allowed in _ALLOWED.values())
    ours = sorted(
        f"{m}: {name}" for (m, name), allowed in _ALLOWED.items() if allowed.owner == _OURS
    )
    assert len(ours) <= _OUR_LIMIT, (
        f"{len(ours)} of our own private members are reached across objects (at most "
        f"{_OUR_LIMIT}): give them a public way in instead:\n  " + "\n  ".join(ours)
    )


# --- 2. No import cycle in the package ---------------------------------------------------------
# An edge per import, also inside functions and TYPE_CHECKING blocks: ``import a.b.c`` and
# ``from a.b.c import name`` lead to ``a.b.c`` and to the packages ``a``, ``a.b`` it runs
# first, plus ``a.b.c.name`` when that is a module. A module's own packages are not edges:
# Python runs them before the module anyway, so ``from flask_dbpool import messages`` (a
# submodule) in a submodule needs nothing of ``flask_dbpool/__init__.py``; importing a name
# the package defines or re-exports from it (``from flask_dbpool import Pool``), or the bare
# package, does need it and is an edge. The one exemption: the root's lazy ``__getattr__``
# (and the TYPE_CHECKING import beside it, for the type), which resolves ``DBPool`` only once
# the package is imported; ``test_core_does_not_import_flask`` checks it stays lazy.

_LAZY = frozenset({"flask_dbpool.aio", "flask_dbpool.flask"})  # what __getattr__ resolves


def _lines(tree: ast.Module) -> tuple[set[int], set[int]]:
    """The lines of ``tree``'s ``__getattr__`` functions, and of its TYPE_CHECKING blocks."""
    in_getattr: set[int] = set()
    in_type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            in_getattr.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for stmt in node.body:
                in_type_checking.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return in_getattr, in_type_checking


def _edges(
    module: str, statements: Iterable[tuple[str, list[str], ast.stmt]], modules: Iterable[str]
) -> set[str]:
    """Where ``module``'s ``statements`` lead (see above)."""
    known = set(modules)
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    edges: set[str] = set()
    for source, names, _ in statements:
        submodules = {f"{source}.{name}" for name in names} & known
        if source not in own or not names or len(submodules) < len(names):
            edges.add(source)  # runs it, or needs a name it defines
        parts = source.split(".")
        packages = {".".join(parts[:i]) for i in range(1, len(parts))}
        edges.update(packages - own)  # run before it, unless they are this module's own
        edges.update(submodules)
    return (edges & known) - {module}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports; the root's lazy edges left out."""
    modules = _modules()
    graph = {
        name: _edges(name, _import_statements(path), modules) for name, path in modules.items()
    }
    root = modules[_ROOT]
    in_getattr, in_type_checking = _lines(ast.parse(root.read_text(encoding="utf-8")))
    statements = _import_statements(root)
    lazy = _edges(_ROOT, [s for s in statements if s[2].lineno in in_getattr], modules)
    eager = _edges(
        _ROOT,
        [s for s in statements if s[2].lineno not in in_getattr | in_type_checking],
        modules,
    )
    assert lazy - eager == _LAZY, (
        f"flask_dbpool/__init__.py imports only {sorted(_LAZY)} lazily (in __getattr__), and "
        f"nothing else there: lazily {sorted(lazy)}, eagerly {sorted(eager)}"
    )
    graph[_ROOT] -= _LAZY
    return graph


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import path from ``start`` to ``goal`` (a cycle when they are the same)."""
    came_from: dict[str, str] = {}
    todo = deque([start])
    while todo:
        name = todo.popleft()
        for following in sorted(graph.get(name, ())):
            if following not in came_from:
                came_from[following] = name
                if following == goal:
                    path = [goal]
                    while path[-1] != start or len(path) == 1:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                todo.append(following)
    return None


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert {"flask_dbpool.pool", "flask_dbpool.state", "flask_dbpool.flask.extension"} <= set(graph)
    cycles: list[str] = []
    in_a_cycle: set[str] = set()
    for name in sorted(graph):
        if name in in_a_cycle:
            continue
        cycle = _path(graph, name, name)
        if cycle is not None:
            # Report each strongly connected set of modules once.
            in_a_cycle.update(
                m for m in graph if _reaches(graph, name, m) and _reaches(graph, m, name)
            )
            cycles.append(" -> ".join(cycle))
    assert cycles == [], "import cycles in flask_dbpool:\n  " + "\n  ".join(cycles)


# --- 3. No core module imports pool.py ---------------------------------------------------------
# The pool is a shell over the core (ARCHITECTURE.md, "Layers"): below it, nothing may import
# it, even under TYPE_CHECKING, directly or through another module (a Protocol says what the
# core needs of it). Only the layers on top use the public Pool: the Flask side (L6), metrics
# (L5), the demo app and the pytest plugin (a tool for users' suites, on top of everything);
# and the package root, which re-exports it.

_POOL = "flask_dbpool.pool"
_POOL_USERS = (
    "flask_dbpool.flask",
    "flask_dbpool.metrics",
    "flask_dbpool.demo",
    "flask_dbpool.testing",
)  # and below
_CORE_AT_LEAST = {
    f"flask_dbpool.{name}"
    for name in [
        "state", "entry", "leaks", "lifecycle", "maintenance", "proxy", "_fork", "_handoff",
        "messages", "errors", "config", "url", "drivers", "drivers.base", "drivers.sqlite",
        "drivers.postgres", "drivers.mysql", "stats", "report", "policy", "hooks", "sizing",
    ]
}  # fmt: skip


def _uses_pool(module: str) -> bool:
    return module in (_ROOT, _POOL) or any(
        module == user or module.startswith(f"{user}.") for user in _POOL_USERS
    )


def test_no_core_module_imports_the_pool() -> None:
    graph = _import_graph()
    core = {name for name in graph if not _uses_pool(name)}
    assert core >= _CORE_AT_LEAST, sorted(_CORE_AT_LEAST - core)
    wrong = sorted(
        " -> ".join(path) for name in core if (path := _path(graph, name, _POOL)) is not None
    )
    assert wrong == [], "core modules importing flask_dbpool.pool:\n  " + "\n  ".join(wrong)
