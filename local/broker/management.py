"""The ``<entity>/$management`` request/response operations azure-servicebus uses.

Request and response shapes follow what azure-servicebus 7.15 sends and parses
(``_servicebus_receiver.py``, ``_servicebus_sender.py``, ``_common/mgmt_handlers.py``):
the request body is an AMQP-value map, the answer carries ``statusCode``,
``statusDescription`` and, on failure, ``errorCondition`` application properties.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from proton import UNDESCRIBED, Array, Data

from .codec import EncodedMessage, MessageFormatError, timestamp_ms
from .store import Entity, Lock, LockLost, MessageStore

VENDOR = "com.microsoft:"
LOCK_LOST = VENDOR + "message-lock-lost"
MESSAGE_NOT_FOUND = VENDOR + "message-not-found"
ARGUMENT_ERROR = VENDOR + "argument-error"

# update-disposition statuses (the client's MESSAGE_MGMT_SETTLEMENT_TERM_MAP).
COMPLETED, ABANDONED, DEFERRED, SUSPENDED = "completed", "abandoned", "defered", "suspended"

RECEIVE_AND_DELETE = 0  # receiver-settle-mode "first"


@dataclass(frozen=True)
class Response:
    """What to answer a management request with."""

    status: int
    description: str = "OK"
    value: Any = None
    condition: str | None = None


class ManagementError(Exception):
    """A request the operation refuses; becomes an error :class:`Response`."""

    def __init__(self, status: int, condition: str, description: str) -> None:
        super().__init__(description)
        self.response = Response(status, description, None, condition)


def _lock_lost(token: Any) -> ManagementError:
    return ManagementError(410, LOCK_LOST, f"The lock {token} is lost, expired or already settled.")


class Management:
    """Executes management operations against the store.

    ``on_settled(lock, outcome)`` is called for every lock settled through
    ``update-disposition`` so the server can settle the matching link
    delivery, if the lock still has one. ``outcome`` is one of the
    update-disposition statuses.
    """

    def __init__(self, store: MessageStore, on_settled: Callable[[Lock, str], None]) -> None:
        self._store = store
        self._on_settled = on_settled
        self._operations: dict[str, Callable[[Entity, dict], Response]] = {
            VENDOR + "renew-lock": self._renew_lock,
            VENDOR + "schedule-message": self._schedule,
            VENDOR + "cancel-scheduled-message": self._cancel_scheduled,
            VENDOR + "peek-message": self._peek,
            VENDOR + "update-disposition": self._update_disposition,
            VENDOR + "receive-by-sequence-number": self._receive_by_sequence_number,
        }

    def handle(self, entity: Entity, operation: str | None, body: dict) -> Response:
        """Run ``operation`` with the request ``body`` on ``entity``."""
        handler = self._operations.get(operation or "")
        if handler is None:
            return Response(501, f"Operation {operation!r} is not supported by the local broker.", None,
                            "amqp:not-implemented")
        try:
            return handler(entity, body)
        except ManagementError as error:
            return error.response
        except (KeyError, TypeError, ValueError, MessageFormatError) as error:
            return Response(400, f"Malformed {operation} request: {error!r}", None, ARGUMENT_ERROR)

    def _find_locks(self, entity: Entity, tokens: list) -> list[Lock]:
        locks = []
        for token in tokens:
            try:
                locks.append(entity.find_lock(token if isinstance(token, uuid.UUID) else uuid.UUID(str(token))))
            except (LockLost, ValueError):
                raise _lock_lost(token) from None
        return locks

    def _renew_lock(self, entity: Entity, body: dict) -> Response:
        expirations = [entity.renew(lock) for lock in self._find_locks(entity, body["lock-tokens"])]
        return Response(200, value={
            "expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *(timestamp_ms(t) for t in expirations)),
        })

    def _schedule(self, entity: Entity, body: dict) -> Response:
        contents = [EncodedMessage.decode(item["message"]) for item in body["messages"]]
        numbers = [self._store.enqueue(entity, content) for content in contents]
        return Response(200, value={"sequence-numbers": Array(UNDESCRIBED, Data.LONG, *numbers)})

    def _cancel_scheduled(self, entity: Entity, body: dict) -> Response:
        missing = entity.cancel_scheduled(int(n) for n in body["sequence-numbers"])
        if missing:
            raise ManagementError(404, MESSAGE_NOT_FOUND, f"No scheduled messages with sequence numbers {missing}.")
        return Response(200)

    def _peek(self, entity: Entity, body: dict) -> Response:
        start = int(body.get("from-sequence-number") or 1)
        count = int(body.get("message-count") or 1)
        found = entity.peek(start, count)
        if not found:
            return Response(204, "No messages to peek.")
        return Response(200, value={
            "messages": [{"message": message.render(state=state)} for message, state in found],
        })

    def _update_disposition(self, entity: Entity, body: dict) -> Response:
        status = body["disposition-status"]
        locks = self._find_locks(entity, body["lock-tokens"])
        for lock in locks:
            if status == COMPLETED:
                entity.complete(lock)
            elif status == ABANDONED:
                entity.abandon(lock)
            elif status == DEFERRED:
                entity.defer(lock)
            elif status == SUSPENDED:
                entity.dead_letter(
                    lock,
                    body.get("deadletter-reason") or None,
                    body.get("deadletter-description") or None,
                )
            else:
                raise ManagementError(400, ARGUMENT_ERROR, f"Unknown disposition-status {status!r}.")
            self._on_settled(lock, status)
        return Response(200)

    def _receive_by_sequence_number(self, entity: Entity, body: dict) -> Response:
        numbers = [int(n) for n in body["sequence-numbers"]]
        peek_lock = body.get("receiver-settle-mode", 1) != RECEIVE_AND_DELETE
        if not all(entity.has_deferred(n) for n in numbers):
            raise ManagementError(404, MESSAGE_NOT_FOUND, f"Not all of {numbers} are deferred messages.")
        items = []
        for number in numbers:
            message = entity.take_deferred(number)
            if peek_lock:
                lock = entity.lock(message)
                items.append({"lock-token": lock.token, "message": message.render(lock)})
            else:
                entity.consume()
                items.append({"message": message.render()})
        return Response(200, value={"messages": items})
