# The two commands of the README:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 200000
export MODEL_ARTIFACT_PATH ?= ./models

.PHONY: venv demo test lint monitoring clean

# Create the environment once; re-install when the project metadata changes.
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

PORT ?= 8000

# Main job: generate demo data, train and promote a model, score a file of new orders,
# then serve the model over HTTP on 127.0.0.1:$(PORT) (Ctrl-C stops it).
demo: venv
	$(BIN)/intellilog generate --rows $(ROWS) --seed 7 --out data/deliveries.parquet
	$(BIN)/intellilog train --data data/deliveries.parquet --promote
	$(BIN)/intellilog models list
	$(BIN)/intellilog generate --rows 100000 --seed 8 --out data/new_orders.csv
	$(BIN)/intellilog score data/new_orders.csv --out out/etas.parquet
	$(BIN)/intellilog serve --port $(PORT)

lint: venv
	$(BIN)/ruff check kernels training server bench tests
	$(BIN)/ruff format --check kernels training server bench tests
	$(BIN)/mypy

# Tests: lint, types, the suite with coverage, and the speed gates (ratios in bench/budgets.toml).
test: lint
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered -q tests bench/test_gates.py

# Prometheus config and alert rules: promtool's checks and the rules' unit tests
# (promtool: `apt-get install -y --no-install-recommends prometheus`; `make test` runs
# these too, in tests/monitoring, with a real Prometheus scraping a real server).
monitoring:
	promtool check config build/monitoring/prometheus/prometheus.yml
	promtool test rules build/monitoring/prometheus/alerts_test.yml

clean:
	rm -rf $(VENV) .setuptools-build *.egg-info data out models .pytest_cache .mypy_cache .ruff_cache .coverage
