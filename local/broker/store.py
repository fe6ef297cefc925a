"""In-memory queues: availability, peek-locks, scheduling, deferral, dead-lettering, expiry, duplicate detection,
counters.

Each queue keeps the properties it was declared with (:class:`~local.broker.queues.QueueSettings`); a queue that
was not declared does not exist.

Nothing here knows about AMQP links or sockets; the server drives it from its
single event-loop thread, so the store itself takes no locks.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from .codec import EncodedMessage, timestamp_ms
from .queues import QueueSettings

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
# DeadLetterReason values the broker sets (learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues)
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"
TTL_EXPIRED_DESCRIPTION = "The message expired and was dead lettered."

# x-opt-message-state values, as Service Bus reports them on peeked messages.
_STATE_ACTIVE, _STATE_DEFERRED, _STATE_SCHEDULED = 0, 1, 2

KNOWN_FAULTS = frozenset({"duplicate_deliveries"})


@dataclass(eq=False)
class StoredMessage:
    """A message held by an entity, with the broker-owned metadata."""

    sequence_number: int
    content: EncodedMessage
    enqueued_at: float
    delivery_count: int = 0
    deferred: bool = False
    duplicate: bool = False  # enqueued by the duplicate_deliveries fault: never duplicated again
    ttl_s: float | None = None  # the effective time to live: the sender's, capped by the queue's default
    queued: bool = False  # waiting in an entity's available heap (not locked, deferred or scheduled)

    @property
    def expires_at(self) -> float | None:
        """Enqueued time + time to live (epoch seconds), or None for a message that never expires."""
        return None if self.ttl_s is None else self.enqueued_at + self.ttl_s

    def render(self, lock: "Lock | None" = None, state: int | None = None) -> bytes:
        """Encode the message as a receiver (or a peek) gets it."""
        annotations: dict[str, Any] = {
            "x-opt-sequence-number": self.sequence_number,
            "x-opt-enqueued-time": timestamp_ms(self.enqueued_at),
        }
        if lock is not None:
            annotations["x-opt-locked-until"] = timestamp_ms(lock.locked_until)
            annotations["x-opt-lock-token"] = lock.token
        if state is not None:
            annotations["x-opt-message-state"] = state
        ttl_ms = None if self.ttl_s is None else int(self.ttl_s * 1000)
        return self.content.render(self.delivery_count, annotations, ttl_ms=ttl_ms)


@dataclass(eq=False)
class Lock:
    """A peek-lock on one message; ``delivery`` is the server's handle on the link transfer, if any."""

    token: uuid.UUID
    message: StoredMessage
    entity: "Entity"
    locked_until: float
    active: bool = True
    delivery: Any = None


class LockLost(LookupError):
    """The lock token is unknown, expired or already settled."""


