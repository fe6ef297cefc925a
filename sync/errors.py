"""The small tree of errors the use cases raise; entry points map them to HTTP answers or retries."""
from __future__ import annotations


class SyncError(Exception):
    """Base: a machine-readable ``code`` and a message meant for a person."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = {k: v for k, v in details.items() if v is not None}


class InvalidInput(SyncError):
    """The caller sent something we cannot use (HTTP 400; a skipped item in a sync)."""

    status = 400
    code = "invalid_request"


class PageTokenExpired(InvalidInput):
    """Graph no longer accepts a page's nextLink (400 Directory_ExpiredPageToken): the listing must start again."""

    code = "page_token_expired"


class Unauthenticated(SyncError):
    """No valid caller identity (HTTP 401)."""

    status = 401
    code = "unauthenticated"


class Forbidden(SyncError):
    """A valid caller whose role may not do this (HTTP 403)."""

    status = 403
    code = "forbidden"


class NotFound(SyncError):
    """Absent, or belongs to another organisation: the two look the same (HTTP 404)."""

    status = 404
    code = "not_found"


class Conflict(SyncError):
    """The current state forbids the operation (HTTP 409)."""

    status = 409
    code = "conflict"


class Gone(SyncError):
    """Something that existed but has expired (HTTP 410)."""

    status = 410
    code = "gone"


class TooSoon(SyncError):
    """The same thing was done too recently; try again after ``retry_after`` seconds (HTTP 429 with Retry-After)."""

    status = 429
    code = "too_soon"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, retryAfterSeconds=max(1, int(retry_after + 0.999)))
        self.retry_after = retry_after


class PayloadTooLarge(SyncError):
    """The request body is larger than we accept (HTTP 413)."""

    status = 413
    code = "payload_too_large"


class Transient(SyncError):
    """Throttling, 5xx or a timeout downstream: retry later (HTTP 503; message redelivery)."""

    status = 503
    code = "temporarily_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class AuthorizationLost(SyncError):
    """The customer tenant does not grant us access (admin consent revoked, or not yet propagated).

    ``may_be_propagating``: Microsoft answers the same way for a while right after a consent (a token without the
    new roles, 403 from Graph, AADSTS65001/700016 from the token endpoint); the use case decides by the consent's age.
    """

    status = 409
    code = "consent_revoked"

    def __init__(self, message: str, *, code: str | None = None, may_be_propagating: bool = False) -> None:
        super().__init__(message, code=code)
        self.may_be_propagating = may_be_propagating


class CredentialInvalid(SyncError):
    """Our own app credential is refused (secret invalid or expired): an operator must fix it; retrying cannot."""

    status = 503
    code = "credential_invalid"


class PermissionMissing(SyncError):
    """The tenant's consent lacks a permission the sync needs; Graph answered with less rather than an error."""

    status = 409
    code = "permission_missing"


class PreconditionFailed(SyncError):
    """An optimistic-concurrency write lost the race (ETag mismatch); callers re-read and retry."""

    status = 409
    code = "concurrent_update"


class SettingsError(RuntimeError):
    """App settings are missing or invalid; the message names every bad key (never a value).

    ``status`` is what an HTTP function answers: 500 for a setting that is wrong, 503 when a setting is a platform
    reference (Key Vault, App Configuration) that App Service could not resolve — usually for a while (a role
    assignment still propagating), and retrying later is the right thing for the caller to do."""

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class DeltaExpired(SyncError):
    """Microsoft Graph no longer knows the delta link (older than its lifetime, or its state was reset): only a Full
    Sync can continue."""

    status = 410
    code = "delta_expired"


class DeliveryFailed(Exception):
    """A webhook delivery got no answer: the address was refused, did not resolve, or did not answer in time."""
