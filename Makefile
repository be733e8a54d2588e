# Set-up and the two everyday commands. `make repro` and `make test` do all set-up on a fresh
# machine and nothing more once it is done (the stamp files below track what changed).

PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Stages and DVC run from the virtual environment; DVC's queue workers find it on PATH too.
export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup repro test lint bench bench-real bench-peer browser readme screenshot clean-venv

setup: $(VENV)/.installed .dvc/tmp/plots_template.html

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Offline `dvc plots`: vega, vega-lite and vega-embed from the npm registry, inlined into the
# HTML template that .dvc/config points DVC at (no CDN needed to view the plots).
# --ignore-scripts: none of the pinned packages needs an install script.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

.dvc/tmp/plots_template.html: node_modules/.installed $(VENV)/.installed src/anomaly_spotter/evaluation/plots_template.py
	$(BIN)/python -m anomaly_spotter.evaluation.plots_template --node-modules node_modules --out $@

repro: setup
	dvc repro

# The README's results table, rewritten from metrics/summary.json (tests/test_readme.py checks it).
readme: setup
	python -m anomaly_spotter.evaluation.readme_table

# docs/plots.png: the plots page of the committed outputs (run after `make repro`), drawn by
# headless Chromium offline, as tests/test_plots_page.py draws it.
screenshot: setup browser
	dvc plots show --out .dvc/tmp/plots_page
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --host-resolver-rules="MAP * ~NOTFOUND" \
	  --virtual-time-budget=15000 --window-size=1300,2900 --user-data-dir=.dvc/tmp/chromium \
	  --screenshot=$(abspath docs/plots.png) file://$(abspath .dvc/tmp/plots_page)/index.html

test: setup browser lint
	python -m pytest

# Headless Chromium for the check that `dvc plots` pages really draw offline. Installed with
# apt when running as root (CI); elsewhere that test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "chromium not installed (needs root and apt-get): the offline plot rendering test will skip"; fi

# Benchmarks print figures (bench/README.md records them); none of them is a test.
bench: setup
	python bench/train_speed.py
	python bench/evaluate_speed.py
	python bench/preprocess_speed.py
	python bench/startup.py
	python bench/pipeline.py
	python bench/ablation.py

# The real-data benchmark that detector defaults are chosen by: every configuration in bench/real_data.py over
# each set in ../shared/datasets and the built-in one, whole pipeline per run; writes bench/results/real_data.json
# and the README table (hours on 2 cores; `python bench/real_data.py --configs default` runs one configuration).
bench-real: setup
	python bench/real_data.py

# Our PatchCore against anomalib's Patchcore (same data, weights, taps, coreset), anomalib in its own venv
# (bench/.venv-anomalib, made from bench/peer_requirements.txt on the first run); writes bench/results/peer_anomalib.json.
bench-peer: setup
	python bench/peer_anomalib.py

clean-venv:
	rm -rf $(VENV) node_modules build

# ruff (lint + format check) and mypy on the package, as pyproject.toml states them; `make test` runs it first.
lint: setup
	ruff check . && ruff format --check . && mypy
