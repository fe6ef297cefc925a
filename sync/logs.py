"""Loggers whose structured fields also travel in the message text.

The Azure Functions Python worker forwards only a record's formatted message to Application Insights, so fields
passed as ``extra=`` would be lost there; this adapter appends them as ``key=value`` and keeps them as attributes
for handlers (such as OpenTelemetry's) that read them.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, MutableMapping

# The attributes every LogRecord has (and ``message``/``asctime``, which formatting adds): ``Logger.makeRecord``
# refuses an ``extra`` key among them with a KeyError, and a summary's ``created`` count is one.
RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def safe_extra(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with each key LogRecord reserves renamed ``field_<key>`` (``created`` → ``field_created``)."""
    return {(f"field_{key}" if key in RESERVED else key): value for key, value in fields.items()}


class FieldsAdapter(logging.LoggerAdapter):
    """``log.info("run finished", extra={"run": id})`` logs ``run finished run=<id>``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = kwargs.get("extra") or {}
        if fields:
            msg = f"{msg} " + " ".join(f"{key}={_value(value)}" for key, value in fields.items())
            kwargs["extra"] = safe_extra(fields)  # the text keeps the names; the record's attributes are safe
        return msg, kwargs


def _value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):  # counts and lists as JSON, never Python reprs
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def get_logger(name: str) -> FieldsAdapter:
    """A logger for ``name`` whose ``extra`` fields are written into the message."""
    return FieldsAdapter(logging.getLogger(name), {})
