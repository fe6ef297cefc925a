"""Fixtures: Azurite for the session (started by the tests themselves), fakes for logic tests."""
from __future__ import annotations

import secrets

import pytest

from sync import composition
from tests.fakes import make_services


@pytest.fixture(scope="session")
def azurite():
    """One in-memory Azurite Table service for the whole session, on a free port; stopped at the end."""
    from local.azurite import Azurite

    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture
async def table_store(azurite):
    """A TableStore on Azurite with tables of its own (a fresh prefix per test)."""
    from sync.adapters.tables import TableStore

    store = TableStore.from_connection_string(azurite.connection_string, "t" + secrets.token_hex(5))
    yield store
    await store.close()


@pytest.fixture
def svc():
    """Services on in-memory fakes, installed as the ones every trigger uses."""
    services = make_services()
    composition.override(services)
    yield services
    composition.override(None)
