# Set-up and entry points. Every target creates/updates .venv itself: nothing depends on
# what happens to be installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# pip byte-compiles every installed module (about 17,000 files: 77 of the 166 s of installing the test
# extra on a 2-core AMD EPYC); without it, Python compiles the ~6,000 modules the suite imports on their first
# import (19 s once), which needs it to write them: a PYTHONDONTWRITEBYTECODE in the environment would
# make every process compile them again, so it is not passed on to what runs in this .venv
PIP_INSTALL := $(PIP) install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: test test-all demo benchmark install venv clean wheel

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# stamps: re-install when the package metadata changes
$(VENV)/.stamp-base: setup.py pyproject.toml | $(PY)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.stamp-test: setup.py pyproject.toml | $(PY)
	$(PIP_INSTALL) -e ".[test]"
	touch $@ $(VENV)/.stamp-base

install: $(VENV)/.stamp-base

# two pytest-xdist workers: one process kept only 1.15 of the 2 cores busy (19.4 against 15.1 min of pytest on
# an Intel Xeon); tests that share a session fixture stay on one worker (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(VENV)/.stamp-test
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

test-all: $(VENV)/.stamp-test
	$(PY) -m pytest

demo: $(VENV)/.stamp-base
	$(VENV)/bin/keras-vitnt demo --overwrite

# the README's performance, quantisation and backend tables: about 2 hours on 2 cores (every section but backends took
# 90 min on an AMD EPYC with AVX512_BF16 and 99 min on an AVX2-only one, backends 15-18 min; each section runs in a
# process of its own); needs timm, jax and openvino, hence the test extra
benchmark: $(VENV)/.stamp-test
	$(VENV)/bin/keras-vitnt benchmark --rounds 5 --overwrite

# dist/keras_vitnt-<version>-py3-none-any.whl: e.g. to upload to a Colab session (see the notebook)
wheel: | $(PY)
	$(PIP) wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
