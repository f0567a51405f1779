# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long legacy bench bench-tools lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bench.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The long runs of the adversarial suites: a 5-minute soak, more fuzzing and property examples.
test-long: $(STAMP)
	COALESCER_LONG=1 $(BIN)/python -m pytest -q

# dstack 0.18.40 in .venv-legacy; the real-server tests build it on first use anyway.
legacy: $(STAMP)
	$(BIN)/python -m harness.versions

lint: $(STAMP)
	$(BIN)/ruff check proxy harness bench tests
	$(BIN)/ruff format --check proxy harness bench tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile deploy/nginx/Dockerfile deploy/haproxy/Dockerfile tests/deploy/*.Dockerfile

# Every measurement in one run, on dstack 0.18.40 and 0.22.5 with SQLite, and on Postgres for the
# seed's claims (about 70 min on the 2-core machine, of which Postgres 8; --quick: a smoke run, about
# 3 min of it on Postgres; --databases sqlite: without Postgres): docs/measurements.md,
# docs/*.png, README.
# Needs nginx and wrk from Debian: installed here when run as root.
bench: $(STAMP) bench-tools
	$(BIN)/python -m bench

bench-tools:
	@if ! command -v wrk >/dev/null || ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk; \
	  else \
	    echo "make bench needs nginx and wrk: sudo apt-get install nginx wrk"; exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .venv-legacy .pytest_cache .hypothesis
