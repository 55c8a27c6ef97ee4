# `make run` and `make test` work on a fresh machine: they create .venv when no virtualenv is active.
SHELL := /bin/bash
PY_SYS ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefloop-installed

.PHONY: run test install bench clean

$(PY):
	$(PY_SYS) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/prefloop train --env CartPole-v1 --teacher oracle --labels 200 --steps 100000 --seed 0

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(VENV)/bin/prefloop bench --envs CartPole-v1 Pendulum-v1 --labels 200 --seeds 0 1 2 --out bench-out/core

clean:
	rm -rf .venv build dist *.egg-info
