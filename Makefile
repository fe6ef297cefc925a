# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
AZURITE := node_modules/.bin/azurite-table

.PHONY: bootstrap run test demo bench clean

bootstrap: $(STAMP) $(AZURITE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

# Only when missing: `npm ci` empties node_modules first, which would pull Azurite from under a running test.
$(AZURITE):
	npm ci --no-audit --no-fund --loglevel=error

## run: the function app on the local stack (fake tenant, Azurite, local Service Bus, SMTP sink) at :7071
run: bootstrap
	$(BIN)/python -m local

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
