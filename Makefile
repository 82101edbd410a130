# Sluice: everything a fresh clone needs, installed and started by these targets.
# `make test` and `make run` create the virtual environment from uv.lock on first use.

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PY := $(VENV)/bin/python
DIST ?= dist
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install test lint unit run bench package checkov clean

install: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: the libraries' .pyc files, as pip leaves them in the cloud's build. Without
# them every fresh process parses the libraries' source again, 0.8 s of each cold start here
# (PYTHONDONTWRITEBYTECODE, set on many machines, stops Python from caching them itself).
$(VENV)/.synced: pyproject.toml shared/localcloud/pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

lint: install
	$(VENV)/bin/ruff check shared services tests testkit bench tools
	$(VENV)/bin/ruff format --check shared services tests testkit bench tools
	$(VENV)/bin/mypy

# checkov checks terraform/ offline; every check it skips says why where it is skipped.
CHECKOV_VENV := $(CURDIR)/$(TOOLS)/checkov
$(CHECKOV_VENV)/.synced: tools/checkov/pyproject.toml tools/checkov/uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(CHECKOV_VENV) $(UV) sync --frozen --quiet --project tools/checkov --python $(PYTHON)
	touch $@

checkov: $(CHECKOV_VENV)/.synced
	BC_SKIP_MAPPING=TRUE CHECKOV_NO_UPDATE_CHECK=1 $(CHECKOV_VENV)/bin/checkov --quiet --compact \
		--framework terraform --directory terraform --download-external-modules false

# The whole suite: pure logic, adapters on the emulators, functions, end to end on the local cloud.
# The local cloud is started and stopped by the tests' own fixtures.
# Tests run in TEST_WORKERS processes (pytest-xdist), each with its own emulators: the long
# end-to-end scenarios mostly wait (on rate limits, backoffs, outages), so they overlap well
# even on two cores. The heaviest on CPU share one worker (xdist_group "cpu-heavy").
TEST_WORKERS ?= 3
test: lint checkov
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

unit: install
	$(PY) -m pytest tests/unit

# Starts the local cloud, submits a demo batch, and keeps running until Ctrl-C.
run: install
	$(PY) -m localcloud.run

# Figures measured on the local cloud, side by side in one run: bench/results/latest.{json,md}.
bench: install
	PYTHONPATH=. $(PY) bench/run.py $(PARTS)

# One deployable source archive per function (dist/<function>.zip), for terraform/.
package: install
	@mkdir -p $(DIST)
	$(UV) export --frozen --no-dev --no-emit-project --no-header --quiet --output-file $(DIST)/requirements.txt
	$(PY) tools/package.py --requirements $(DIST)/requirements.txt --out $(DIST)

clean:
	rm -rf $(VENV) $(TOOLS) .sluice .pytest_cache .mypy_cache .ruff_cache dist
