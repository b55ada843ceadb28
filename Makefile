# make reproduce   set up .venv, run the study's stages (train -> maps -> evaluations, one unit at a time, each
#                  written to results/<profile>/ as it finishes), every notebook (PROFILE=subset by default), the book
# make test        set up .venv (+ headless Chromium when root), run the test suite (SIPE_DATA_ROOT is ignored)
# make test-fast   the test suite without the tests marked slow (smoke path, end-to-end and learning runs)
# make smoke       the seconds-long smoke profile end to end (notebooks + book), on the synthetic dataset
#                  (work/smoke-data) unless DATA_ROOT or SIPE_DATA_ROOT names a data root
# make check-data  check the data root's layout with the system python (no install needed)
# make book        build the book from the executed notebooks in book/executed/
# make stages      only the stages of every unit (variant, seed) of PROFILE in turn (resumable; for a background run
#                  with a log: nohup make stages PROFILE=subset > work/subset-stages.log 2>&1 &)
# NPROC=N          (reproduce, smoke, stages) train and make maps in N processes through torchrun (one per GPU)

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sipe-installed
PROFILE ?= subset
NPROC ?= 1
# pytest-xdist workers of `make test` / `make test-fast` (one test file per worker at a time, so module fixtures run
# once; the longest files first, by their seconds in tests/durations.json: see tests/conftest.py)
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# The tests ignore a caller's data root; Python caches bytecode for the suite's ~50 processes (runners, kernels,
# workers), even where the machine sets PYTHONDONTWRITEBYTECODE (each would compile the package again).
TEST_ENV := env -u SIPE_DATA_ROOT -u PYTHONDONTWRITEBYTECODE
# A data root given by the caller (command line or environment), before any default applies.
GIVEN_DATA_ROOT := $(or $(DATA_ROOT),$(SIPE_DATA_ROOT))
DATA_ROOT ?= $(or $(SIPE_DATA_ROOT),../shared/data/voc2012_subset)
export SIPE_DATA_ROOT := $(abspath $(DATA_ROOT))
SMOKE_DATA := work/smoke-data

.PHONY: env browser-deps test test-fast check-data reproduce book smoke stages

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sipe)"
	touch $@

browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing headless Chromium for the browser test"; \
		apt-get update && apt-get install -y chromium; \
	else echo "note: /usr/bin/chromium is missing and we are not root: the browser test will be skipped"; fi

# The suite makes its own data (synthetic, or the shared subset found by the tests): an inherited
# SIPE_DATA_ROOT must not leak into it.
test: env browser-deps
	@rc=0; $(TEST_ENV) $(PYTEST) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: env
	@rc=0; $(TEST_ENV) $(PYTEST) -m "not slow" || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Standard library only: fails in a second, before the long install, when the data root is wrong.
check-data:
	$(PYTHON) data_prep/check_root.py "$(SIPE_DATA_ROOT)"

reproduce: check-data
	$(MAKE) --no-print-directory env
	$(BIN)/python -m sipe stages --profile $(PROFILE) --nproc $(NPROC)
	$(BIN)/python -m sipe.reproduce --profile $(PROFILE) --nproc $(NPROC)
	$(MAKE) book

book: env
	$(BIN)/jupyter-book build .

ifeq ($(GIVEN_DATA_ROOT),)
smoke:
	$(MAKE) --no-print-directory env
	$(BIN)/python -m data_prep.make_synthetic --out $(SMOKE_DATA) --n-images 16 --height 96 --width 128 --seed 0
	$(MAKE) reproduce PROFILE=smoke DATA_ROOT=$(SMOKE_DATA)
else
smoke:
	$(MAKE) reproduce PROFILE=smoke
endif

stages: env
	$(BIN)/python -m sipe stages --profile $(PROFILE) --nproc $(NPROC)
