import pytest

from sync.errors import SettingsError
from sync.settings import Settings
from tests.fakes import unit_settings


def test_valid_settings_have_defaults_and_hide_secrets():
    s = unit_settings()
    assert s.group_sync_queue == "group-sync"
    assert s.deprovision_guard_percent == 20
    assert s.mail.smtp_port == 25  # SMTP_SECURITY=none
    text = repr(s)
    assert s.portal_token_secret not in text and s.signing_secret not in text


def test_every_missing_key_is_named_at_once():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({})
    message = str(err.value)
    for key in ("PORTAL_TOKEN_SECRET", "SIGNING_SECRET", "GRAPH_CLIENT_ID", "CONSENT_REDIRECT_URI", "PORTAL_BASE_URL",
                "TABLES_CONNECTION_STRING", "ServiceBusConnection", "MAIL_FROM", "SMTP_HOST"):
        assert key in message


def test_short_token_secret_is_refused_with_a_clear_message():
    with pytest.raises(SettingsError, match="PORTAL_TOKEN_SECRET: is too short: use at least 32 bytes"):
        unit_settings(PORTAL_TOKEN_SECRET="short")


@pytest.mark.parametrize("key,value,fragment", [
    ("DEPROVISION_GUARD_PERCENT", "abc", "must be a number"),
    ("DEPROVISION_GUARD_PERCENT", "150", "between 0 and 100"),
    ("GRAPH_CREDENTIAL", "password", "must be one of"),
    ("PORTAL_BASE_URL", "portal.example", "absolute http(s) URL"),
    ("PORTAL_CONSENT_RETURN_PATH", "//evil.example", "single '/'"),
])
def test_bad_values_are_named(key, value, fragment):
    with pytest.raises(SettingsError) as err:
        unit_settings(**{key: value})
    assert key in str(err.value) and fragment in str(err.value)


def test_the_authority_must_be_https_and_there_is_no_static_credential():
    with pytest.raises(SettingsError, match="AUTHORITY_HOST: must be an https URL"):
        unit_settings(AUTHORITY_HOST="http://127.0.0.1:8081")
    with pytest.raises(SettingsError, match="GRAPH_CREDENTIAL: must be one of secret, certificate, managed_identity"):
        unit_settings(GRAPH_CREDENTIAL="local_static")
    with pytest.raises(SettingsError, match="MANAGED_IDENTITY_CLIENT_ID"):
        unit_settings(GRAPH_CREDENTIAL="managed_identity")
    s = unit_settings(AUTHORITY_HOST="https://127.0.0.1:8443")
    assert s.authority_host == "https://127.0.0.1:8443" and s.consent_propagation_grace_s == 600
    assert unit_settings(CONSENT_PROPAGATION_GRACE_SECONDS="30").consent_propagation_grace_s == 30


def test_one_tenants_share_of_graph_is_half_unless_said_and_never_more_than_the_pool():
    assert (unit_settings().graph_concurrency, unit_settings().graph_tenant_concurrency) == (4, 2)
    assert unit_settings(GRAPH_CONCURRENCY="9").graph_tenant_concurrency == 4
    assert unit_settings(GRAPH_CONCURRENCY="1").graph_tenant_concurrency == 1
    assert unit_settings(GRAPH_CONCURRENCY="8", GRAPH_TENANT_CONCURRENCY="6").graph_tenant_concurrency == 6
    with pytest.raises(SettingsError, match="GRAPH_TENANT_CONCURRENCY: must not exceed GRAPH_CONCURRENCY"):
        unit_settings(GRAPH_CONCURRENCY="4", GRAPH_TENANT_CONCURRENCY="5")


def test_client_secret_required_for_secret_credential():
    with pytest.raises(SettingsError, match="GRAPH_CLIENT_SECRET"):
        unit_settings(GRAPH_CREDENTIAL="secret", GRAPH_CLIENT_SECRET="", GRAPH_BASE_URL="https://graph.microsoft.com/v1.0")


def test_mail_can_be_disabled():
    s = unit_settings(MAIL_SENDER="none", MAIL_FROM="", SMTP_HOST="")
    assert s.mail is None


KV_REF = "@Microsoft.KeyVault(VaultName=kv-dirsync-abc;SecretName=portal-token-secret)"


@pytest.mark.parametrize("key", ["PORTAL_TOKEN_SECRET", "SIGNING_SECRET", "GRAPH_CLIENT_SECRET", "SMTP_PASSWORD",
                                 "NOTIFICATION_URL", "TABLES_CONNECTION_STRING", "ServiceBusConnection"])
@pytest.mark.parametrize("reference", [KV_REF, "@microsoft.keyvault(SecretUri=https://kv.vault.azure.net/secrets/x/)",
                                       "@Microsoft.AppConfiguration(Endpoint=https://cfg.azconfig.io; Key=x)"])
def test_an_unresolved_reference_is_refused_naming_the_key_never_the_value(key, reference):
    """App Service passes the literal reference when it cannot resolve it; it is public, so it is never a secret."""
    with pytest.raises(SettingsError) as err:
        unit_settings(SMTP_USERNAME="relay-user", **{key: reference})
    message = str(err.value)
    assert f"{key}: is an unresolved Key Vault or App Configuration reference" in message
    assert reference not in message and "VaultName" not in message and "is missing" not in message
    assert err.value.status == 503


def test_a_wrong_setting_is_a_500_and_an_unresolved_one_a_503():
    with pytest.raises(SettingsError) as err:
        unit_settings(PORTAL_TOKEN_SECRET="short")
    assert err.value.status == 500


async def test_a_token_signed_with_the_literal_reference_is_refused_with_503(monkeypatch, caplog):
    """The issue's attack: the reference text is in the app's configuration; a token signed with it was accepted."""
    from sync import composition
    from tests.fakes import unit_env
    from tests.helpers import call, token

    for k, v in unit_env(PORTAL_TOKEN_SECRET=KV_REF).items():
        monkeypatch.setenv(k, v)
    composition.override(None)
    await composition.reset()
    try:
        status, body, _ = await call("list_subscriptions", auth=f"Bearer {token(secret=KV_REF)}")
    finally:
        await composition.reset()
    assert (status, body["code"]) == (503, "misconfigured")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PORTAL_TOKEN_SECRET" in logged and KV_REF not in logged and "VaultName" not in logged
