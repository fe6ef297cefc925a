"""Typed app settings: one frozen dataclass read from the environment once, failing with the bad keys named."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from .errors import SettingsError
from .phones import known_region

MIN_SECRET_BYTES = 32
GRAPH_CREDENTIALS = ("secret", "certificate", "managed_identity")
SMTP_SECURITY = ("starttls", "tls", "none")
MAIL_SENDERS = ("smtp", "none")
# What App Service leaves in a setting whose reference it could not resolve (role not yet propagated, secret disabled
# or deleted): the literal reference text, which anyone who can read the app's configuration knows
# (learn.microsoft.com/azure/app-service/app-service-key-vault-references#troubleshooting-key-vault-references,
# learn.microsoft.com/azure/app-service/app-service-configuration-references).
UNRESOLVED_REFERENCE_PREFIXES = ("@microsoft.keyvault(", "@microsoft.appconfiguration(")


@dataclass(frozen=True)
class MailSettings:
    """How the mailer sends: SMTP relay details and the sender identity."""

    sender: str
    mail_from: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str | None
    smtp_password: str | None = field(repr=False)
    smtp_timeout_s: float
    retry_attempts: int = 8
    retry_base_s: float = 60.0


@dataclass(frozen=True)
class Settings:
    """Every app setting the function app reads, validated. Secrets are kept out of ``repr``."""

    portal_token_secret: str = field(repr=False)
    portal_token_max_lifetime_s: float
    portal_token_audience: str | None
    portal_token_issuer: str | None
    signing_secret: str = field(repr=False)
    tables_connection_string: str | None = field(repr=False)
    tables_endpoint: str | None
    table_prefix: str
    service_bus_connection_string: str | None = field(repr=False)
    service_bus_namespace: str | None
    group_sync_queue: str
    enrollment_queue: str
    alert_queue: str
    graph_base_url: str
    graph_client_id: str
    graph_credential: str
    graph_client_secret: str | None = field(repr=False)
    graph_certificate_path: str | None
    managed_identity_client_id: str | None
    authority_host: str
    consent_redirect_uri: str
    portal_base_url: str
    portal_consent_return_path: str
    portal_name: str
    deprovision_guard_percent: float
    deprovision_guard_min_users: int
    max_pages_per_message: int
    segment_time_budget_s: float
    run_stale_after_minutes: int
    enrollment_token_ttl_hours: float
    graph_concurrency: int
    graph_tenant_concurrency: int
    consent_propagation_grace_s: float
    graph_tenant_cache: int
    history_retention_days: int
    mail: MailSettings | None
    # Near-real-time sync (Graph change notifications and delta queries).
    notification_url: str | None = field(default=None, repr=False)  # carries the function key (`code`)
    change_queue: str = "directory-changes"
    watch_lifetime_hours: float = 72.0
    watch_renew_before_hours: float = 36.0
    incremental_max_objects: int = 500
    change_debounce_s: float = 2.0
    invitation_lease_s: float = 300.0
    # An Entra tenant already connected to one org may be connected to another too (consent confirm; issue 22).
    allow_shared_tenants: bool = False
    alerts_per_hour: int = 10
    # The queues' maxDeliveryCount (infra/queues.json; main.bicep and the local stack set it from there): a change job
    # knows whether Service Bus will deliver it again, or whether this delivery must end its run.
    max_delivery_count: int = 10
    max_subscriptions_per_org: int = 20
    # Webhooks and the events feed.
    webhook_queue: str = "webhook-deliveries"
    webhook_allow_http_loopback: bool = False
    event_retention_days: int = 30
    # The region a national phone number is read in when the user has no usageLocation (attribute mapping).
    default_phone_region: str | None = None
    # Enrollment invitations' lifecycle (issue 26): a reminder "day", and the least time between two invitations.
    reminder_day_s: float = 86400.0
    invitation_min_interval_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read and validate; raises SettingsError naming every missing or bad key at once."""
        reader = _Reader(os.environ if env is None else env)
        graph_concurrency = int(reader.number("GRAPH_CONCURRENCY", 4, 1, 64))
        settings = cls(
            portal_token_secret=reader.secret("PORTAL_TOKEN_SECRET"),
            portal_token_max_lifetime_s=reader.number("PORTAL_TOKEN_MAX_LIFETIME_HOURS", 24.0, 0.01, 24 * 30) * 3600,
            portal_token_audience=reader.optional("PORTAL_TOKEN_AUDIENCE"),
            portal_token_issuer=reader.optional("PORTAL_TOKEN_ISSUER"),
            signing_secret=reader.secret("SIGNING_SECRET"),
            tables_connection_string=reader.optional("TABLES_CONNECTION_STRING"),
            tables_endpoint=reader.optional("TABLES_ENDPOINT"),
            table_prefix=reader.text("TABLE_PREFIX", "dirsync"),
            service_bus_connection_string=reader.optional("ServiceBusConnection"),
            service_bus_namespace=reader.optional("ServiceBusConnection__fullyQualifiedNamespace"),
            group_sync_queue=reader.text("GROUP_SYNC_QUEUE", "group-sync"),
            enrollment_queue=reader.text("ENROLLMENT_QUEUE", "enrollment-email"),
            alert_queue=reader.text("ALERT_QUEUE", "admin-alerts"),
            graph_base_url=reader.url("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0").rstrip("/"),
            graph_client_id=reader.required("GRAPH_CLIENT_ID"),
            graph_credential=reader.choice("GRAPH_CREDENTIAL", GRAPH_CREDENTIALS, "secret"),
            graph_client_secret=reader.optional("GRAPH_CLIENT_SECRET"),
            graph_certificate_path=reader.optional("GRAPH_CLIENT_CERTIFICATE_PATH"),
            managed_identity_client_id=reader.optional("MANAGED_IDENTITY_CLIENT_ID"),
            authority_host=reader.url("AUTHORITY_HOST", "https://login.microsoftonline.com").rstrip("/"),
            consent_redirect_uri=reader.url("CONSENT_REDIRECT_URI"),
            portal_base_url=reader.url("PORTAL_BASE_URL").rstrip("/"),
            portal_consent_return_path=reader.path("PORTAL_CONSENT_RETURN_PATH", "/directory-sync"),
            portal_name=reader.text("PORTAL_NAME", "Identity Portal"),
            deprovision_guard_percent=reader.number("DEPROVISION_GUARD_PERCENT", 20.0, 0.0, 100.0),
            deprovision_guard_min_users=int(reader.number("DEPROVISION_GUARD_MIN_USERS", 10, 0, 10**9)),
            max_pages_per_message=int(reader.number("MAX_PAGES_PER_MESSAGE", 25, 1, 10_000)),
            segment_time_budget_s=reader.number("SEGMENT_TIME_BUDGET_SECONDS", 150.0, 1.0, 3600.0),
            run_stale_after_minutes=int(reader.number("RUN_STALE_AFTER_MINUTES", 180, 1, 10**6)),
            # May be fractional (tests and demos expire links in minutes).
            enrollment_token_ttl_hours=reader.number("ENROLLMENT_TOKEN_TTL_HOURS", 168.0, 0.001, 24 * 365),
            graph_concurrency=graph_concurrency,
            # One tenant's share of each Graph pool (the workers' and the people's): half unless said otherwise.
            graph_tenant_concurrency=int(reader.number("GRAPH_TENANT_CONCURRENCY", max(1, graph_concurrency // 2), 1, 64)),
            consent_propagation_grace_s=reader.number("CONSENT_PROPAGATION_GRACE_SECONDS", 600.0, 0.0, 86400.0),
            graph_tenant_cache=int(reader.number("GRAPH_TENANT_CACHE", 1000, 1, 100_000)),
            history_retention_days=int(reader.number("HISTORY_RETENTION_DAYS", 90, 1, 3650)),
            mail=_mail_settings(reader),
            notification_url=reader.optional_url("NOTIFICATION_URL"),
            change_queue=reader.text("CHANGE_QUEUE", "directory-changes"),
            # Graph allows users and groups subscriptions 41,760 minutes (29 days); shorter ones vanish sooner if
            # this app loses track of them.
            watch_lifetime_hours=reader.number("WATCH_LIFETIME_HOURS", 72.0, 2.0, 696.0),
            watch_renew_before_hours=reader.number("WATCH_RENEW_BEFORE_HOURS", 36.0, 0.5, 10_000.0),
            incremental_max_objects=int(reader.number("INCREMENTAL_MAX_OBJECTS", 500, 1, 100_000)),
            change_debounce_s=reader.number("CHANGE_DEBOUNCE_SECONDS", 2.0, 0.0, 300.0),
            invitation_lease_s=reader.number("INVITATION_LEASE_SECONDS", 300.0, 5.0, 3600.0),
            allow_shared_tenants=reader.choice("ALLOW_SHARED_TENANTS", ("false", "true"), "false") == "true",
            alerts_per_hour=int(reader.number("ALERTS_PER_HOUR", 10, 1, 1000)),
            max_delivery_count=int(reader.number("MAX_DELIVERY_COUNT", 10, 1, 2000)),
            max_subscriptions_per_org=int(reader.number("MAX_SUBSCRIPTIONS_PER_ORG", 20, 1, 10_000)),
            webhook_queue=reader.text("WEBHOOK_QUEUE", "webhook-deliveries"),
            webhook_allow_http_loopback=reader.choice(
                "WEBHOOK_ALLOW_HTTP_LOOPBACK", ("true", "false", "True", "False"), "false").lower() == "true",
            event_retention_days=int(reader.number("EVENT_RETENTION_DAYS", 30, 1, 3650)),
            default_phone_region=_phone_region(reader),
            reminder_day_s=reader.number("REMINDER_DAY_SECONDS", 86400.0, 1.0, 864000.0),
            invitation_min_interval_s=reader.number("INVITATION_MIN_INTERVAL_SECONDS", 3600.0, 0.0, 30 * 86400.0),
        )
        _cross_checks(settings, reader)
        reader.raise_if_errors()
        return settings


def _phone_region(reader: "_Reader") -> str | None:
    value = reader.optional("DEFAULT_PHONE_REGION")
    if value is not None and not known_region(value):
        reader.fail("DEFAULT_PHONE_REGION", "must be a two-letter region code with a known numbering plan (e.g. US, DE)")
        return None
    return value.upper() if value else None


def _mail_settings(reader: "_Reader") -> MailSettings | None:
    sender = reader.choice("MAIL_SENDER", MAIL_SENDERS, "smtp")
    if sender == "none":
        return None
    security = reader.choice("SMTP_SECURITY", SMTP_SECURITY, "starttls")
    default_port = {"starttls": 587, "tls": 465, "none": 25}[security]
    return MailSettings(
        sender=sender,
        mail_from=reader.required("MAIL_FROM"),
        smtp_host=reader.required("SMTP_HOST"),
        smtp_port=int(reader.number("SMTP_PORT", default_port, 1, 65535)),
        smtp_security=security,
        smtp_username=reader.optional("SMTP_USERNAME"),
        smtp_password=reader.optional("SMTP_PASSWORD"),
        smtp_timeout_s=reader.number("SMTP_TIMEOUT_SECONDS", 30.0, 1.0, 600.0),
        retry_attempts=int(reader.number("MAIL_RETRY_ATTEMPTS", 8, 0, 50)),
        retry_base_s=reader.number("MAIL_RETRY_BASE_SECONDS", 60.0, 1.0, 3600.0),
    )


def _cross_checks(s: Settings, reader: "_Reader") -> None:
    if s.graph_tenant_concurrency > s.graph_concurrency:
        reader.fail("GRAPH_TENANT_CONCURRENCY", "must not exceed GRAPH_CONCURRENCY (it is one tenant's share of it)")
    if s.mail is not None and s.invitation_lease_s <= s.mail.smtp_timeout_s:
        reader.fail("INVITATION_LEASE_SECONDS", "must be longer than SMTP_TIMEOUT_SECONDS (a slow send would be "
                                                "taken over while it still runs, and the user invited twice)")
    if not (s.tables_connection_string or s.tables_endpoint):
        reader.fail("TABLES_CONNECTION_STRING", "set it, or TABLES_ENDPOINT to use the managed identity")
    if not (s.service_bus_connection_string or s.service_bus_namespace):
        reader.fail("ServiceBusConnection", "set it, or ServiceBusConnection__fullyQualifiedNamespace to use the managed identity")
    if s.graph_credential == "secret" and not s.graph_client_secret:
        reader.fail("GRAPH_CLIENT_SECRET", "is required when GRAPH_CREDENTIAL is 'secret'")
    if s.graph_credential == "certificate" and not s.graph_certificate_path:
        reader.fail("GRAPH_CLIENT_CERTIFICATE_PATH", "is required when GRAPH_CREDENTIAL is 'certificate'")
    if urlsplit(s.authority_host).scheme != "https":
        reader.fail("AUTHORITY_HOST", "must be an https URL: the app sends its client secret or assertion there, and "
                    "azure-identity refuses any other scheme")
    if s.graph_credential == "managed_identity" and not s.managed_identity_client_id:
        reader.fail("MANAGED_IDENTITY_CLIENT_ID", "is required when GRAPH_CREDENTIAL is 'managed_identity'")
    if s.mail and s.mail.smtp_password and not s.mail.smtp_username:
        reader.fail("SMTP_USERNAME", "is required when SMTP_PASSWORD is set")


class _Reader:
    """Reads keys from a mapping and collects every problem, so one error names them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._errors: list[str] = []
        self._unresolved: set[str] = set()

    def fail(self, key: str, why: str) -> None:
        self._errors.append(f"{key}: {why}")

    def raise_if_errors(self) -> None:
        if self._errors:
            raise SettingsError("invalid app settings: " + "; ".join(self._errors), status=503 if self._unresolved else 500)

    def optional(self, key: str) -> str | None:
        value = self._env.get(key, "")
        value = value.strip() if isinstance(value, str) else ""
        if value.lower().startswith(UNRESOLVED_REFERENCE_PREFIXES):
            # Never use it (a secret setting would sign with a public string) and never echo it.
            self._unresolved.add(key)
            self.fail(key, "is an unresolved Key Vault or App Configuration reference (check the app's identity has "
                           "access to the secret, and that the secret exists and is enabled)")
            return None
        return value or None

    def required(self, key: str) -> str:
        value = self.optional(key)
        if value is None:
            if key not in self._unresolved:
                self.fail(key, "is missing")
            return ""
        return value

    def text(self, key: str, default: str) -> str:
        return self.optional(key) or default

    def secret(self, key: str) -> str:
        value = self.required(key)
        if value and len(value.encode()) < MIN_SECRET_BYTES:
            self.fail(key, f"is too short: use at least {MIN_SECRET_BYTES} bytes of random text")
        return value

    def url(self, key: str, default: str | None = None) -> str:
        value = self.optional(key) or default
        if value is None:
            if key not in self._unresolved:
                self.fail(key, "is missing")
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(key, "must be an absolute http(s) URL")
        return value

    def optional_url(self, key: str) -> str | None:
        """An absolute URL or nothing. Graph delivers only to https; http is accepted for loopback (the dev host)."""
        value = self.optional(key)
        if value is None:
            return None
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            self.fail(key, "must be an absolute https URL (http only on loopback)")  # never echo it: it holds a key
        return value

    def path(self, key: str, default: str) -> str:
        value = self.optional(key) or default
        if not value.startswith("/") or value.startswith("//"):
            self.fail(key, "must be a path starting with a single '/'")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.optional(key) or default
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(allowed)}")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        raw = self.optional(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.fail(key, "must be a number")
            return default
        if not low <= value <= high:
            self.fail(key, f"must be between {low:g} and {high:g}")
            return default
        return value
