# loong-dist: two commands on a fresh machine.
#   make demo   - the main job on the embedded defaults (local Ray, local folder, CPU)
#   make test   - the test suite
# Both create .venv when it is absent and install exactly what is pinned; a second run installs nothing.
# On GPU nodes pick a CUDA build of the same torch, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
OUT ?= runs/demo
PYTEST_ARGS ?=
# Test files run in this many pytest-xdist workers, a file's tests in one worker (its module fixtures
# made once), handed out in tests/conftest.py's order (longest files first, so none starts last and
# runs alone). Half the suite's time is Ray start-up, S3 servers and subprocesses waiting: two
# workers keep both cores of the 2-core reference machine busy. 0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Caches stay inside the project: DeepSpeed's compiled CPU ops, Ray's temp files, sample videos.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export LOONG_CACHE_DIR ?= $(CURDIR)/.cache/loong
export RAY_USAGE_STATS_ENABLED := 0
# glibc keeps freed memory instead of unmapping large blocks (see loong_dist/cli.py keep_freed_memory).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 1073741824
export PYTHONDONTWRITEBYTECODE := 1
# The virtualenv's tools first, as if it were activated: every process compiles DeepSpeed's ops with
# the pinned ninja (a build log written by another ninja version makes the next one compile again).
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench lock clean

install: $(STAMP)

# Order matters: torch first (so nothing else pulls a CUDA torch), then the pinned rest,
# then DeepSpeed built against the torch already there, then this project (editable, no deps).
$(STAMP): requirements.txt requirements-deepspeed.txt constraints.txt pyproject.toml
	@if [ ! -x $(BIN)/python ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@$(BIN)/python -c 'import sys; v = sys.version.split()[0]; \
		assert sys.version_info[:2] == (3, 11), f"loong-dist pins need Python 3.11, .venv has {v}"'
	$(BIN)/pip install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -r requirements.txt -c constraints.txt
	$(BIN)/pip install --no-build-isolation -r requirements-deepspeed.txt -c constraints.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.quickstart --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest tests $(XDIST) $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Re-pin every transitive dependency after changing requirements*.txt (torch stays out:
# its build differs between CPU boxes and GPU nodes).
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch|loong-dist)==' > constraints.txt

clean:
	rm -rf $(VENV) .cache .pytest_cache
