# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

# torch is pinned first where absent: a bare `torch` requirement would pull several GB of CUDA
# wheels on a CPU-only machine. An already-installed torch (e.g. a cluster's CUDA build) is kept.
$(BIN)/galmock: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[mpi,test]"
	touch $@

install: $(BIN)/galmock

demo: install
	$(BIN)/galmock run jobs/demo.yaml

lint: install
	$(BIN)/ruff check .

test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest
