"""``flask_dbpool.testing``, the pytest plugin for users' suites: a test that leaves a pooled
connection checked out errors in teardown, naming where it was checked out (run in an inner
pytest through ``pytester``, on SQLite)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest
from flask_dbpool import Pool

pool = Pool("sqlite:///{db}", leak_threshold=3600, name="app")
plain = Pool("sqlite:///{db}", name="plain")
held_for_the_session = pool.acquire()  # before any test: no test's doing


def test_forgets_its_connection():
    conn = pool.acquire()  # LEAK-LINE
    conn.cursor().execute("SELECT 1")


def test_returns_its_connection():
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")


@pytest.fixture
def fixture_conn():
    conn = plain.acquire()
    yield conn
    conn.close()  # returned in teardown: fine


def test_uses_a_fixture(fixture_conn):
    fixture_conn.cursor().execute("SELECT 1")


def test_forgets_one_without_a_leak_threshold():
    plain.acquire()


def test_drops_one_the_pool_reclaims():
    import gc

    plain.acquire()  # dropped at once
    gc.collect()
    plain.run_maintenance()  # reclaimed before the test ends: still its leak


def test_closed_pools_are_left_alone():
    closing = Pool("sqlite:///{db}")
    closing.acquire()
    closing.close()
'''


def test_a_test_that_keeps_a_connection_errors_with_the_line(
    pytester: pytest.Pytester, tmp_path: object
) -> None:
    source = INNER.replace("{db}", str(pytester.path / "inner.db"))
    inner = pytester.makepyfile(test_inner=source)
    written = inner.read_text().splitlines()
    line = next(i for i, text in enumerate(written, 1) if "LEAK-LINE" in text)
    result = pytester.runpytest_subprocess("-p", "flask_dbpool.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=3)
    out = result.stdout.str()
    assert "PluggyTeardownRaisedWarning" not in out
    assert "ERROR at teardown of test_forgets_its_connection" in out
    assert f"{inner.name}:{line} in test_forgets_its_connection" in out
    assert "ERROR at teardown of test_forgets_one_without_a_leak_threshold" in out
    assert "give the pool a leak_threshold" in out
    assert "ERROR at teardown of test_drops_one_the_pool_reclaims" in out
    assert "was dropped without being returned (the pool reclaimed it)" in out
    for fine in ("test_returns_its_connection", "test_uses_a_fixture", "test_closed_pools"):
        assert f"ERROR at teardown of {fine}" not in out


def test_without_the_plugin_nothing_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_inner=INNER.replace("{db}", str(pytester.path / "inner.db"))
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
