"""Microsoft identity platform adapter (PyJWT): verifies the consenting admin's OpenID Connect id_token.

Rules from https://learn.microsoft.com/entra/identity-platform/id-tokens and the multi-tenant issuer validation of
https://learn.microsoft.com/entra/identity-platform/howto-convert-app-to-be-multi-tenant: the signature is checked
against the authority's published keys, ``aud`` is our client id, ``iss`` is
``{authority}/{tid}/v2.0`` for the token's own ``tid``, ``exp``/``nbf`` hold, and ``nonce`` is the one we sent.
"""
from __future__ import annotations

import asyncio
import secrets
from typing import Any

from ..errors import InvalidInput, Transient
from ..logs import get_logger
from ..model import SignIn
from ..ports import SignIns

log = get_logger(__name__)

MAX_ID_TOKEN = 16_384


class OidcSignIns(SignIns):
    """id_tokens of ``authority_host`` for the app ``client_id``; signing keys fetched once and cached."""

    def __init__(self, authority_host: str, client_id: str, *, timeout_s: float = 10.0) -> None:
        self._authority = authority_host.rstrip("/")
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._jwks: Any = None

    def _keys(self) -> Any:
        if self._jwks is None:
            from jwt import PyJWKClient

            # The keys are common to every tenant; PyJWKClient refetches when a token names an unknown kid.
            self._jwks = PyJWKClient(f"{self._authority}/common/discovery/v2.0/keys", cache_keys=True,
                                     lifespan=3600, timeout=self._timeout_s)
        return self._jwks

    async def verify(self, id_token: str, *, nonce: str) -> SignIn:
        import jwt

        if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN:
            raise InvalidInput("the sign-in carried no usable id_token", code="tenant_unverified")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise InvalidInput("the sign-in's id_token is malformed", code="tenant_unverified") from None
        if header.get("alg") != "RS256":
            raise InvalidInput("the sign-in's id_token is not signed with RS256", code="tenant_unverified")
        try:
            key = await asyncio.to_thread(self._keys().get_signing_key_from_jwt, id_token)
        except jwt.PyJWKClientConnectionError:
            raise Transient("Microsoft's signing keys could not be fetched", code="identity_unavailable") from None
        except jwt.PyJWKClientError:
            raise InvalidInput("the sign-in's id_token was not signed by a key of Microsoft's", code="tenant_unverified") from None
        try:
            claims = jwt.decode(id_token, key.key, algorithms=["RS256"], audience=self._client_id,
                                options={"require": ["exp", "iat", "iss", "aud", "tid", "nonce", "oid"]})
        except jwt.ExpiredSignatureError:
            raise InvalidInput("the sign-in has expired; start again from the portal", code="tenant_unverified") from None
        except jwt.PyJWTError as exc:
            raise InvalidInput(f"the sign-in's id_token is not valid ({type(exc).__name__})", code="tenant_unverified") from None
        tid = claims["tid"]
        if not isinstance(tid, str) or claims["iss"] != f"{self._authority}/{tid}/v2.0":
            raise InvalidInput("the sign-in's issuer does not match its tenant", code="tenant_unverified")
        if not isinstance(claims["nonce"], str) or not secrets.compare_digest(claims["nonce"], nonce):
            raise InvalidInput("the sign-in does not belong to this consent link", code="tenant_unverified")
        wids = claims.get("wids")
        roles = tuple(w for w in wids if isinstance(w, str)) if isinstance(wids, list) else ()
        username, name = claims.get("preferred_username"), claims.get("name")
        return SignIn(tenant_id=tid, object_id=str(claims["oid"]), directory_roles=roles,
                      username=username[:256] if isinstance(username, str) else None,
                      display_name=name[:256] if isinstance(name, str) else None)
