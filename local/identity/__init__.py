"""A local Microsoft identity platform: the app's real azure-identity credentials and OIDC sign-in run against it.

    app = LocalApp.create(client_id, redirect_uris=[consent_redirect_uri])
    fake = FakeGraph(tenants=[...], registration=app.registration, managed_identity=app.managed_identity,
                     tls=app.tls).start()
    env = app.app_settings("secret", fake.authority)   # GRAPH_CREDENTIAL, its secret/certificate/identity, SSL_CERT_FILE

Rules and the pages documenting them: ``local/identity/README.md``.
"""
from __future__ import annotations

import secrets
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .platform import AppRegistration, ClientSecret, FederatedCredential, IdentityPlatform, ManagedIdentity
from .tls import LocalCA, self_signed_client_certificate, trust_in_this_process

__all__ = ["AppRegistration", "IdentityPlatform", "LocalApp", "LocalCA", "ManagedIdentity", "trust_in_this_process"]

CREDENTIAL_KINDS = ("secret", "certificate", "managed_identity")


@dataclass
class LocalApp:
    """Our app registration as the operator would create it, with one credential of each kind, and the local CA."""

    registration: AppRegistration
    managed_identity: ManagedIdentity
    tls: LocalCA
    client_secret: str = field(repr=False)
    certificate_path: Path

    @classmethod
    def create(cls, client_id: str, redirect_uris: list[str], *, client_secret: str | None = None,
               folder: str | Path | None = None) -> "LocalApp":
        where = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="local-identity-"))
        tls = LocalCA.create(where)
        secret = client_secret or secrets.token_urlsafe(30)
        cert_path, cert_pem = self_signed_client_certificate(where)
        home = str(uuid.uuid5(uuid.NAMESPACE_URL, f"operator-tenant:{client_id}"))
        identity = ManagedIdentity(client_id=str(uuid.uuid4()), principal_id=str(uuid.uuid4()))
        registration = AppRegistration(client_id=client_id, home_tenant=home, redirect_uris=list(redirect_uris),
                                       secrets=[ClientSecret(secret)], certificates=[cert_pem])
        return cls(registration, identity, tls, secret, cert_path)

    def trust_managed_identity(self, authority: str) -> None:
        """The federated credential on the registration that trusts our managed identity's tokens."""
        issuer = f"{authority}/{self.registration.home_tenant}/v2.0"
        self.registration.federated = [FederatedCredential(issuer=issuer, subject=self.managed_identity.principal_id)]

    def app_settings(self, credential: str, authority: str) -> dict[str, str]:
        """The app settings (and process environment) of a function app using ``credential`` against ``authority``."""
        if credential not in CREDENTIAL_KINDS:
            raise ValueError(f"credential must be one of {', '.join(CREDENTIAL_KINDS)}")
        self.trust_managed_identity(authority)
        env = {"GRAPH_CLIENT_ID": self.registration.client_id, "GRAPH_CREDENTIAL": credential,
               "AUTHORITY_HOST": authority, "SSL_CERT_FILE": str(self.tls.bundle_file)}
        if credential == "secret":
            env["GRAPH_CLIENT_SECRET"] = self.client_secret
        elif credential == "certificate":
            env["GRAPH_CLIENT_CERTIFICATE_PATH"] = str(self.certificate_path)
        else:  # App Service's managed identity endpoint, as the Functions host provides it in Azure
            env.update(MANAGED_IDENTITY_CLIENT_ID=self.managed_identity.client_id,
                       IDENTITY_ENDPOINT=f"{authority}/msi/token", IDENTITY_HEADER=self.managed_identity.header)
        return env
