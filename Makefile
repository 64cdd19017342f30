# Two commands set up and run everything on a fresh machine:
#   make demo   the end-to-end demo (installs the runtime only)
#   make test   the test suite (installs the runtime, then the test tools: torch, torchvision, pytorch-fid, face tools)
# `make install` installs the runtime alone; ACCEL=cuda12 or ACCEL=tpu adds JAX's accelerator plugin, e.g.
#   make install ACCEL=cuda12
# Every pip call takes the tested versions from requirements/constraints.txt.
PYTHON ?= python3
VENV ?= .venv
ACCEL ?=
BIN = $(VENV)/bin
CONSTRAINTS = requirements/constraints.txt
PIP = $(BIN)/pip install -q -c $(CONSTRAINTS)

ifneq ($(filter-out cuda12 tpu,$(ACCEL)),)
$(error ACCEL must be empty (CPU), cuda12 or tpu; got '$(ACCEL)')
endif
# One stamp per accelerator: `make install ACCEL=cuda12` after a CPU install adds the plugin instead of finding the
# venv up to date. The stamps depend on the files the install reads, so an edit to either reinstalls.
RUNTIME = $(BIN)/.installed-$(or $(ACCEL),cpu)
TESTING = $(BIN)/.installed-test

.PHONY: install test test-slow demo bench clean

$(RUNTIME): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.$(if $(ACCEL),[$(ACCEL)])'
	touch $@

# mediapipe 0.10.21 (the last release shipping its face-mesh model) asks for numpy<2 and protobuf<5 in its metadata
# but runs with numpy 2 and protobuf 6 (its other dependencies are the [preprocess] extra), hence --no-deps.
$(TESTING): $(RUNTIME)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps mediapipe==0.10.21
	touch $@

install: $(RUNTIME)

test: $(TESTING)
	$(BIN)/python -m pytest -q -n 2 --maxschedchunk 1 -m "not slow" --durations=15 tests

test-slow: $(TESTING)
	$(BIN)/python -m pytest -q -m slow tests

demo: $(RUNTIME)
	$(BIN)/metaportrait-jax demo

clean:
	rm -rf $(VENV) results
