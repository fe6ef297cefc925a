"""Every queue the app uses is declared wherever a deployment or a local set-up creates queues, under the name the
settings default to: a queue missing in Azure is an entity-not-found on the first send, not a test failure."""
import dataclasses
import json
import re
from pathlib import Path

from sync.settings import Settings
from tests.fakes import unit_settings

ROOT = Path(__file__).resolve().parents[2]


def queues() -> dict[str, str]:
    """{setting field: default queue name} for every *_queue setting (a new queue setting joins by its name)."""
    settings = unit_settings()
    found = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings) if f.name.endswith("_queue")}
    assert {"group-sync", "enrollment-email", "admin-alerts", "directory-changes"} <= set(found.values()), found
    return found


def setting_key(field: str) -> str:
    return {"enrollment_queue": "ENROLLMENT_QUEUE", "alert_queue": "ALERT_QUEUE", "change_queue": "CHANGE_QUEUE",
            "group_sync_queue": "GROUP_SYNC_QUEUE"}.get(field, field.upper())


def test_the_template_declares_every_queue_and_sets_every_queue_setting():
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    # The template may read the queues' definitions from a file of its own (loadJsonContent / loadTextContent).
    loaded = "".join((ROOT / "infra" / name).read_text()
                     for name in re.findall(r"load(?:Json|Yaml|Text)Content\('([^']+)'", bicep))
    for field, name in queues().items():
        assert f"'{name}'" in bicep or f'"{name}"' in loaded, f"queue {name} is not declared in infra/main.bicep"
        assert re.search(rf"^\s*{setting_key(field)}:", bicep, re.MULTILINE), f"{setting_key(field)} not in the app settings"


def test_the_docs_and_the_sample_settings_name_every_queue():
    readme = (ROOT / "infra" / "README.md").read_text()
    core_tools = (ROOT / "docs" / "core-tools.md").read_text()
    config = json.loads(re.search(r"```json\n(\{\s*\"UserConfig\".*?)```", core_tools, re.DOTALL).group(1))
    emulator = {q["Name"] for ns in config["UserConfig"]["Namespaces"] for q in ns["Queues"]}
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    expected = queues()
    assert emulator == set(expected.values()), "the Service Bus emulator's Config.json in docs/core-tools.md"
    for field, name in expected.items():
        assert f"`{name}`" in readme, f"queue {name} is not named in infra/README.md"
        assert sample.get(setting_key(field)) == name, f"{setting_key(field)} in local.settings.sample.json"
