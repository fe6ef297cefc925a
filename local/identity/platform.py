"""The local Microsoft identity platform's rules: app registration, consent grants, tokens issued and checked.

No HTTP here (``server.py`` serves it). Every rule cites the page that documents it in ``local/identity/README.md``.
Where the docs leave a case open, the answer most dangerous to the app is modelled.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GRAPH_AUDIENCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
CLOUD_APPLICATION_ADMINISTRATOR = "158c047a-c907-4556-b7ef-446551a6b5f7"
DEFAULT_ROLES = ("User.Read.All", "GroupMember.Read.All", "Group.Read.All")
PROPAGATION_ERRORS = (65001, 700016)  # what a token request may answer while a fresh consent replicates
# Writes of the tenant's own admin tools (the tests' "Azure admin"), never granted to the app by consent.
ADMIN_TOOL_ROLES = ("Directory.ReadWrite.All", "User.ReadWrite.All", "Group.ReadWrite.All", "GroupMember.ReadWrite.All")
WELL_KNOWN_TENANTS = ("organizations", "common", "consumers")
# Directory role names a tenant document may give its admins (role template ids pass as they are).
ROLE_TEMPLATES = {"Global Administrator": GLOBAL_ADMINISTRATOR,
                  "Privileged Role Administrator": PRIVILEGED_ROLE_ADMINISTRATOR,
                  "Cloud Application Administrator": CLOUD_APPLICATION_ADMINISTRATOR,
                  "Application Administrator": "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"}
# Microsoft Graph's application permissions as the consent page names them (learn.microsoft.com/graph/permissions-reference).
PERMISSION_NAMES = {"User.Read.All": "Read all users' full profiles",
                    "GroupMember.Read.All": "Read all group memberships",
                    "Group.Read.All": "Read all groups",
                    "Member.Read.Hidden": "Read all hidden memberships"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenError(Exception):
    """An answer of the token endpoint in Microsoft's error shape."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status, self.error, self.code, self.description = status, error, code, description

    def body(self, origin: str) -> dict[str, Any]:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return {"error": self.error,
                "error_description": f"AADSTS{self.code}: {self.description} Trace ID: {trace} "
                                     f"Correlation ID: {correlation} Timestamp: {stamp}",
                "error_codes": [self.code], "timestamp": stamp, "trace_id": trace, "correlation_id": correlation,
                "error_uri": f"{origin}/error?code={self.code}"}


class SignInError(Exception):
    """A sign-in that Microsoft shows as an error page (it does not redirect)."""


@dataclass
class ClientSecret:
    value: str = field(repr=False)
    expires_at: float = float("inf")


@dataclass
class FederatedCredential:
    """A federated identity credential of the app registration: which external token proves the app."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = (EXCHANGE_AUDIENCE,)


@dataclass
class ManagedIdentity:
    """The function app's user-assigned managed identity, and the App Service endpoint's header secret."""

    client_id: str
    principal_id: str
    header: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)


@dataclass
class AppRegistration:
    """Our multi-tenant app registration in the operator's (home) tenant."""

    client_id: str
    home_tenant: str
    display_name: str = "Directory Sync (local)"
    redirect_uris: list[str] = field(default_factory=list)
    secrets: list[ClientSecret] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)  # PEM public certificates
    federated: list[FederatedCredential] = field(default_factory=list)
    id_tokens_enabled: bool = True  # "ID tokens (used for implicit and hybrid flows)" on the Authentication blade

    def certificate_keys(self) -> dict[str, Any]:
        """Public keys by x5t#S256 and x5t thumbprint (base64url of the DER's SHA-256 / SHA-1)."""
        keys: dict[str, Any] = {}
        for pem in self.certificates:
            cert = x509.load_pem_x509_certificate(pem.encode())
            der = cert.public_bytes(serialization.Encoding.DER)
            keys[b64url(hashlib.sha256(der).digest())] = cert.public_key()
            keys[b64url(hashlib.sha1(der).digest())] = cert.public_key()  # noqa: S324 - x5t is SHA-1 by definition
        return keys


