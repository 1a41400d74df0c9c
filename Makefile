# The README's commands. `make demo` runs the platform; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.goshen-installed
TORCH  := torch==2.13.0
SHELL  := bash
.SHELLFLAGS := -eo pipefail -c
# pip.conf on some machines names index folders that do not exist; pip warns once per package.
QUIET_PIP := { grep -v "^WARNING: Location" || true; }

.PHONY: setup demo up test lint format bench chaos load clean browser screenshots notebooks

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Take the CPU build of torch when pip can find it locally, so the project's torch
	@# requirement is already met and pip never pulls the multi-gigabyte CUDA build.
	@if $(BIN)/pip install --dry-run --no-index --no-deps --quiet $(TORCH) >/dev/null 2>&1; then \
		echo "installing $(TORCH) (local CPU build)"; \
		$(BIN)/pip install --quiet $(TORCH) 2>&1 | $(QUIET_PIP); \
	fi
	$(BIN)/pip install --quiet -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import goshen, serving, goshen_pipelines, dashboard, goshen_launcher, torch, dagster, mlflow"
	touch $(STAMP)

demo: setup
	$(BIN)/goshen demo

up: setup
	$(BIN)/goshen up

# The analysts' notebooks in marimo's editor. They read the platform as every Goshen process
# does, from the GOSHEN_* variables and .env here (a relative GOSHEN_HOME is taken from here).
notebooks: setup
	$(BIN)/marimo edit notebooks/

test: lint browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The chaos suite's full run (tests/chaos; `make test` runs its short run): 1,000 jobs through
# three worker kills, a frozen worker and a PostgreSQL restart. Its figures: .goshen/chaos.json.
chaos: setup
	@mkdir -p .goshen
	GOSHEN_TEST_CHAOS=full GOSHEN_TEST_CHAOS_REPORT=$(CURDIR)/.goshen/chaos.json \
		$(BIN)/python -m pytest -n 0 -s -q tests/chaos

# The load test at fixed rates on PostgreSQL (bench/load/run.py; its table goes to BENCHMARKS.md).
load: setup
	@mkdir -p .goshen
	$(BIN)/python bench/load/run.py --out $(CURDIR)/.goshen/load.json

# The dashboard's browser test drives Debian's Chromium; install it when it is missing and this
# user may (CI runs as root). Playwright cannot download a browser of its own here.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the dashboard's browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "note: /usr/bin/chromium is missing; run 'sudo apt-get install chromium' or the browser test is skipped (under CI=true it fails)"; \
		fi; \
	fi

# Retake the README's dashboard screenshots (docs/dashboard/) with the browser test.
screenshots: setup browser
	GOSHEN_TEST_SCREENSHOTS_DIR=$(CURDIR)/docs/dashboard $(BIN)/python -m pytest -q tests/dashboard/test_browser.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .goshen .pytest_cache .ruff_cache
