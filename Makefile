# Two commands do everything on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_VERSION_CHECK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup browser test serve synth lint bench train-default first-hour clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or package.json change; idempotent otherwise.
$(STAMP): pyproject.toml $(wildcard package.json package-lock.json)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; fi
	@touch $@

test: setup browser
	$(PY) -m pytest

# Headless Chromium for the web page test, from Debian when this is a root shell with apt (a CI runner, a container);
# elsewhere the test says how to install it and is skipped.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "make: could not install chromium; the browser test will be skipped"; \
	fi

serve: setup
	PORT=$${PORT:-8080} $(VENV)/bin/gunicorn -c service/gunicorn_conf.py 'service.app:create_app()'

synth: setup
	$(PY) -m infra.synth

lint: setup  # also a test (tests/test_lint.py)
	$(VENV)/bin/ruff check attngan trainer service infra tests bench models
	$(VENV)/bin/shellcheck --severity=warning $$(git ls-files '*.sh') .ci/run

bench: setup
	$(PY) bench/generate.py && $(PY) bench/serve.py && $(PY) bench/train.py && $(PY) bench/losses.py && $(PY) bench/best_of.py

train-default: setup
	bash models/train_default.sh

first-hour: setup
	bash models/first_hour.sh

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache
