# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# e.g. make bench-e2e BENCH_E2E_ARGS='--rounds 3 --worker-class gevent'
BENCH_E2E_ARGS ?= --pin

.PHONY: test demo lint typecheck pytest bench bench-e2e wrk clean chaos

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# mysqlclient (MySQLdb) compiles against the MariaDB/MySQL client headers; without them
	@# its tests skip, saying why (.ci/run installs libmariadb-dev and pkg-config).
	@$(PY) -m pip install -q -e '.[mysqlclient]' >/dev/null 2>&1 \
	  || echo "mysqlclient not built (needs libmariadb-dev and pkg-config): its tests will skip"
	@touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

pytest: $(STAMP)
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) -m flask_dbpool.demo

# Hot path + contention + end to end with progress bars; tables into docs/benchmarks.md
# (between <!-- bench:begin/end -->), charts into docs/img/ (benchmarks/bench_all.py --help).
# e.g. make bench BENCH_ARGS=--quick, or BENCH_ARGS='--rounds 3 --seconds 5 --skip-e2e'
BENCH_ARGS ?=
bench: $(BENCH_STAMP) $(if $(findstring --skip-e2e,$(BENCH_ARGS)),,wrk)
	$(PY) benchmarks/bench_all.py $(BENCH_ARGS)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# End to end: gunicorn + wrk per variant (benchmarks/e2e/run.py --help); needs PostgreSQL.
bench-e2e: $(BENCH_STAMP) wrk
	$(PY) benchmarks/e2e/run.py $(BENCH_E2E_ARGS)

# The chaos suite's long version (not in CI): gunicorn + killed sessions + a server restart
# on a throwaway PostgreSQL cluster, per worker class; prints the table (README).
chaos: $(STAMP)
	$(PY) tests/chaos/harness.py $(CHAOS_ARGS)

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get install -y -q wrk; \
	  else echo "wrk is missing: sudo apt-get install wrk (or build github.com/wg/wrk)"; exit 1; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
