# Two commands do all the set-up on a fresh Linux machine with Python >= 3.10 and pip:
#   make train   create .venv, install scratchformer, run `scratchformer train` (embedded default task)
#   make test    create .venv, install scratchformer with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: train test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -e ".[test]"

train: install
	$(BIN)/scratchformer train

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