class Entity:
    """A queue, or the dead-letter sub-queue of one."""

    def __init__(self, store: "MessageStore", path: str, dead_letter: "Entity | None", settings: QueueSettings) -> None:
        self.store = store
        self.path = path
        self.settings = settings
        self.dead_letter_entity = dead_letter
        self._available: list[tuple[int, StoredMessage]] = []  # heap by sequence number
        self._locks: dict[uuid.UUID, Lock] = {}
        self._scheduled: dict[int, StoredMessage] = {}
        self._deferred: dict[int, StoredMessage] = {}
        self.counters = dict.fromkeys(("sent", "completed", "abandoned", "deliveries", "duplicates", "expired"), 0)

    # -- availability ---------------------------------------------------------------

    @property
    def has_available(self) -> bool:
        """Whether a receiver could be handed a message now."""
        return bool(self._available)

    def add(self, message: StoredMessage) -> None:
        """Make ``message`` available to receivers (or park it as deferred)."""
        if message.deferred:
            self._deferred[message.sequence_number] = message
            return
        expires_at = message.expires_at if self.dead_letter_entity is not None else None  # a DLQ observes no TTL
        if expires_at is not None and expires_at <= self.store.clock():
            self._expire(message)
            return
        message.queued = True
        heapq.heappush(self._available, (message.sequence_number, message))
        self.store.mark_available(self)
        if expires_at is not None:
            self.store.add_timer(expires_at, self._check_expiry, message)

    def take(self) -> StoredMessage | None:
        """Remove and return the lowest-sequence available message that has not expired."""
        now = self.store.clock()
        while self._available:
            message = heapq.heappop(self._available)[1]
            message.queued = False
            expires_at = message.expires_at if self.dead_letter_entity is not None else None
            if expires_at is not None and expires_at <= now:
                self._expire(message)
                continue
            self.counters["deliveries"] += 1
            return message
        return None

    def _check_expiry(self, message: StoredMessage) -> None:
        """Expire ``message`` if it still waits here (a locked or deferred message is not touched)."""
        if not message.queued or message.expires_at is None or message.expires_at > self.store.clock():
            return
        self._available = [(n, m) for n, m in self._available if m is not message]
        heapq.heapify(self._available)
        message.queued = False
        self._expire(message)

    def _expire(self, message: StoredMessage) -> None:
        """Time to live passed: dead-letter (``TTLExpiredException``) when the queue says so, else drop."""
        self.counters["expired"] += 1
        if self.settings.dead_letter_on_expiration and self.dead_letter_entity is not None:
            self._move_to_dead_letter(message, TTL_EXPIRED, TTL_EXPIRED_DESCRIPTION)

    def consume(self) -> None:
        """Record a receive-and-delete delivery: the message taken is gone once sent."""
        self.counters["completed"] += 1

    # -- locks ----------------------------------------------------------------------

    def lock(self, message: StoredMessage) -> Lock:
        """Peek-lock a message just taken from this entity."""
        lock = Lock(uuid.uuid4(), message, self, self.store.clock() + self.settings.lock_duration_s)
        self._locks[lock.token] = lock
        self.store.add_timer(lock.locked_until, self._check_lock, lock)
        return lock

    def find_lock(self, token: uuid.UUID) -> Lock:
        """The active lock with this token; raises :class:`LockLost`."""
        lock = self._locks.get(token)
        if lock is None or not lock.active:
            raise LockLost(token)
        return lock

    def renew(self, lock: Lock) -> float:
        """Extend an active lock by the lock duration; returns the new expiry (epoch seconds)."""
        self._require_active(lock)
        lock.locked_until = self.store.clock() + self.settings.lock_duration_s
        return lock.locked_until

    def complete(self, lock: Lock) -> None:
        """Settle successfully: the message leaves the entity."""
        self._unlock(lock)
        self.counters["completed"] += 1
        message = lock.message
        if self.store.faults.get("duplicate_deliveries") and not message.duplicate:
            self.add(
                StoredMessage(
                    self.store.next_sequence_number(self),
                    message.content,
                    self.store.clock(),
                    duplicate=True,
                    ttl_s=message.ttl_s,
                )
            )

    def release(self, lock: Lock) -> None:
        """Give the message back untouched (AMQP released: it does not count as a delivery)."""
        self._unlock(lock)
        self.add(lock.message)

    def abandon(self, lock: Lock) -> None:
        """Give the message back as a failed delivery."""
        self._unlock(lock)
        self.counters["abandoned"] += 1
        self._redeliver(lock.message)

    def defer(self, lock: Lock) -> None:
        """Set the message aside; only receive-by-sequence-number gets it back."""
        self._unlock(lock)
        lock.message.deferred = True
        self.add(lock.message)

    def dead_letter(self, lock: Lock, reason: str | None, description: str | None) -> None:
        """Move the message to the dead-letter sub-queue."""
        self._unlock(lock)
        self._move_to_dead_letter(lock.message, reason, description)

    def _require_active(self, lock: Lock) -> None:
        if not lock.active or self._locks.get(lock.token) is not lock:
            raise LockLost(lock.token)

    def _unlock(self, lock: Lock) -> None:
        self._require_active(lock)
        lock.active = False
        del self._locks[lock.token]

    def _check_lock(self, lock: Lock) -> None:
        if not lock.active:
            return
        if lock.locked_until > self.store.clock():  # renewed since this timer was set
            self.store.add_timer(lock.locked_until, self._check_lock, lock)
            return
        self._unlock(lock)
        self._redeliver(lock.message)

    def _redeliver(self, message: StoredMessage) -> None:
        message.delivery_count += 1
        limit = self.settings.max_delivery_count
        if self.dead_letter_entity is not None and message.delivery_count >= limit:
            self._move_to_dead_letter(
                message,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {limit} delivery attempts.",
            )
        else:
            self.add(message)

    def _move_to_dead_letter(self, message: StoredMessage, reason: str | None, description: str | None) -> None:
        properties = {}
        if reason is not None:
            properties["DeadLetterReason"] = reason
        if description is not None:
            properties["DeadLetterErrorDescription"] = description
        message.content = message.content.with_application_properties(properties)
        message.deferred = False
        (self.dead_letter_entity or self).add(message)

    # -- scheduling and deferral ------------------------------------------------------

    def schedule(self, content: EncodedMessage, due: float, ttl_s: float | None = None) -> int:
        """Hold a message until ``due`` (epoch seconds); returns its sequence number."""
        sequence_number = self.store.next_sequence_number(self)
        self._scheduled[sequence_number] = StoredMessage(sequence_number, content, due, ttl_s=ttl_s)
        self.store.add_timer(due, self._promote, sequence_number)
        return sequence_number

    def cancel_scheduled(self, sequence_numbers: Iterable[int]) -> list[int]:
        """Drop scheduled messages; returns the sequence numbers that were not scheduled."""
        numbers = list(sequence_numbers)
        missing = [n for n in numbers if n not in self._scheduled]
        if not missing:
            for n in numbers:
                del self._scheduled[n]
        return missing

    def _promote(self, sequence_number: int) -> None:
        message = self._scheduled.pop(sequence_number, None)
        if message is not None:
            # As on Service Bus, activation enqueues the message anew, with a new sequence number.
            message.sequence_number = self.store.next_sequence_number(self)
            message.enqueued_at = self.store.clock()
            self.add(message)

    def has_deferred(self, sequence_number: int) -> bool:
        """Whether the message with this sequence number is deferred."""
        return sequence_number in self._deferred

    def take_deferred(self, sequence_number: int) -> StoredMessage | None:
        """Remove and return a deferred message, or None."""
        message = self._deferred.pop(sequence_number, None)
        if message is not None:
            self.counters["deliveries"] += 1
        return message

    # -- browsing, maintenance ------------------------------------------------------

    def peek(self, from_sequence_number: int, count: int) -> list[tuple[StoredMessage, int]]:
        """Up to ``count`` messages from ``from_sequence_number`` on, with their x-opt-message-state."""
        candidates = [(m, _STATE_ACTIVE) for _, m in self._available]
        candidates += [(lock.message, _STATE_ACTIVE) for lock in self._locks.values()]
        candidates += [(m, _STATE_DEFERRED) for m in self._deferred.values()]
        candidates += [(m, _STATE_SCHEDULED) for m in self._scheduled.values()]
        candidates = [c for c in candidates if c[0].sequence_number >= from_sequence_number]
        candidates.sort(key=lambda c: c[0].sequence_number)
        return candidates[:count]

    def purge(self) -> None:
        """Drop every message and lock and reset the counters."""
        for lock in self._locks.values():
            lock.active = False
        for _, message in self._available:
            message.queued = False
        self._available.clear()
        self._locks.clear()
        self._scheduled.clear()
        self._deferred.clear()
        self.counters = dict.fromkeys(self.counters, 0)

    @property
    def size(self) -> int:
        """Messages held, in any state except scheduled."""
        return len(self._available) + len(self._locks) + len(self._deferred)

    def stats(self) -> dict[str, int]:
        """Counts for :meth:`MessageStore.stats`."""
        return {
            "active": len(self._available),
            "locked": len(self._locks),
            "deadLettered": self.dead_letter_entity.size if self.dead_letter_entity else 0,
            "scheduled": len(self._scheduled),
            **self.counters,
        }


