"""Who is calling: the portal backend's HS256 bearer token, verified with PyJWT (the only module that imports it)."""
from __future__ import annotations

from typing import Mapping

from .errors import Forbidden, Unauthenticated
from .model import ALLOWED_ROLES, Caller

REQUIRED_CLAIMS = ("org", "sub", "role", "exp")


def authenticate(headers: Mapping[str, str], secret: str, *, max_lifetime_s: float = 86400,
                 audience: str | None = None, issuer: str | None = None) -> Caller:
    """The caller named by a valid ``Authorization: Bearer`` HS256 token, or Unauthenticated.

    Besides the signature: ``exp`` must be a number (not text) at most ``max_lifetime_s`` ahead, so a leaked token
    cannot live forever; ``aud`` and ``iss`` must match when those settings are set; ``org``, ``sub`` and ``role``
    must be short printable text that can be a storage key (no lone surrogates, no control characters).
    """
    import time

    import jwt  # PyJWT pulls in cryptography: load it with the first request, not at function-app import

    value = _header(headers, "authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <token> signed by the portal", code="missing_token")
    required = [*REQUIRED_CLAIMS, *(["aud"] if audience else []), *(["iss"] if issuer else [])]
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            options={"require": required, "verify_aud": bool(audience)},
            audience=audience,
            issuer=issuer,
            leeway=30,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("the token has expired", code="token_expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"the token lacks the '{exc.claim}' claim", code="invalid_token") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise Unauthenticated("the token was issued by or for someone else", code="invalid_token") from None
    except jwt.PyJWTError:
        raise Unauthenticated("the token is malformed or not signed by the portal", code="invalid_token") from None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise Unauthenticated("the 'exp' claim must be a number", code="invalid_token")
    if exp > time.time() + max_lifetime_s + 30:
        raise Unauthenticated(f"the token lives longer than {max_lifetime_s / 3600:g} hours", code="invalid_token")
    for claim in ("org", "sub", "role"):
        if not _key_text(claims.get(claim)):
            raise Unauthenticated(f"the '{claim}' claim must be a non-empty printable string of at most "
                                  f"{MAX_CLAIM} characters", code="invalid_token")
    return Caller(org=claims["org"], subject=claims["sub"], role=claims["role"])


MAX_CLAIM = 256


def _key_text(value: object) -> bool:
    """Short, printable, UTF-8-encodable text: what can name an organisation in a storage key."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CLAIM:
        return False
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