@dataclass
class Grant:
    """A tenant's admin consent to the app: the application roles granted and when."""

    roles: tuple[str, ...]
    at: float
    propagation_s: float = 0.0
    propagation_error: int | None = None  # within propagation_s: this AADSTS error instead of role-less tokens


@dataclass
class Admin:
    """Who the sign-in and consent pages act as: an account of ``tenant`` holding the directory roles ``wids``."""

    tenant: str
    wids: tuple[str, ...] = (GLOBAL_ADMINISTRATOR,)
    username: str | None = None  # the sign-in name; None: admin@ the tenant's verified domain
    name: str = "Tenant Administrator"

    @property
    def oid(self) -> str:
        who = f":{self.username.lower()}" if self.username else ""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"admin:{self.tenant}:{','.join(self.wids)}{who}"))


@dataclass
class Account:
    """An administrator who can sign in on the interactive pages: sign-in name, password, who they are."""

    username: str
    password: str = field(repr=False)
    admin: Admin


class IdentityPlatform:
    """Consent grants per tenant, the signing key, and every token the local authority issues or checks."""

    def __init__(self, registration: AppRegistration | None = None, managed_identity: ManagedIdentity | None = None,
                 tenant_lookup: Callable[[str], tuple[str, str] | None] | None = None) -> None:
        self.registration = registration or AppRegistration(client_id="00000000-0000-0000-0000-00000000d5c1",
                                                            home_tenant=str(uuid.uuid4()))
        self.managed_identity = managed_identity
        self.tenant_lookup = tenant_lookup or (lambda _t: None)
        self.origin = "https://127.0.0.1"  # set by the server once it listens
        self.token_lifetime_s = 3600
        self.grants: dict[str, Grant] = {}
        self.revoked: set[str] = set()
        self.admin: Admin | None = None
        self.default_tenant: Callable[[], str | None] = lambda: None
        self.deny = False
        self.next_grant: tuple[tuple[str, ...], float] = (DEFAULT_ROLES, 0.0)  # what the next consent grants
        self.next_propagation_error: int | None = None  # and what its token requests answer while it propagates
        self.last_prompt: str | None = None  # the prompt of the last OpenID Connect sign-in (None: none asked)
        # --interactive-sign-in: the sign-in, consent and account picker pages a person clicks (README, "Interactive
        # sign-in"); the accounts come from the tenant documents, the sessions are the browsers signed in.
        self.interactive = False
        self.accounts_lookup: Callable[[str], list[Account]] = lambda _domain: []
        self.sessions: dict[str, Admin] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public = self._key.public_key()
        self.kid = b64url(hashlib.sha256(self._public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest())[:27]
        self._verified: dict[str, dict[str, Any]] = {}

    # --- tenants and consent ---------------------------------------------------------------------

    def resolve_tenant(self, path_tenant: str) -> str | None:
        """A tenant id or verified domain in a URL path, as the id of a loaded tenant (None: unknown)."""
        found = self.tenant_lookup(path_tenant)
        return found[0] if found else None

    def _domain_of(self, tenant: str) -> str:
        """The tenant's verified domain (a UPN's suffix is one), or a made-up one for a tenant not loaded."""
        found = self.tenant_lookup(tenant)
        return found[1] if found else f"{tenant[:8]}.example"

    def signed_in(self) -> Admin:
        """The account the browser is signed in with (set by POST /_fake/consent {"tenant"})."""
        if self.admin is not None:
            return self.admin
        tenant = self.default_tenant()
        if tenant is None:
            raise SignInError("AADSTS90002: No tenant is loaded, so nobody can sign in.")
        return Admin(tenant)

    def sign_in(self, username: str, password: str) -> Admin | None:
        """The account whose sign-in name and password these are (None: "Your account or password is incorrect.")."""
        domain = username.strip().rpartition("@")[2]
        for account in self.accounts_lookup(domain) if domain else []:
            if account.username.lower() == username.strip().lower() and secrets.compare_digest(
                    account.password.encode(), password.encode()):
                return account.admin
        return None

    def open_session(self, admin: Admin) -> str:
        """A browser's session with ``admin`` signed in; the cookie value that names it."""
        sid = secrets.token_urlsafe(24)
        if len(self.sessions) > 1000:
            self.sessions.clear()
        self.sessions[sid] = admin
        return sid

    def username_of(self, admin: Admin) -> str:
        return admin.username or f"admin@{self._domain_of(admin.tenant)}"

    def consent(self, tenant: str, roles: tuple[str, ...] = DEFAULT_ROLES, propagation_s: float = 0.0,
                propagation_error: int | None = None) -> Grant:
        """A tenant's admin consents: a service principal exists there and holds ``roles``. For ``propagation_s``
        seconds its tokens carry no roles, or (``propagation_error``: 65001 or 700016) token requests fail."""
        if propagation_error not in (None, *PROPAGATION_ERRORS):
            raise ValueError(f"propagation_error must be one of {PROPAGATION_ERRORS}")
        grant = Grant(tuple(roles), time.time(), float(propagation_s), propagation_error)
        self.grants[tenant] = grant
        self.revoked.discard(tenant)
        return grant

    def reset(self) -> None:
        """Forget consents, revocations, the signed-in account and the token lifetime (POST /_fake/reset)."""
        self.grants.clear()
        self.revoked.clear()
        self.admin, self.deny, self.token_lifetime_s = None, False, 3600
        self.next_grant = (DEFAULT_ROLES, 0.0)
        self.next_propagation_error = None
        self.last_prompt = None
        self.sessions.clear()
        for secret in self.registration.secrets:
            secret.expires_at = float("inf")

    def revoke(self, tenant: str) -> None:
        """The tenant deletes our service principal (Enterprise applications → Delete)."""
        self.revoked.add(tenant)
        self.grants.pop(tenant, None)

    # --- tokens issued -----------------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid, "typ": "JWT"})

    def app_token(self, tenant: str, roles: tuple[str, ...] | None, lifetime_s: float | None = None,
                  app_id: str | None = None) -> str:
        """An app-only access token for Microsoft Graph in ``tenant`` (a v1.0 token, as Graph's are)."""
        now = int(time.time())
        app_id = app_id or self.registration.client_id
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant}:{app_id}"))
        claims: dict[str, Any] = {
            "aud": GRAPH_AUDIENCE, "iss": f"https://sts.windows.net/{tenant}/", "iat": now, "nbf": now,
            "exp": now + int(lifetime_s if lifetime_s is not None else self.token_lifetime_s),
            "appid": app_id, "app_displayname": self.registration.display_name, "appidacr": "1", "idp":
            f"https://sts.windows.net/{tenant}/", "idtyp": "app", "oid": oid, "sub": oid, "tid": tenant,
            "uti": b64url(secrets.token_bytes(16)), "ver": "1.0",
        }
        if roles:
            claims["roles"] = list(roles)
        return self._sign(claims)

    def client_credentials(self, path_tenant: str, form: dict[str, str], token_url: str) -> dict[str, Any]:
        """POST {tenant}/oauth2/v2.0/token with grant_type=client_credentials: the answer, or TokenError."""
        reg = self.registration
        if path_tenant.lower() in WELL_KNOWN_TENANTS:
            raise TokenError(400, "invalid_request", 90133,
                             "The client credentials flow needs a tenant: '/organizations' or '/common' is not allowed.")
        tenant = self.resolve_tenant(path_tenant)
        if tenant is None:
            raise TokenError(400, "invalid_request", 90002, f"Tenant '{path_tenant}' not found. Check to make sure "
                             "you have the correct tenant ID and are signing into the correct cloud.")
        grant_type = form.get("grant_type", "")
        if grant_type != "client_credentials":
            raise TokenError(400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type "
                             f"'{grant_type}'.")
        client_id = form.get("client_id", "")
        if client_id != reg.client_id:
            raise TokenError(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                             f"found in the directory '{tenant}'.")
        scope = form.get("scope", "")
        if scope.split() != [f"{GRAPH_AUDIENCE}/.default"]:
            raise TokenError(400, "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid. "
                             "Client credential flows must have a scope value with /.default suffixed to the resource "
                             "identifier (application ID URI).")
        self._authenticate_client(form, token_url)
        if tenant in self.revoked:
            raise TokenError(401, "invalid_client", 7000229, f"The client application {client_id} is missing service "
                             f"principal in the tenant {tenant}.")
        grant = self.grants.get(tenant)
        if grant is None and tenant != reg.home_tenant:
            raise TokenError(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                             f"found in the directory '{tenant}'. This can happen if the application has not been "
                             "installed by the administrator of the tenant or consented to by any user in the tenant.")
        propagating = grant is not None and time.time() - grant.at < grant.propagation_s
        if propagating and grant.propagation_error == 65001:
            raise TokenError(400, "invalid_grant", 65001, f"The user or administrator has not consented to use the "
                             f"application with ID '{client_id}' named '{reg.display_name}'. Send an interactive "
                             "authorization request for this user and resource.")
        if propagating and grant.propagation_error == 700016:
            raise TokenError(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                             f"found in the directory '{tenant}'. This can happen if the application has not been "
                             "installed by the administrator of the tenant or consented to by any user in the tenant.")
        roles: tuple[str, ...] = grant.roles if grant is not None and not propagating else ()
        lifetime = self.token_lifetime_s
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                "access_token": self.app_token(tenant, roles, lifetime)}

    def _authenticate_client(self, form: dict[str, str], token_url: str) -> None:
        reg = self.registration
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is not None:
            match = next((s for s in reg.secrets if secrets.compare_digest(s.value, secret)), None)
            if match is None:
                raise TokenError(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                                 f"being sent in the request is the client secret value, not the client secret ID, for "
                                 f"a secret added to app '{reg.client_id}'.")
            if match.expires_at <= time.time():
                raise TokenError(401, "invalid_client", 7000222, f"The provided client secret keys for app "
                                 f"'{reg.client_id}' are expired.")
            return
        if assertion is None:
            raise TokenError(401, "invalid_client", 7000218, "The request body must contain the following parameter: "
                             "'client_assertion' or 'client_secret'.")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError(400, "invalid_request", 50027, "Invalid client_assertion_type.")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise TokenError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from None
        thumbprint = header.get("x5t#S256") or header.get("x5t")
        if thumbprint and header.get("kid") != self.kid:
            self._check_certificate_assertion(assertion, header, thumbprint, token_url)
        else:
            self._check_federated_assertion(assertion)

    def _check_certificate_assertion(self, assertion: str, header: dict, thumbprint: str, token_url: str) -> None:
        reg = self.registration
        key = reg.certificate_keys().get(str(thumbprint).rstrip("="))  # azure-identity keeps base64's padding
        if key is None:
            raise TokenError(401, "invalid_client", 700027, f"The certificate with identifier used to sign the client "
                             f"assertion is not registered on application. [Reason - The key was not found., "
                             f"Thumbprint of key used by client: '{thumbprint}'].")
        try:
            claims = jwt.decode(assertion, key, algorithms=["PS256", "RS256"], audience=token_url,
                                issuer=reg.client_id, options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.") from None
        except jwt.InvalidAudienceError:
            raise TokenError(401, "invalid_client", 700212, f"No matching federated identity record found for "
                             f"presented assertion audience; the assertion's audience must be '{token_url}'.") from None
        except jwt.PyJWTError:
            raise TokenError(401, "invalid_client", 700027, "Client assertion failed signature validation.") from None
        if claims.get("sub") != reg.client_id:
            raise TokenError(401, "invalid_client", 700023, "Client assertion audience/subject claim does not match "
                             "the client id.")

    def _check_federated_assertion(self, assertion: str) -> None:
        reg = self.registration
        try:
            claims = jwt.decode(assertion, self._public, algorithms=["RS256"], options={"verify_aud": False,
                                "require": ["exp", "iss", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise TokenError(400, "invalid_request", 700024, "Client assertion is not within its valid time range.") from None
        except jwt.PyJWTError:
            raise TokenError(401, "invalid_client", 70021, "No matching federated identity record found for presented "
                             "assertion. Assertion signature could not be validated.") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        for fic in reg.federated:
            if fic.issuer == claims["iss"] and fic.subject == claims["sub"] and set(audiences) & set(fic.audiences):
                return
        raise TokenError(401, "invalid_client", 70021, f"No matching federated identity record found for presented "
                         f"assertion. Assertion Issuer: '{claims['iss']}'. Assertion Subject: '{claims['sub']}'. "
                         f"Assertion Audience: '{','.join(audiences)}'.")

    def managed_identity_token(self, params: dict[str, str], header: str | None) -> dict[str, Any]:
        """App Service's managed identity endpoint (api-version 2019-08-01): a token of our user-assigned identity."""
        mi = self.managed_identity
        if mi is None or header is None or not secrets.compare_digest(header, mi.header):
            raise TokenError(401, "invalid_request", 0, "X-IDENTITY-HEADER is missing or wrong.")
        if params.get("client_id") not in (None, mi.client_id):
            raise TokenError(400, "invalid_request", 0, "Identity not found: no user-assigned identity has that "
                             "client_id on this app.")
        resource = params.get("resource", "")
        if resource.rstrip("/") != EXCHANGE_AUDIENCE:
            raise TokenError(400, "invalid_resource", 500011, f"The resource principal named {resource} was not "
                             "found in the tenant (the local authority issues the identity only for token exchange).")
        now = int(time.time())
        home = self.registration.home_tenant
        token = self._sign({"aud": EXCHANGE_AUDIENCE, "iss": f"{self.origin}/{home}/v2.0", "iat": now, "nbf": now,
                            "exp": now + self.token_lifetime_s, "sub": mi.principal_id, "oid": mi.principal_id,
                            "azp": mi.client_id, "tid": home, "idtyp": "app", "ver": "2.0"})
        return {"access_token": token, "expires_on": str(now + self.token_lifetime_s), "resource": resource,
                "token_type": "Bearer", "client_id": mi.client_id}

    def id_token(self, admin: Admin, nonce: str, client_id: str) -> str:
        """The signed-in account's id_token for our app (v2.0), with its directory roles in ``wids``."""
        now = int(time.time())
        return self._sign({
            "aud": client_id, "iss": f"{self.origin}/{admin.tenant}/v2.0", "iat": now, "nbf": now, "exp": now + 3600,
            "nonce": nonce, "tid": admin.tenant, "oid": admin.oid,
            "sub": b64url(hashlib.sha256(f"{admin.oid}:{client_id}".encode()).digest()),
            "preferred_username": self.username_of(admin), "name": admin.name,
            "wids": list(admin.wids), "ver": "2.0",
        })

    # --- tokens checked (by the fake Graph) --------------------------------------------------------

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a valid Graph access token; raises ValueError(message) for any token Graph would refuse."""
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = jwt.decode(token, self._public, algorithms=["RS256"], audience=[GRAPH_AUDIENCE, GRAPH_APP_ID],
                                    options={"require": ["exp", "nbf", "iss", "tid", "aud"], "verify_exp": False},
                                    leeway=0)
            except jwt.InvalidAudienceError:
                raise ValueError("Access token validation failure. Invalid audience.") from None
            except jwt.PyJWTError:
                raise ValueError("Access token validation failure.") from None
            if claims["iss"] != f"https://sts.windows.net/{claims['tid']}/":
                raise ValueError("Access token validation failure. Invalid issuer.")
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = claims
        if claims["exp"] <= time.time():
            raise ValueError("Lifetime validation failed, the token is expired.")
        return claims

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._public))
        return {"keys": [{**jwk, "kid": self.kid, "x5t": self.kid, "use": "sig", "alg": "RS256"}]}

    def discovery(self, path_tenant: str) -> dict[str, Any]:
        """OpenID Connect metadata of ``{tenant}/v2.0/.well-known/openid-configuration``."""
        issuer_tenant = "{tenantid}" if path_tenant.lower() in WELL_KNOWN_TENANTS else (
            self.resolve_tenant(path_tenant) or path_tenant)
        base = f"{self.origin}/{path_tenant}"
        return {
            "issuer": f"{self.origin}/{issuer_tenant}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "oid", "wids", "name",
                                 "preferred_username"],
            "tenant_region_scope": None,
        }
