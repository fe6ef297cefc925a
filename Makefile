# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
AZURITE := node_modules/.bin/azurite-table
# Outside tools that check the deployment (checkov, azure-functions-doctor) in a venv of their own: checkov pins
# packaging<24, which pytest refuses (tests/test_deployment_checks.py runs them).
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed-$(shell cat requirements-tools.txt | sha1sum | cut -c1-12)

.PHONY: bootstrap chromium run test demo bench clean

bootstrap: $(STAMP) $(AZURITE) $(TOOLS_STAMP) chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

$(TOOLS_STAMP): requirements-tools.txt | $(BIN)/python
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --disable-pip-version-check -q -r requirements-tools.txt
	rm -f $(TOOLS)/.installed-* && touch $@

# Only when missing: `npm ci` empties node_modules first, which would pull Azurite from under a running test.
$(AZURITE):
	npm ci --no-audit --no-fund --loglevel=error

# Debian's Chromium, which the console's browser test drives headless (Playwright's own browser download is not used);
# installed only when missing. CI runs as root; elsewhere apt-get runs through sudo.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	  else echo "no apt-get: install Chromium yourself for tests/e2e/test_console.py" >&2; fi; }

## run: the function app on the local stack (fake tenant, Azurite, local Service Bus, SMTP sink) at :7071, and the
## reference console at http://127.0.0.1:3000 with Microsoft's sign-in and consent pages to click
run: bootstrap
	$(BIN)/python -m local --interactive-sign-in

## test: every test (unit, adapters against the local stand-ins, end to end, faults); starts what it needs
test: bootstrap
	$(BIN)/python -m pytest

## demo: the seed's workflow through the public HTTP API, printed as the portal would show it
demo: bootstrap
	$(BIN)/python -m local.demo

## bench: full sync and re-sync at scale against the floor measured in the same run
bench: bootstrap
	$(BIN)/python benchmarks/full_sync.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache
