# The two commands of the README, and a few more. Each creates and reuses .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo loop test dev bench lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## demo: the batch path: land the demo days and build, train and register through Dagster's Python API (no daemon)
demo: $(STAMP)
	$(BIN)/loopwise demo

## loop: the README's first command: set up and run the closed loop with Dagster's daemon and the service
## (`loopwise loop`): land, train, release, serve, drift, retrain, canary, then the serving model's lineage
loop: $(STAMP)
	$(BIN)/loopwise loop

## test: set up and run the test suite (see README for the services it uses) in TEST_WORKERS processes
## (pytest-xdist, a test file per worker at a time; TEST_WORKERS=0 runs it in one process); it ends with the 20
## slowest steps, to keep the suite under its 15-minute budget
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=20 $(PYTEST_ARGS)

## dev: the Dagster UI and daemon (`dg dev`) on http://127.0.0.1:3000 over the same data root as the demo;
## landing a day (`loopwise land --date ...`) is then enough for it to reach the online store
dev: $(STAMP)
	DAGSTER_HOME=$${DAGSTER_HOME:-$$(pwd)/.loopwise/dagster} && mkdir -p $$DAGSTER_HOME && \
	  export DAGSTER_HOME && $(BIN)/dg dev --host 127.0.0.1 --port 3000

## bench: the benchmarks, each side by side with its peer (appends to benchmarks/RESULTS.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/data_layer.py
	$(BIN)/python benchmarks/materialize.py
	$(BIN)/python benchmarks/landing.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/predlog.py
	$(BIN)/python benchmarks/predlog_service.py
	$(BIN)/python benchmarks/predictions.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/rollout.py

lint: $(STAMP)
	$(BIN)/ruff check platform assets resources jobs sensors definitions.py tests benchmarks feature_repo

clean:
	rm -rf .loopwise .loopwise-test test-artifacts
