"""The composition point: which credential each setting chooses, and that building connects to nothing."""
import socket

import pytest

from sync import composition
from tests.fakes import unit_env, unit_settings

CLOUD = {"GRAPH_BASE_URL": "https://graph.microsoft.com/v1.0"}


@pytest.mark.parametrize("overrides,kind", [
    ({"GRAPH_CREDENTIAL": "secret", "GRAPH_CLIENT_SECRET": "s"}, "ClientSecretCredential"),
    ({"GRAPH_CREDENTIAL": "certificate", "GRAPH_CLIENT_CERTIFICATE_PATH": "/nonexistent.pem"}, "CertificateCredential"),
    ({"GRAPH_CREDENTIAL": "managed_identity", "MANAGED_IDENTITY_CLIENT_ID": "mi-1"}, "FederatedIdentityCredential"),
])
async def test_cloud_credentials_are_per_tenant(overrides, kind):
    factory = composition.graph_credential_factory(unit_settings(**CLOUD, **overrides))
    try:
        credential = factory("tenant-1")
    except (ValueError, OSError):  # the certificate file does not exist here; the choice is what we check
        assert kind == "CertificateCredential"
        return
    assert type(credential).__name__ == kind
    await credential.close()


async def test_building_services_opens_no_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a connection was opened while building the services")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    services = composition.build(unit_settings())
    assert services.mail_sender is not None
    await services.close()


async def test_services_are_built_once_per_event_loop(monkeypatch):
    built = []
    monkeypatch.setattr(composition, "build", lambda settings: built.append(settings) or object.__new__(composition.Services))
    for key, value in unit_env().items():
        monkeypatch.setenv(key, value)
    first = await composition.services()
    assert await composition.services() is first and len(built) == 1
    composition._by_loop.clear()


async def test_every_tenants_credential_shares_one_http_session_and_one_managed_identity():
    """A session per credential kept an idle TLS connection per tenant (400 MB at 1,000 tenants; benchmarks/tenants.py)."""
    from sync.adapters.credentials import TenantCredentials

    for overrides in ({"GRAPH_CREDENTIAL": "secret", "GRAPH_CLIENT_SECRET": "s"},
                      {"GRAPH_CREDENTIAL": "managed_identity", "MANAGED_IDENTITY_CLIENT_ID": "mi-1"}):
        credentials = TenantCredentials(unit_settings(**CLOUD, **overrides))
        a, b = credentials.for_tenant("tenant-a"), credentials.for_tenant("tenant-b")
        inner_a, inner_b = getattr(a, "_inner", a), getattr(b, "_inner", b)
        assert inner_a._client._pipeline._transport is inner_b._client._pipeline._transport
        if overrides["GRAPH_CREDENTIAL"] == "managed_identity":
            assert a._managed is b._managed
        await a.close()
        await b.close()
        assert not credentials._session.closed  # a tenant's credential closing leaves the shared session open
        await credentials.close()
