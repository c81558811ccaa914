# The README's quick start: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need: Debian packages (scripts/install_system_deps.sh) and the package with its
# dependencies into the virtual environment $(VENV) (torch pinned to the 2.13.0 CPU wheel in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dcd-installed
EXTRAS ?= dev,towers,serve,milvus,onnx

.PHONY: demo test test-fast lint install system-deps clean

demo: install
	$(BIN)/dcd demo $(DEMO_ARGS)

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check
	$(BIN)/ruff format --check

install: system-deps $(STAMP)

system-deps:
	PYTHON=$(PYTHON) bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) data/emoji data/scenes results cache
