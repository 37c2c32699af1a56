# The two Quickstart commands: `make run` and `make test`. Each creates the
# virtualenv (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test lint bench clean system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

## run: the proxy on 127.0.0.1:8080 (in front of the demo origin unless ARGS="--upstream URL")
run: $(STAMP)
	$(BIN)/cacheproxy serve $(ARGS)

## system-deps: Debian packages the tests use (Chromium for the browser tests, redis-server
## for the shared store, node and npm for the public HTTP caching test suite)
system-deps:
	@missing=""; [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v node >/dev/null || missing="$$missing nodejs"; \
	  command -v npm >/dev/null || missing="$$missing npm"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

## test: lint, then the whole test suite (pytest exits 5 when it collects nothing)
test: $(STAMP) system-deps
	$(BIN)/ruff check cacheproxy tests bench
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## bench: throughput and memory benchmarks (see README "Benchmarks")
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
