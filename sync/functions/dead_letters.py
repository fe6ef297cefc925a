"""What every dead-letter trigger shares: a message that is not a job is logged once and completed."""
from __future__ import annotations

from typing import Callable, TypeVar

import azure.functions as func

from ..inputs import loads_json
from ..logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


def decoded(msg: func.ServiceBusMessage, parse: Callable[[bytes], T], queue: str) -> T | None:
    """The job a dead-lettered message carries, or None when it cannot be parsed. Raising would make Service Bus
    deliver it again from the dead-letter queue, which has no dead-letter queue of its own: it would loop for ever.
    Returning completes it; the log line (never the body, which may be anything) is all that is left of it."""
    try:
        body = msg.get_body()
        loads_json(body)  # no lone surrogate (\ud800) nor nesting too deep: such text names no row
        return parse(body)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # UnicodeDecodeError is a ValueError
        log.error("dead-lettered message is not a job: completed without action",
                  extra={"queue": queue, "message_id": str(msg.message_id)[:128],
                         "reason": str(msg.dead_letter_reason or "")[:128]})
        return None
