# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long legacy bench lint clean

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
	$(BIN)/python -m tests.support.versions

lint: $(STAMP)
	$(BIN)/ruff check proxy bench tests
	$(BIN)/ruff format --check proxy bench tests
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile tests/deploy/*.Dockerfile

bench: $(STAMP)
	$(BIN)/python -m bench.passthrough
	$(BIN)/python -m bench.coalescing

clean:
	rm -rf $(VENV) .venv-legacy .pytest_cache .hypothesis
