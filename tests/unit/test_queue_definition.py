"""One definition of the queues (infra/queues.json): main.bicep deploys it, the local broker declares it, the app's
settings default to its names."""
import json
import re
from pathlib import Path

from local.broker.queues import load_definition, parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = json.loads((ROOT / "infra" / "queues.json").read_text())
BICEP = (ROOT / "infra" / "main.bicep").read_text()


def _queues_resource() -> str:
    start = BICEP.index("resource queues 'Microsoft.ServiceBus/namespaces/queues@")
    return BICEP[start:BICEP.index("\n]\n", start)]


def test_main_bicep_deploys_every_queue_property_from_the_definition():
    assert "var queueDefinition = loadJsonContent('queues.json')" in BICEP
    resource = _queues_resource()
    assert "for queue in items(queueDefinition.queues)" in resource and "name: queue.value.name" in resource
    for name in DEFINITION["properties"]:
        assert f"{name}: queueDefinition.properties.{name}" in resource, name
    assert "defaultMessageTimeToLive: queue.value.defaultMessageTimeToLive" in resource
    # No queue property is written into the template itself (except what the app never varies).
    literal = re.findall(r"^\s+(\w+): (?!queueDefinition\.|queue\.value\.)(.+)$", resource, re.M)
    assert {name for name, _ in literal} <= {"parent", "properties", "requiresSession", "enablePartitioning"}, literal
    for setting in DEFINITION["queues"]:
        assert f"queueDefinition.queues.{setting}.name" in BICEP, setting


def test_the_namespace_tier_is_the_definitions_and_sets_the_message_size():
    namespace = BICEP[BICEP.index("resource serviceBus 'Microsoft.ServiceBus/namespaces@"):]
    assert re.search(r"sku: \{\s+name: '(\w+)'", namespace).group(1) == DEFINITION["tier"] == "Standard"
    # Standard: 256 KB a message (learn.microsoft.com/azure/service-bus-messaging/service-bus-quotas)
    assert DEFINITION["maxMessageSizeInKilobytes"] == 256


def test_the_definition_is_within_service_bus_limits_and_names_the_settings_defaults():
    props = DEFINITION["properties"]
    assert 5 <= parse_duration(props["lockDuration"]) <= 300  # a lock is at most 5 minutes
    assert props["maxDeliveryCount"] >= 1
    assert 20 <= parse_duration(props["duplicateDetectionHistoryTimeWindow"]) <= 7 * 86400
    declared = {setting: queue.name for setting, queue in load_definition().items()}
    settings_py = (ROOT / "sync" / "settings.py").read_text()
    for setting, name in declared.items():
        assert f'reader.text("{setting}", "{name}")' in settings_py, setting


def test_the_app_knows_the_queues_max_delivery_count_from_the_definition():
    """A change job decides on its last delivery whether to end its run (sync/changes.py): the app setting follows
    the definition in Azure and in the local stack alike."""
    assert "MAX_DELIVERY_COUNT: string(queueDefinition.properties.maxDeliveryCount)" in BICEP
    local_main = (ROOT / "local" / "__main__.py").read_text()
    assert 's["MAX_DELIVERY_COUNT"]' in local_main and 'load_definition()["CHANGE_QUEUE"].max_delivery_count' in local_main
    settings_py = (ROOT / "sync" / "settings.py").read_text()
    assert f'reader.number("MAX_DELIVERY_COUNT", {DEFINITION["properties"]["maxDeliveryCount"]},' in settings_py
