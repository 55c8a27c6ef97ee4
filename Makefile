# `make run` and `make test` work on a fresh machine: they create .venv when no virtualenv is active.
SHELL := /bin/bash
PY_SYS ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
# What each command needs, installed once (again when pyproject.toml or constraints.txt change):
# the runtime for run/demo/bench, the test extras (Playwright, PostgreSQL driver, Ray, MuJoCo) on top
# for test. Every install goes through constraints.txt (see the README).
# `make run PORT=8502 ARGS="--labels 100"`: another port for the rater app, more `prefloop run` options.
PORT ?= 8501
ARGS ?=
RUN_STAMP := $(VENV)/.prefloop-runtime
TEST_STAMP := $(VENV)/.prefloop-test

.PHONY: run demo test install bench clean system-deps

$(PY):
	$(PY_SYS) -m venv $(VENV)

$(RUN_STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(TEST_STAMP)

install: $(RUN_STAMP)

# The human loop: the trainer plus the rater app on http://127.0.0.1:$(PORT) (you are the teacher).
# With --resume in ARGS the run keeps the settings in its config.json, so none are passed (prefloop
# refuses run settings given with --resume): `make run ARGS="--run-dir runs/NAME --resume"`.
RUN_SETTINGS := --env CartPole-v1 --labels 60 --steps 150000 --seed 0
run: $(RUN_STAMP)
	$(VENV)/bin/prefloop run $(if $(findstring --resume,$(ARGS)),,$(RUN_SETTINGS)) --port $(PORT) $(ARGS)

# The unattended demo: the same loop with a simulated (oracle) teacher.
demo: $(RUN_STAMP)
	$(VENV)/bin/prefloop train --env CartPole-v1 --teacher oracle --labels 200 --steps 100000 --seed 0

# What the tests need from the system: Debian's chromium (the browser tests; never a downloaded
# browser), PostgreSQL (the store runs on both backends) and Mesa's EGL (headless MuJoCo clips). Installed when missing and we are root.
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	ldconfig -p | grep -q 'libEGL.so.1' || missing="$$missing libegl1 libgl1-mesa-dri"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (install them with apt-get; the tests that need them will fail)"; fi; \
	fi

# Two pytest workers, one per core of the 2-core CI machine (one on a 1-CPU machine), each test file
# on one worker (its module fixtures stay shared): the suite waits on browsers, servers and child
# processes about half of its time, so two streams take about half the wall time of one. Files go
# out in collection order, the longest first (tests/conftest.py: LONGEST_FILES_FIRST).
test: $(TEST_STAMP) system-deps
	$(PY) -m pytest -n logical --maxprocesses 2 --dist loadfile --no-loadscope-reorder

bench: $(RUN_STAMP)
	$(VENV)/bin/prefloop bench --envs CartPole-v1 Pendulum-v1 --labels 200 --seeds 0 1 2 --out bench-out/core

clean:
	rm -rf .venv build dist *.egg-info
