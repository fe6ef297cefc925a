"""Who is calling: the portal backend's HS256 bearer token, verified with PyJWT (the only module that imports it)."""
from __future__ import annotations

from typing import Mapping

from .errors import Forbidden, Unauthenticated
from .model import ALLOWED_ROLES, Caller

REQUIRED_CLAIMS = ("org", "sub", "role", "exp")


def authenticate(headers: Mapping[str, str], secret: str) -> Caller:
    """The caller named by a valid ``Authorization: Bearer`` HS256 token, or Unauthenticated."""
    import jwt  # PyJWT pulls in cryptography: load it with the first request, not at function-app import

    value = _header(headers, "authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <token> signed by the portal", code="missing_token")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            options={"require": list(REQUIRED_CLAIMS), "verify_aud": False},
            leeway=30,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("the token has expired", code="token_expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"the token lacks the '{exc.claim}' claim", code="invalid_token") from None
    except jwt.PyJWTError:
        raise Unauthenticated("the token is malformed or not signed by the portal", code="invalid_token") from None
    for claim in ("org", "sub", "role"):
        if not isinstance(claims.get(claim), str) or not claims[claim].strip():
            raise Unauthenticated(f"the '{claim}' claim must be a non-empty string", code="invalid_token")
    return Caller(org=claims["org"], subject=claims["sub"], role=claims["role"])


def authorize(caller: Caller) -> Caller:
    """The caller if their role may manage directory sync, else Forbidden."""
    if caller.role not in ALLOWED_ROLES:
        raise Forbidden(
            f"the role '{caller.role}' may not manage directory sync; allowed: {', '.join(sorted(ALLOWED_ROLES))}",
            code="role_not_allowed",
        )
    return caller


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value or ""
    return ""
