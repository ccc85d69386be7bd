# Two commands do everything (see README Quickstart):
#   make pipeline   set up .venv, then run the default pipeline (restores the trained group from the in-repo remote)
#   make test       set up .venv (and Debian's chromium, as root), then run the test suite
#                   (make test-width: the GPT-2-width tier, ~23 min more; CI runs both)
# Other commands (dvc, universal-neurons) need the venv: `source .venv/bin/activate` once per shell.
PYTHON ?= python3.11
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup browser pipeline test test-width lint metrics bench

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

pipeline: setup
	@echo "dvc repro --pull: every output comes from dvc-remote/ except the token set, which tokenize"
	@echo "rebuilds here (push: false); DVC's WARNING 'Unable to pull data for stage tokenize' says just that."
	dvc repro --pull
	universal-neurons log --if-missing   # a fresh clone's MLflow store gets this state's run once

# The browser tests drive Debian's headless Chromium: installed here when missing (as root or
# with password-less sudo); otherwise a message, and those tests skip naming the reason.
browser:
	@scripts/install_chromium.sh

# The test suite is every test but the GPT-2-width tier (pytest marker `width`): two tests at
# 3,072 neurons a layer whose float64 work alone takes ~23 min on 2 cores. CI (.ci/run) runs
# `make test test-width`; `python -m pytest` runs both tiers at once.
test: setup browser
	ruff check src stages tests benchmarks scripts
	ruff format --check src stages tests benchmarks scripts
	python -m pytest -m "not width"

test-width: setup
	python -m pytest -m width

lint: setup
	ruff check --fix src stages tests benchmarks scripts
	ruff format src stages tests benchmarks scripts

metrics: setup   # function lengths and docstrings of src/ (limits checked by tests/test_code_metrics.py)
	python scripts/code_metrics.py
