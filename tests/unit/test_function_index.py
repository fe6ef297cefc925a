"""Index the app the way the Functions host does, and keep the OpenAPI document in step with the routes."""
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import functions_by_name

ROOT = Path(__file__).resolve().parents[2]
TRIGGERS = {"httpTrigger", "serviceBusTrigger", "timerTrigger"}


def _functions():
    return [(name, json.loads(f.get_function_json())) for name, f in functions_by_name().items()]


def test_function_names_are_unique_and_bindings_valid():
    # get_functions() itself refuses duplicate names, as the host's indexing does.
    names = [name for name, _ in _functions()]
    assert len(names) == len(set(names)) >= 20
    settings_sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for name, spec in _functions():
        triggers = [b for b in spec["bindings"] if b["direction"] == "IN" and b["type"].endswith("Trigger")]
        assert len(triggers) == 1, name
        trigger = triggers[0]
        assert trigger["type"] in TRIGGERS, name
        if trigger["type"] == "httpTrigger":
            assert trigger["authLevel"] in ("FUNCTION", "ANONYMOUS")
            assert not trigger["route"].startswith("/")
            assert set(trigger["methods"]) <= {"GET", "POST", "PUT", "PATCH", "DELETE"}
            assert any(b["type"] == "http" and b["direction"] == "OUT" for b in spec["bindings"])
        if trigger["type"] == "serviceBusTrigger":
            assert trigger["connection"] == "ServiceBusConnection"
            assert re.fullmatch(r"%[A-Z_]+%(/\$DeadLetterQueue)?", trigger["queueName"]), trigger["queueName"]
            setting = trigger["queueName"].split("%")[1]
            assert setting in settings_sample
        if trigger["type"] == "timerTrigger":
            assert trigger["schedule"] in ("%NIGHTLY_SYNC_SCHEDULE%", "%WATCH_RENEWAL_SCHEDULE%", "%RECOVERY_SCHEDULE%",
                                           "%ENROLLMENT_REMINDERS_SCHEDULE%")
            assert trigger["schedule"].strip("%") in settings_sample


def test_only_health_consent_the_alert_confirmation_and_the_api_description_are_anonymous():
    anonymous = {name for name, spec in _functions() if spec["bindings"][0].get("authLevel") == "ANONYMOUS"}
    assert anonymous == {"health", "consent_callback", "confirm_notify_email", "openapi"}


def test_openapi_describes_exactly_the_registered_routes():
    doc = json.loads((ROOT / "openapi.json").read_text())
    documented = {(path, method.upper()) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    registered = set()
    for _, spec in _functions():
        trigger = spec["bindings"][0]
        if trigger["type"] == "httpTrigger":
            for method in trigger["methods"]:
                registered.add(("/api/" + trigger["route"], method))
    assert documented == registered


def test_import_opens_no_connection_and_needs_no_settings():
    probe = (
        "import os, socket\n"
        "for k in list(os.environ):\n"
        "    if k.isupper() and k not in ('PATH','HOME','LANG','PYTHONPATH','SYSTEMROOT'): os.environ.pop(k)\n"
        "def refuse(*a, **k): raise AssertionError('connection opened at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import sys\n"
        "import function_app\n"
        "assert 'msgraph' not in sys.modules, 'msgraph imported eagerly'\n"
        "assert 'azure.data.tables' not in sys.modules and 'azure.servicebus' not in sys.modules\n"
        "print(len(function_app.app.get_functions()))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 20
