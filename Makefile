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
## for the shared store)
system-deps:
	@missing=""; [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
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

## bench-peers: cacheproxy beside nginx, Squid, bare aiohttp and the lean probe
## (bench/peers.py, about 5 min; ARGS=--quick for under 2). Installs the Debian packages
## nginx, squid and wrk when missing (and stops the services they start: the benchmark runs
## its own instances on free loopback ports) and httptools for the lean probe and origin.
.PHONY: bench-peers
bench-peers: $(STAMP)
	@missing=""; for p in nginx squid wrk; do \
	  command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing$$missing with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing \
	    >/dev/null && { service nginx stop; service squid stop; } >/dev/null 2>&1; true; fi
	@$(BIN)/python -c "import httptools" 2>/dev/null || $(BIN)/pip install -q httptools
	$(BIN)/python bench/peers.py $(ARGS)
