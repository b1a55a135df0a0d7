# One command to try stoker, one to test it. Both install into $(VENV) first.
#   make demo   speak a sample on the embedded default (SQLite broker, local outputs)
#   make test   everything CI runs: unit + integration against real Redis, S3 and models
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= speak,transcribe,audiobook,generate,embed,image,mesh,api,dev
# llama-cpp-python has no wheel on PyPI for this platform: it compiles from source
# (about 4 minutes on 2 cores). It is built once per pinned version into a wheelhouse
# outside the checkout and installed from there; a fresh machine builds it.
WHEELHOUSE ?= $(HOME)/.cache/stoker/wheels
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
LLAMA_WHEEL := $(WHEELHOUSE)/.built-llama-cpp-python-$(LLAMA_VERSION)
# The venv is rebuilt only when what it is built from changes.
DEPS_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_KEY)
DEMO_OUT ?= out/demo

.PHONY: install demo test test-fast lint bench clean

$(LLAMA_WHEEL):
	mkdir -p $(WHEELHOUSE)
	# Portable build: the wheel may be reused on another machine of the same kind.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PYTHON) -m pip wheel -q --no-deps -w $(WHEELHOUSE) \
	  llama-cpp-python==$(LLAMA_VERSION)
	touch $@

$(DEPS_STAMP): pyproject.toml constraints.txt $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt --find-links $(WHEELHOUSE) -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.deps-* && touch $@

# The editable install is redone every time (seconds): a cached venv may have been
# built from another checkout of this repo.
install: $(DEPS_STAMP)
	$(BIN)/pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true

demo: install
	STOKER_DATA_DIR=$${STOKER_DATA_DIR:-$(CURDIR)/.stoker} $(BIN)/stoker run speak \
	  --text "Hello from stoker. This sentence was queued, spoken by a local Piper voice, and stored." \
	  --out $(DEMO_OUT)

# Tests run in TEST_JOBS processes (pytest-xdist). Most of a test's time is spent
# waiting on the worker processes it starts, so 2 on 2 cores takes ~40 % less time;
# each process has its own redis-server and moto_server, and loads models (~1.5 GB).
TEST_JOBS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)

test-fast: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check stoker tests bench
	$(BIN)/mypy stoker

bench: install
	$(BIN)/python bench/overhead.py

clean:
	rm -rf .stoker out .pytest_cache .mypy_cache .ruff_cache
