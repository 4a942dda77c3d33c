# The two commands of the README: `make demo` and `make test`. Both set up .venv from scratch.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
# The CPU build of PyTorch. An unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint coverage install dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PIP) install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/polypseg demo --out demo-output --overwrite

lint: dev
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

# The precision-sensitive tests run once with native bf16 forced off and once forced on (whatever this CPU
# has), then the whole suite with the CPU's own setting: green here means green on both kinds of CPU.
test: lint
	POLYPSEG_NATIVE_BF16=0 $(VENV)/bin/python -m pytest -q -m precision
	POLYPSEG_NATIVE_BF16=1 $(VENV)/bin/python -m pytest -q -m precision
	$(VENV)/bin/python -m pytest -q

# The whole suite with line coverage of src/polypseg (slower than `make test`; not part of it).
coverage: dev
	$(VENV)/bin/python -m pytest -q --cov=polypseg --cov-report=term --cov-report=json:coverage.json

clean:
	rm -rf $(VENV) demo-output predictions .pytest_cache .ruff_cache .coverage coverage.json