class Queue(Entity):
    """A queue, owning the sequence numbers shared with its dead-letter sub-queue, and its duplicate detection."""

    def __init__(self, store: "MessageStore", settings: QueueSettings) -> None:
        name = settings.name.lower()
        super().__init__(store, name, Entity(store, name + DEAD_LETTER_SUFFIX, None, settings), settings)
        self.last_sequence_number = 0
        self._seen: dict[str, float] = {}  # MessageId -> when a message with it was accepted

    def is_duplicate(self, content: EncodedMessage, now: float) -> bool:
        """Whether a message with this MessageId was accepted within the duplicate-detection window (if the queue
        detects duplicates); a message that is not a duplicate is logged in the history."""
        window = self.settings.duplicate_detection_window_s
        message_id = content.message_id
        if window is None or message_id is None:
            return False
        seen = self._seen.get(message_id)
        if seen is not None and now - seen < window:
            return True
        self._seen[message_id] = now
        if len(self._seen) > 4096:  # forget what left the window
            self._seen = {k: t for k, t in self._seen.items() if now - t < window}
        return False

    def purge(self) -> None:
        """Drop every message and lock, the duplicate-detection history, and reset the counters."""
        super().purge()
        self._seen.clear()


class MessageStore:
    """All queues of the namespace, plus the timers that drive lock expiry and scheduling."""

    def __init__(self, queues: Iterable[QueueSettings] = (), clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.faults: dict[str, bool] = {}
        self.queues: dict[str, Queue] = {}
        self._timers: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._timer_ids = itertools.count()
        self._available: set[Entity] = set()
        for settings in queues:
            self.declare(settings)

    def declare(self, settings: QueueSettings) -> Queue:
        """Create the queue ``settings`` describes (as a deployment does); an existing one keeps its messages."""
        key = settings.name.strip("/").lower()
        if not key or "$" in key or "/" in key:  # topics/subscriptions are not supported
            raise ValueError(f"not a queue name: {settings.name!r}")
        if key not in self.queues:
            self.queues[key] = Queue(self, replace(settings, name=key))
        return self.queues[key]

    def queue(self, name: str) -> Queue:
        """The declared queue called ``name`` (case-insensitive); raises KeyError for any other name (Service Bus
        answers amqp:not-found: it creates no entity on first use)."""
        key = name.strip("/").lower()
        if key not in self.queues:
            raise KeyError(f"the messaging entity {name!r} could not be found")
        return self.queues[key]

    def entity(self, path: str) -> Entity:
        """The entity at ``path``: ``<queue>`` or ``<queue>/$DeadLetterQueue``."""
        key = path.strip("/").lower()
        if key.endswith(DEAD_LETTER_SUFFIX):
            queue = self.queue(key[: -len(DEAD_LETTER_SUFFIX)])
            assert queue.dead_letter_entity is not None
            return queue.dead_letter_entity
        return self.queue(key)

    def next_sequence_number(self, entity: Entity) -> int:
        """Allocate a sequence number in the queue that ``entity`` belongs to."""
        queue = self.entity(entity.path.removesuffix(DEAD_LETTER_SUFFIX))
        assert isinstance(queue, Queue)
        queue.last_sequence_number += 1
        return queue.last_sequence_number

    def enqueue(self, entity: Entity, content: EncodedMessage) -> int:
        """Accept a sent message (scheduled if it carries a future enqueue time); returns its sequence number.

        A message whose MessageId the queue accepted within its duplicate-detection window is accepted and dropped,
        scheduled ones included (learn.microsoft.com/azure/service-bus-messaging/duplicate-detection); it still gets
        a sequence number, which names nothing.
        """
        entity.counters["sent"] += 1
        now = self.clock()
        if isinstance(entity, Queue) and entity.is_duplicate(content, now):
            entity.counters["duplicates"] += 1
            return self.next_sequence_number(entity)
        ttl_s = _effective_ttl(content, entity.settings)
        scheduled_ms = content.scheduled_enqueue_time_ms
        if scheduled_ms is not None and scheduled_ms / 1000 > now:
            return entity.schedule(content, scheduled_ms / 1000, ttl_s)
        message = StoredMessage(self.next_sequence_number(entity), content, now, ttl_s=ttl_s)
        entity.add(message)
        return message.sequence_number

    # -- timers and availability ----------------------------------------------------

    def add_timer(self, deadline: float, callback: Callable[[Any], None], argument: Any) -> None:
        """Call ``callback(argument)`` from :meth:`run_timers` once ``deadline`` has passed."""
        heapq.heappush(self._timers, (deadline, next(self._timer_ids), callback, argument))

    def next_deadline(self) -> float | None:
        """The earliest pending timer deadline (epoch seconds), or None."""
        return self._timers[0][0] if self._timers else None

    def run_timers(self) -> None:
        """Fire every timer that is due."""
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback, argument = heapq.heappop(self._timers)
            callback(argument)

    def mark_available(self, entity: Entity) -> None:
        """Note that ``entity`` has messages for receivers (see :meth:`take_available`)."""
        self._available.add(entity)

    def take_available(self) -> set[Entity]:
        """Entities that gained available messages since the last call."""
        entities, self._available = self._available, set()
        return entities

    # -- administration -------------------------------------------------------------

    def set_faults(self, **faults: bool) -> None:
        """Replace the active fault injections; no arguments clears them."""
        unknown = set(faults) - KNOWN_FAULTS
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.faults = {name: bool(on) for name, on in faults.items() if on}

    def purge(self, queue: str | None = None) -> None:
        """Drop all messages (active, locked, deferred, scheduled, dead-lettered) and reset counters."""
        queues = [self.queue(queue)] if queue is not None else list(self.queues.values())
        for q in queues:
            q.purge()
            assert q.dead_letter_entity is not None
            q.dead_letter_entity.purge()

    def stats(self) -> dict[str, Any]:
        """``{"queues": {name: {"active", "locked", "deadLettered", "scheduled", "sent", ...}}}``."""
        return {"queues": {name: q.stats() for name, q in sorted(self.queues.items())}}


def _effective_ttl(content: EncodedMessage, settings: QueueSettings) -> float | None:
    """The sender's time to live, capped by the queue's default (learn.microsoft.com/azure/service-bus-messaging/
    message-expiration)."""
    ttl_ms = content.ttl_ms
    ttls = [t for t in (ttl_ms / 1000 if ttl_ms else None, settings.default_ttl_s) if t is not None]
    return min(ttls) if ttls else None
