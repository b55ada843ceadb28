# make reproduce   set up .venv, run the study's stages (train -> maps -> evaluations, one unit at a time, each
#                  written to results/<profile>/ as it finishes), every notebook (PROFILE=subset by default), the book
# make test        set up .venv (+ headless Chromium when root), run the test suite
# make smoke       the seconds-long smoke profile end to end (notebooks + book)
# make book        build the book from the executed notebooks in book/executed/
# make stages      only the stages of every unit (variant, seed) of PROFILE in turn (resumable; for a background run
#                  with a log: nohup make stages PROFILE=subset > work/subset-stages.log 2>&1 &)

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sipe-installed
PROFILE ?= subset
VARIANTS ?= sipe cam semantic_nobpm semantic_bpm hierarchical_nobpm sipe_bg05
DATA_ROOT ?= $(or $(SIPE_DATA_ROOT),../shared/data/voc2012_subset)
export SIPE_DATA_ROOT := $(abspath $(DATA_ROOT))

.PHONY: env browser-deps test reproduce book smoke stages

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

test: env browser-deps
	@rc=0; $(BIN)/python -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

reproduce: env
	$(BIN)/python -m sipe stages --profile $(PROFILE)
	$(BIN)/python -m sipe.reproduce --profile $(PROFILE)
	$(MAKE) book

book: env
	$(BIN)/jupyter-book build .

smoke:
	$(MAKE) reproduce PROFILE=smoke

stages: env
	$(BIN)/python -m sipe stages --profile $(PROFILE)
