# The two commands of the README:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 200000
export MODEL_ARTIFACT_PATH ?= ./models

.PHONY: venv demo test lint monitoring clean lock

# Create the environment once; re-install when the project metadata or the lock changes.
# Every package comes from requirements/dev.lock (exact versions, sha256 hashes checked),
# then the project itself without dependencies: a fresh clone installs the same versions
# every time.
$(VENV)/.installed: pyproject.toml setup.py requirements/dev.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# Refresh the lock files after changing dependencies in pyproject.toml (needs the package
# registry): base, dev and one per extra, universal (any platform), for Python 3.11.
EXTRAS := dask mlflow s3 grpc gpu
lock: venv
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 -q -o requirements/base.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal --python-version 3.11 -q -o requirements/dev.lock
	for e in $(EXTRAS); do $(BIN)/uv pip compile pyproject.toml --extra $$e --generate-hashes --universal --python-version 3.11 -q -o requirements/$$e.lock || exit 1; done

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
