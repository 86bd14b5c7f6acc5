# The two Quick start commands: `make train` (the main job) and `make test`.
# Each creates .venv if needed, installs torch==2.13.0 first (a CPU build; an open
# torch requirement would pull several GB of CUDA packages), then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/sinusoid-maml

.PHONY: install install-dev train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[plot]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,plot]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Main job: meta-train MAML on sinusoids with the paper's settings (about 10 minutes on
# 2 CPU cores), then evaluate 5-shot MSE after 1/5/10 steps beside the paper's figures.
train: $(VENV)/.installed
	$(BIN)/metaloop train configs/sinusoid-maml.toml --run-dir $(RUN_DIR)
	$(BIN)/metaloop eval $(RUN_DIR) --episodes 600 --shots 5 --steps 1,5,10

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -x --timeout=600 tests

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
