"""The queues a local namespace declares, read from the definition the deployment uses (``infra/queues.json``).

``infra/main.bicep`` deploys the same file (``loadJsonContent``), so the local broker holds the app to the lock
duration, max delivery count, time to live, dead-lettering on expiry, duplicate-detection window and message size
that Azure will.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

DEFINITION = Path(__file__).resolve().parents[2] / "infra" / "queues.json"

# What Service Bus gives a queue created without options (learn.microsoft.com/azure/service-bus-messaging/
# service-bus-queues-topics-subscriptions): lock 1 minute, 10 deliveries, no expiry, no duplicate detection.
# Standard tier: 256 KB per message (learn.microsoft.com/azure/service-bus-messaging/service-bus-quotas).
STANDARD_MAX_MESSAGE_BYTES = 256 * 1024

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str) -> float:
    """An ISO 8601 duration of days, hours, minutes and seconds (``P7D``, ``PT5M``, ``PT0.5S``) in seconds."""
    match = _DURATION.match(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT"):
        raise ValueError(f"not an ISO 8601 duration of days to seconds: {text!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


@dataclass(frozen=True)
class QueueSettings:
    """One queue's properties, as ``Microsoft.ServiceBus/namespaces/queues`` names them (times in seconds)."""

    name: str
    lock_duration_s: float = 60.0
    max_delivery_count: int = 10
    default_ttl_s: float | None = None  # None: TimeSpan.MaxValue, messages never expire
    dead_letter_on_expiration: bool = False
    duplicate_detection_window_s: float | None = None  # None: duplicate detection off
    max_message_bytes: int = STANDARD_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        if self.lock_duration_s <= 0:
            raise ValueError("lock_duration_s must be positive")
        if self.default_ttl_s is not None and self.default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive")

    def with_overrides(self, *, lock_duration_s: float | None = None,
                       max_delivery_count: int | None = None) -> "QueueSettings":
        """A copy with a shorter lock or fewer deliveries (tests that wait out a lock or a dead-lettering)."""
        changes: dict[str, Any] = {}
        if lock_duration_s is not None:
            changes["lock_duration_s"] = lock_duration_s
        if max_delivery_count is not None:
            changes["max_delivery_count"] = max_delivery_count
        return replace(self, **changes)


def load_definition(path: Path = DEFINITION) -> dict[str, QueueSettings]:
    """The declared queues by the app setting that names each (``GROUP_SYNC_QUEUE`` ...)."""
    return parse_definition(json.loads(path.read_text(encoding="utf-8")))


def parse_definition(data: Mapping[str, Any]) -> dict[str, QueueSettings]:
    """Turn the JSON definition (see ``infra/queues.json``) into queue settings keyed by app setting."""
    common = data["properties"]
    max_bytes = int(data.get("maxMessageSizeInKilobytes", 256)) * 1024
    queues = {}
    for setting, queue in data["queues"].items():
        ttl = queue.get("defaultMessageTimeToLive")
        queues[setting] = QueueSettings(
            name=str(queue["name"]),
            lock_duration_s=parse_duration(common["lockDuration"]),
            max_delivery_count=int(common["maxDeliveryCount"]),
            default_ttl_s=parse_duration(ttl) if ttl else None,
            dead_letter_on_expiration=bool(common.get("deadLetteringOnMessageExpiration", False)),
            duplicate_detection_window_s=(parse_duration(common["duplicateDetectionHistoryTimeWindow"])
                                          if common.get("requiresDuplicateDetection") else None),
            max_message_bytes=max_bytes,
        )
    return queues


def declared_queues(names: Mapping[str, str] | None = None, *, lock_duration_s: float | None = None,
                    max_delivery_count: int | None = None, path: Path = DEFINITION) -> list[QueueSettings]:
    """The definition's queues, renamed where ``names`` (app setting → queue name) says, with test overrides."""
    names = names or {}
    return [replace(q, name=names.get(setting) or q.name).with_overrides(
                lock_duration_s=lock_duration_s, max_delivery_count=max_delivery_count)
            for setting, q in load_definition(path).items()]


def as_settings(queues: Iterable[str | QueueSettings], *, lock_duration_s: float,
                max_delivery_count: int) -> list[QueueSettings]:
    """Queue settings for each entry; a bare name is a queue created with the broker's lock and delivery count."""
    return [q if isinstance(q, QueueSettings) else
            QueueSettings(q, lock_duration_s=lock_duration_s, max_delivery_count=max_delivery_count)
            for q in queues]
