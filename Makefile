# The course's two commands (see README.md):
#   make lab    set up .venv if needed, then open JupyterLab on notebooks/
#   make test   set up .venv if needed, then unit tests and nbval on every notebook (in two lanes side by side)
# Everything else here is a building block of those two.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
KERNEL_NAME := fhe-gpt2-course
KERNEL_DISPLAY := FHE GPT-2 course (Python 3)
# Extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
STAMP := $(VENV)/.installed

# The first Python 3.10-3.12 found (3.11 preferred: the version the course is tested on).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.10 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)

export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
# While tests run, PyTorch's OpenMP threads (GNU libgomp) sleep as soon as they are idle instead of spinning for a
# while: beside a second lane, or beside concrete's own threads, spinning threads take the cores the others need
# (measured: the held-out perplexity test beside an encrypted run, 7 s instead of 16, and the run itself 57 s
# instead of 70). concrete's runtime has its own OpenMP (LLVM's libomp), which this variable does not touch.
test test-browser test-quick test-lane-long test-lane-rest unit nbval: export GOMP_SPINCOUNT := 0

.PHONY: lab test test-browser test-quick test-lane-long test-lane-rest setup kernel unit nbval notebooks lint train-model clean

# JupyterLab refuses to run as root unless told (containers, CI): say so only there.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG) $(LAB_ARGS)

# Two lanes side by side. Most of a lane's time goes to compiling circuits, which keeps one core busy, so two lanes
# share a 2-core machine. One lane runs notebook 04 (the longest notebook) and the Dask tests (LONG_LANE_TESTS: a
# cluster of their own, about two minutes); the other runs every other unit test, then the other notebooks. The split
# is by measured time, so that both lanes end together; the README's Development section gives the figures. A lane
# runs all its parts even when one fails, and fails if any did. Memory: notebook 04's server holds its evaluation keys
# (11 GB), and both lanes together stay within the 24 GB of the CI machine. Each lane's output is printed when the lane ends (`--output-sync`), so the two never interleave.
LONG_NOTEBOOKS := notebooks/04_full_mha.ipynb
OTHER_NOTEBOOKS := $(filter-out $(LONG_NOTEBOOKS),$(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)))
LONG_LANE_TESTS := tests/test_distributed.py
# Notebooks 02 to 04 through JupyterLab in Chromium under the lighter settings: about 15 minutes, so `make test`
# leaves them to `make test-browser` (.ci/run runs both; notebook 01's browser test stays in `make test`).
BROWSER_NOTEBOOK_TESTS := tests/test_browser_notebooks.py
LONG_LANE := $(LONG_NOTEBOOKS), then $(LONG_LANE_TESTS)
REST_LANE := the other unit tests, then $(OTHER_NOTEBOOKS)

test: setup
	@echo "make test: two lanes side by side, each printed when it ends: [$(LONG_LANE)] and [$(REST_LANE)]"
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j2 --output-sync=target test-lane-long test-lane-rest; status=$$?; \
	echo "make test: both lanes done in $$(( $$(date +%s) - start )) s"; exit $$status

test-lane-long:
	@start=$$(date +%s); status=0; $(MAKE) --no-print-directory nbval NBVAL_NOTEBOOKS="$(LONG_NOTEBOOKS)" || status=$$?; \
	$(MAKE) --no-print-directory unit UNIT_TESTS="$(LONG_LANE_TESTS)" || status=$$?; \
	echo "lane [$(LONG_LANE)] took $$(( $$(date +%s) - start )) s"; exit $$status

test-lane-rest:
	@start=$$(date +%s); status=0; \
	$(MAKE) --no-print-directory unit \
		UNIT_TESTS="tests $(addprefix --ignore=,$(LONG_LANE_TESTS) $(BROWSER_NOTEBOOK_TESTS))" || status=$$?; \
	$(MAKE) --no-print-directory nbval NBVAL_NOTEBOOKS="$(OTHER_NOTEBOOKS)" || status=$$?; \
	echo "lane [$(REST_LANE)] took $$(( $$(date +%s) - start )) s"; exit $$status

test-browser: setup
	@start=$$(date +%s); status=0; $(VENV)/bin/pytest -q -p no:randomly $(BROWSER_NOTEBOOK_TESTS) || status=$$?; \
	echo "make test-browser took $$(( $$(date +%s) - start )) s"; exit $$status

# The venv is rebuilt when it is missing or its Python no longer runs (a moved or deleted interpreter),
# and reinstalled only when requirements.txt or pyproject.toml changed since the last install.
setup:
	@if [ -x "$(PY)" ] && ! "$(PY)" -c 'import sys' >/dev/null 2>&1; then \
		echo "$(VENV) is stale (its Python does not run): recreating it"; rm -rf "$(VENV)"; fi
	@$(MAKE) --no-print-directory $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: the course needs Python 3.10, 3.11 or 3.12 (concrete-ml 1.9.0 has no wheels for other versions);"; \
		echo "       none was found on PATH. Install Python 3.11 and run again, or pass PYTHON=/path/to/python3.11."; \
		exit 1; fi
	@[ -x "$(PY)" ] || { echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; $(PYTHON) -m venv "$(VENV)"; }
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# --no-compile: Python byte-compiles the modules it imports when it first imports them, not all of torch now
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "$(KERNEL_DISPLAY)" >/dev/null
	@touch $(STAMP)
	@echo "$(VENV) is ready (kernel '$(KERNEL_DISPLAY)')"

kernel: setup

# Every unit test, or UNIT_TESTS (pytest's arguments: files, --ignore=..., -k ...).
UNIT_TESTS ?= tests
unit: setup
	$(VENV)/bin/pytest -q --durations=10 $(UNIT_TESTS)

# The loop to run while changing code: every test that compiles no circuit, makes no key, starts no cluster and no
# browser, asks no registry and is not otherwise slow (the markers in pyproject.toml and tests/conftest.py), and no notebook. `make test` still runs everything.
QUICK := not (fhe or keys or dask or browser or slow or registry)
test-quick: setup
	$(VENV)/bin/pytest -q --durations=5 -m "$(QUICK)" tests

# nbval re-runs every notebook (or NBVAL_NOTEBOOKS) in the course's environment and compares with the committed outputs.
# pytest exits with 5 when it collects nothing (no notebook has code cells yet): that is not a failure.
# TQDM_DISABLE: no progress widgets in the outputs (their ids and timings change at every run; see course_lib.progress).
NBVAL_NOTEBOOKS ?= notebooks/
nbval: setup
	@status=0; TQDM_DISABLE=1 $(VENV)/bin/pytest -q -p no:randomly --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg $(NBVAL_NOTEBOOKS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "nbval: no notebook cells to check yet"; exit 0; fi; exit $$status

# Re-run notebooks in place and commit them afterwards: every notebook, or one with NB=03_compile_fhe.ipynb.
# As nbval runs them (no progress widgets), then without widget ids or widget state (scripts/clean_notebooks.py).
NB ?= [0-9][0-9]_*.ipynb
notebooks: setup
	cd notebooks && TQDM_DISABLE=1 ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=2400 --ExecutePreprocessor.kernel_name=$(KERNEL_NAME) $(NB)
	$(PY) scripts/clean_notebooks.py

lint: setup
	$(VENV)/bin/ruff check course_lib tests scripts notebooks benchmarks

# Re-train the bundled model (needs: apt-get install dict-foldoc dict-jargon dict-devil).
train-model: setup
	$(PY) scripts/train_course_model.py

clean:
	rm -rf $(VENV)
