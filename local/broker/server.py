"""The AMQP 1.0 server: a socket event loop driving proton's protocol engine.

One daemon thread owns every socket, every proton object and the
:class:`~local.broker.store.MessageStore`. Other threads reach the store only
through :meth:`LocalServiceBus._call`, which queues a function for the loop
thread and wakes it through a socket pair. The loop sleeps in ``select`` until
a socket is ready, a command arrives, or the next lock expiry / scheduled
enqueue / AMQP heartbeat is due, so an idle broker uses no CPU.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from proton import (
    Collector,
    Condition,
    Connection,
    Delivery,
    Disposition,
    Endpoint,
    Event,
    Link,
    Message,
    Terminus,
    Transport,
    int32,
    symbol,
)

from .codec import MessageFormatError, plain, unpack_transfer
from .frames import IncomingFrames
from .management import ABANDONED, COMPLETED, DEFERRED, LOCK_LOST, Management
from .queues import QueueSettings, as_settings, declared_queues
from .store import Entity, Lock, LockLost, MessageStore

_log = logging.getLogger("local.broker")

CONTAINER_ID = "local-servicebus"
MAX_MESSAGE_SIZE = 1024 * 1024  # management and $cbs links (requests carry whole messages to schedule)
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
INCOMING_CREDIT = 200  # credit kept open on links the clients send on
DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
SESSION_FILTER = "com.microsoft:session-filter"
_READ_CHUNK = 64 * 1024
_OUTCOMES = (Disposition.ACCEPTED, Disposition.REJECTED, Disposition.RELEASED, Disposition.MODIFIED)


def _filters(terminus: Terminus) -> dict:
    """The filter map of a source terminus (empty when it has none)."""
    data = terminus.filter
    data.rewind()
    if not data.next():
        return {}
    value = plain(data.get_object())
    return value if isinstance(value, dict) else {}


def parse_node(address: str | None) -> tuple[str, str | None]:
    """Classify a link address as ``("cbs", None)``, ``("management", entity)`` or ``("entity", path)``.

    Clients send ``amqps://host:port/<queue>[/$DeadLetterQueue]`` for entities,
    ``<queue>/$management`` for management and ``$cbs`` for authentication.
    """
    if not address:
        raise ValueError("the link has no address")
    path = urlsplit(address).path if "://" in address else address
    path = path.strip("/")
    lowered = path.lower()
    if lowered == "$cbs":
        return "cbs", None
    if lowered.endswith("/$management"):
        return "management", path[: -len("/$management")]
    return "entity", path


@dataclass(eq=False)
class _LinkState:
    """What the broker knows about one attached link."""

    kind: str  # "cbs" | "management" | "entity"
    address: str
    conn: "_ClientConnection"
    entity: Entity | None = None
    deliveries: set = field(default_factory=set)  # unsettled peek-lock deliveries (consumer links)


class _ClientConnection:
    """One accepted socket with its proton transport, connection and event collector."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connection = Connection()
        self.collector = Collector()
        self.connection.collect(self.collector)
        self.transport = Transport(Transport.SERVER)
        self.transport.sasl().allowed_mechs("ANONYMOUS")
        self.transport.bind(self.connection)
        self.inbound = IncomingFrames()  # fixes the delivery-ids of transfers a client sent concurrently
        self.reply_links: dict[str, Link] = {}  # $cbs / $management response links, by address
        self.links: set[Link] = set()
        self.interest = selectors.EVENT_READ
        self.tick_deadline = 0.0

    def read(self) -> None:
        """Move bytes from the socket, through the frame filter, into the transport."""
        if not self.inbound.pending:
            capacity = self.transport.capacity()
            if capacity <= 0:
                return
            try:
                data = self.sock.recv(min(capacity, _READ_CHUNK))
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.transport.close_tail()
                return
            self.inbound.feed(data)
        self.push_input()

    def push_input(self) -> None:
        """Hand the transport the frames the filter has ready, as far as its capacity goes."""
        while self.inbound.pending:
            capacity = self.transport.capacity()
            if capacity < 0:  # the transport takes no more input
                self.inbound.take(self.inbound.pending)
                return
            if capacity == 0:
                return
            self.transport.push(self.inbound.take(capacity))

    @property
    def input_waiting(self) -> bool:
        """Whether filtered input waits for the transport to have room (the loop must not sleep)."""
        return bool(self.inbound.pending) and self.transport.capacity() > 0

    def write(self) -> None:
        """Move as many pending bytes as the socket takes from the transport."""
        while (pending := self.transport.pending()) > 0:
            try:
                sent = self.sock.send(self.transport.peek(pending))
            except BlockingIOError:
                return
            except OSError:
                self.transport.close_head()
                return
            self.transport.pop(sent)
            if sent < pending:
                return

    def wanted_interest(self) -> int:
        """The selector events this connection waits for now."""
        interest = 0
        if self.transport.capacity() > 0:
            interest |= selectors.EVENT_READ
        if self.transport.pending() > 0:
            interest |= selectors.EVENT_WRITE
        return interest

    @property
    def finished(self) -> bool:
        """Whether both directions of the transport are closed."""
        return self.transport.closed or (self.transport.capacity() < 0 and self.transport.pending() < 0)


class LocalServiceBus:
    """A local stand-in for an Azure Service Bus namespace (queues only), speaking AMQP 1.0.

    The real ``azure-servicebus`` client (sync and aio) connects with
    :attr:`connection_string`. Only the ``queues`` given exist (any other entity
    answers amqp:not-found, as Service Bus does); each is a name (a queue with
    ``lock_duration_s`` and ``max_delivery_count``, no expiry, no duplicate
    detection) or a :class:`~local.broker.queues.QueueSettings`.
    :meth:`declared` makes the queues the deployment declares (infra/queues.json).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        max_delivery_count: int = 10,
        lock_duration_s: float = 30.0,
        queues: Iterable[str | QueueSettings] = (),
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._store = MessageStore(as_settings(queues, lock_duration_s=lock_duration_s,
                                               max_delivery_count=max_delivery_count))
        self._management = Management(self._store, self._settle_through_management)
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._state_lock = threading.Lock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._connections: dict[socket.socket, _ClientConnection] = {}
        self._by_connection: dict[Connection, _ClientConnection] = {}
        self._links: dict[Link, _LinkState] = {}
        self._consumers: dict[Entity, list[Link]] = {}
        self._deliveries: dict[Delivery, Lock] = {}
        self._event_handlers: dict[Any, Callable[[Event], None]] = {
            Event.CONNECTION_REMOTE_OPEN: self._on_connection_remote_open,
            Event.CONNECTION_REMOTE_CLOSE: self._on_connection_remote_close,
            Event.SESSION_REMOTE_OPEN: self._on_session_remote_open,
            Event.SESSION_REMOTE_CLOSE: self._on_session_remote_close,
            Event.LINK_REMOTE_OPEN: self._on_link_remote_open,
            Event.LINK_REMOTE_CLOSE: self._on_link_remote_close,
            Event.LINK_REMOTE_DETACH: self._on_link_remote_close,
            Event.LINK_FLOW: self._on_link_flow,
            Event.DELIVERY: self._on_delivery,
        }

    @classmethod
    def declared(cls, names: dict[str, str] | None = None, *, lock_duration_s: float | None = None,
                 max_delivery_count: int | None = None, **kwargs: Any) -> "LocalServiceBus":
        """A namespace with the queues of infra/queues.json (``names``: app setting → another queue name; the
        overrides shorten the lock or the deliveries for tests)."""
        return cls(queues=declared_queues(names, lock_duration_s=lock_duration_s,
                                          max_delivery_count=max_delivery_count), **kwargs)

    def queue_settings(self) -> dict[str, QueueSettings]:
        """The declared queues' settings by name."""
        return {name: q.settings for name, q in self._store.queues.items()}

    # -- public API -------------------------------------------------------------------

    @property
    def connection_string(self) -> str:
        """The connection string for ``ServiceBusClient.from_connection_string`` (plain TCP, no TLS)."""
        if self.port is None:
            raise RuntimeError("the broker is not started")
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=local;"
            "SharedAccessKey=local;UseDevelopmentEmulator=true"
        )

    @property
    def running(self) -> bool:
        """Whether the event loop thread is serving connections."""
        return self._running

    def start(self) -> "LocalServiceBus":
        """Bind the listener and run the event loop in a daemon thread; returns once listening."""
        with self._state_lock:
            if self._running:
                raise RuntimeError("the broker is already running")
            listener = socket.create_server((self.host, self._requested_port), backlog=64)
            listener.setblocking(False)
            self._listener = listener
            self.port = listener.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(listener, selectors.EVENT_READ, "listener")
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._stopping = False
            self._running = True
            self._thread = threading.Thread(target=self._run, name=f"local-servicebus-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and all connections and join the loop thread. Idempotent."""
        with self._state_lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._wake()
        thread.join()
        self._thread = None

    def stats(self) -> dict[str, Any]:
        """Per-queue counts: ``{"queues": {name: {"active", "locked", "deadLettered", "scheduled",
        "sent", "completed", "abandoned", "deliveries"}}}``.

        ``completed`` includes receive-and-delete deliveries; deferred messages are in no count.
        Counters are reset by :meth:`purge`.
        """
        return self._call(self._store.stats)

    def set_faults(self, **faults: bool) -> None:
        """Switch fault injection on; with no arguments, clear it.

        ``duplicate_deliveries=True``: every completed message (that is not
        itself such a duplicate) is enqueued once more with the same content
        and message id, as an at-least-once broker may do.
        """
        self._call(self._store.set_faults, **faults)

    def purge(self, queue: str | None = None) -> None:
        """Drop all messages (active, locked, deferred, scheduled, dead-lettered) of one or all queues,
        and reset their counters."""
        self._call(self._store.purge, queue)

    def __enter__(self) -> "LocalServiceBus":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- cross-thread calls ---------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the loop thread (directly when the loop is not running) and return its result."""
        with self._state_lock:
            if not self._running or threading.current_thread() is self._thread:
                return fn(*args, **kwargs)
            future: Future = Future()
            self._commands.put((fn, args, kwargs, future))
            self._wake()
        return future.result()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe already guarantees a wake-up

    def _run_commands(self) -> None:
        while True:
            try:
                fn, args, kwargs, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # handed to the calling thread
                future.set_exception(error)

    # -- event loop -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._timeout()):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        if mask & selectors.EVENT_READ:
                            key.data.read()
                        if mask & selectors.EVENT_WRITE:
                            key.data.write()
                self._run_commands()
                self._store.run_timers()
                self._process()
                self._flush()
        except Exception:
            _log.exception("local Service Bus event loop crashed")
            raise
        finally:
            self._shutdown()

    def _timeout(self) -> float | None:
        deadlines = []
        store_deadline = self._store.next_deadline()
        if store_deadline is not None:
            deadlines.append(store_deadline - time.time())
        now = time.monotonic()
        if any(c.input_waiting for c in self._connections.values()):
            return 0.0
        deadlines += [c.tick_deadline - now for c in self._connections.values() if c.tick_deadline]
        return max(0.0, min(deadlines)) if deadlines else None

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _ClientConnection(sock)
            self._connections[sock] = conn
            self._by_connection[conn.connection] = conn
            self._selector.register(sock, conn.interest, conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _process(self) -> None:
        """Handle protocol events and hand available messages to consumers until nothing is left to do."""
        while True:
            busy = False
            for conn in list(self._connections.values()):
                conn.push_input()  # frames held back while the transport's input buffer was full
                busy |= self._dispatch_events(conn)
            available = self._store.take_available()
            for entity in available:
                self._pump(entity)
            if not busy and not available:
                return

    def _dispatch_events(self, conn: _ClientConnection) -> bool:
        handled = False
        while (event := conn.collector.peek()) is not None:
            handled = True
            handler = self._event_handlers.get(event.type)
            try:
                if handler is not None:
                    handler(event)
            except Exception:
                _log.exception("error handling %s; closing the connection", event.type)
                self._abort(conn, "amqp:internal-error", "The local broker failed to handle a frame.")
            conn.collector.pop()
        return handled

    def _flush(self) -> None:
        now = time.monotonic()
        for sock, conn in list(self._connections.items()):
            conn.tick_deadline = conn.transport.tick(now)
            conn.write()
            if conn.transport.capacity() < 0 and conn.transport.pending() == 0:
                conn.transport.close_head()  # the peer is gone and everything for it was written
            if conn.finished:
                self._close_socket(conn)
                continue
            interest = conn.wanted_interest()
            if interest != conn.interest:
                if interest:
                    self._selector.modify(sock, interest, conn)
                else:
                    # Neither readable (input buffer full) nor writable: the next loop pass frees capacity.
                    self._selector.modify(sock, selectors.EVENT_READ, conn)
                    interest = selectors.EVENT_READ
                conn.interest = interest

    def _abort(self, conn: _ClientConnection, condition: str, description: str) -> None:
        if conn.connection.state & Endpoint.LOCAL_ACTIVE:
            conn.connection.condition = Condition(condition, description)
            conn.connection.close()

    def _close_socket(self, conn: _ClientConnection) -> None:
        for link in list(conn.links):
            self._forget_link(link)
        self._selector.unregister(conn.sock)
        conn.sock.close()
        del self._connections[conn.sock]
        self._by_connection.pop(conn.connection, None)
        conn.transport.unbind()

    def _shutdown(self) -> None:
        with self._state_lock:  # from here on, _call runs functions directly, also under this lock
            self._running = False
            self._run_commands()  # callers that raced with stop() still get an answer
        for conn in list(self._connections.values()):
            self._abort(conn, "amqp:connection:forced", "The local broker is shutting down.")
            conn.write()  # best effort: let the client see the close
            self._close_socket(conn)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._consumers.clear()
        self._deliveries.clear()
        self._links.clear()

    # -- connection, session and link lifecycle -------------------------------------

    def _on_connection_remote_open(self, event: Event) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = CONTAINER_ID
            connection.open()

    def _on_connection_remote_close(self, event: Event) -> None:
        connection = event.connection
        conn = self._by_connection.get(connection)
        if conn is not None:
            for link in list(conn.links):
                self._forget_link(link)
        if connection.state & Endpoint.LOCAL_ACTIVE:
            connection.close()

    def _on_session_remote_open(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def _on_session_remote_close(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_ACTIVE:
            event.session.close()

    def _on_link_remote_open(self, event: Event) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        conn = self._by_connection[link.connection]
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = link.remote_source.address if link.is_sender else link.remote_target.address
        try:
            kind, path = parse_node(address)
            entity = self._store.entity(path) if path is not None else None
        except (KeyError, ValueError) as error:
            # Service Bus answers the attach without the terminus it refuses, then detaches with amqp:not-found.
            if link.is_receiver:
                link.target.type = Terminus.UNSPECIFIED
            else:
                link.source.type = Terminus.UNSPECIFIED
            self._refuse(link, "amqp:not-found", f"The messaging entity {address!r} could not be found ({error}).")
            return
        if link.is_sender and SESSION_FILTER in _filters(link.remote_source):
            self._refuse(link, "amqp:not-implemented", "The local Service Bus does not support sessions.")
            return
        state = _LinkState(kind, address, conn, entity)
        self._links[link] = state
        conn.links.add(link)
        if link.is_receiver:
            # Service Bus announces the entity's message size limit (Standard: 256 KB), which sizes the client's
            # batches and makes it refuse a larger message before sending it.
            link.max_message_size = entity.settings.max_message_bytes if kind == "entity" else MAX_MESSAGE_SIZE
            link.open()
            link.flow(INCOMING_CREDIT)
            return
        link.open()
        if kind == "entity":
            self._consumers.setdefault(entity, []).append(link)
            self._store.mark_available(entity)
        else:
            conn.reply_links[address] = link

    @staticmethod
    def _refuse(link: Link, condition: str, description: str) -> None:
        link.open()
        link.condition = Condition(condition, description)
        link.close()

    def _on_link_remote_close(self, event: Event) -> None:
        link = event.link
        self._forget_link(link)
        if link.state & Endpoint.LOCAL_ACTIVE:
            if event.type == Event.LINK_REMOTE_DETACH:
                link.detach()
            else:
                link.close()

    def _forget_link(self, link: Link) -> None:
        """Drop the broker's references to a link. Its peek-locks stay until they expire or are settled
        through the management node, as on Service Bus."""
        state = self._links.pop(link, None)
        if state is None:
            return
        state.conn.links.discard(link)
        if state.kind == "entity" and link.is_sender:
            consumers = self._consumers.get(state.entity, [])
            if link in consumers:
                consumers.remove(link)
        elif state.conn.reply_links.get(state.address) == link:
            del state.conn.reply_links[state.address]
        for delivery in state.deliveries:
            lock = self._deliveries.pop(delivery, None)
            if lock is not None:
                lock.delivery = None
        state.deliveries.clear()

    # -- sending to consumers -------------------------------------------------------

    def _on_link_flow(self, event: Event) -> None:
        state = self._links.get(event.link)
        if state is not None and state.kind == "entity" and event.link.is_sender:
            self._pump(state.entity)

    def _pump(self, entity: Entity) -> None:
        """Hand available messages to the entity's consumers, round robin, as far as their credit goes."""
        consumers = self._consumers.get(entity)
        if not consumers:
            return
        while entity.has_available:
            link = next((c for c in consumers if c.credit > 0), None)
            if link is None:
                break
            consumers.remove(link)
            consumers.append(link)
            self._deliver(link, entity)
        if not entity.has_available:
            for link in consumers:
                link.drained()  # answers a drain request with the unused credit; no-op otherwise

    def _deliver(self, link: Link, entity: Entity) -> None:
        message = entity.take()
        if link.snd_settle_mode == Link.SND_SETTLED:  # receive-and-delete
            entity.consume()
            delivery = link.delivery(uuid.uuid4().bytes_le)
            link.send(message.render())
            link.advance()
            delivery.settle()
            return
        lock = entity.lock(message)
        # The client reads the lock token back as UUID(bytes_le=delivery_tag).
        delivery = link.delivery(lock.token.bytes_le)
        link.send(message.render(lock))
        link.advance()
        lock.delivery = delivery
        self._deliveries[delivery] = lock
        self._links[link].deliveries.add(delivery)

    # -- deliveries -------------------------------------------------------------------

    def _on_delivery(self, event: Event) -> None:
        delivery = event.delivery
        if delivery.link.is_receiver:
            self._on_incoming(delivery)
        else:
            self._on_settlement(delivery)

    def _on_incoming(self, delivery: Delivery) -> None:
        if delivery.partial:
            return  # proton buffers the transfer until the last frame arrives
        link = delivery.link
        if delivery.aborted:
            delivery.settle()
            link.advance()
            return
        payload = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        state = self._links.get(link)
        try:
            if state is None:
                raise LookupError("transfer on an unknown link")
            if state.kind == "entity":
                limit = state.entity.settings.max_message_bytes
                if len(payload) > limit:
                    self._refuse_transfer(delivery, MESSAGE_SIZE_EXCEEDED, (
                        f"The received message (delivery-id:{delivery.tag!r}, size:{len(payload)} bytes) exceeds "
                        f"the limit ({limit} bytes) currently allowed on the link."))
                    return
                for content in unpack_transfer(payload):
                    self._store.enqueue(state.entity, content)
            else:
                request = Message()
                request.decode(payload)
                if state.kind == "cbs":
                    self._answer_cbs(state, request)
                else:
                    self._answer_management(state, request)
            delivery.update(Delivery.ACCEPTED)
        except (MessageFormatError, LookupError) as error:
            _log.warning("rejecting a transfer on %r: %s", state and state.address, error)
            delivery.local.condition = Condition("amqp:decode-error", str(error))
            delivery.update(Delivery.REJECTED)
        delivery.settle()
        if link.credit < INCOMING_CREDIT // 2:
            link.flow(INCOMING_CREDIT - link.credit)

    def _refuse_transfer(self, delivery: Delivery, condition: str, description: str) -> None:
        link = delivery.link
        # With the info map Service Bus sends (azure-servicebus reads the error's third field).
        delivery.local.condition = Condition(condition, description,
                                             {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})
        delivery.update(Delivery.REJECTED)
        delivery.settle()
        if link.credit < INCOMING_CREDIT // 2:
            link.flow(INCOMING_CREDIT - link.credit)

    def _on_settlement(self, delivery: Delivery) -> None:
        """A consumer settled (or set the outcome of) a peek-lock delivery."""
        outcome = delivery.remote_state
        if outcome not in _OUTCOMES and not delivery.settled:
            return  # nothing decided yet (e.g. a non-terminal "received" state)
        lock = self._deliveries.pop(delivery, None)
        if lock is None:  # its link was closed: the lock lives on until it expires
            delivery.settle()
            return
        state = self._links.get(delivery.link)
        if state is not None:
            state.deliveries.discard(delivery)
        lock.delivery = None
        remote = delivery.remote
        try:
            entity = lock.entity
            if outcome == Disposition.ACCEPTED:
                entity.complete(lock)
            elif outcome == Disposition.REJECTED:
                entity.dead_letter(lock, *self._dead_letter_details(remote.condition))
            elif outcome == Disposition.MODIFIED and remote.undeliverable:
                entity.defer(lock)
            elif outcome == Disposition.MODIFIED and remote.failed:
                entity.abandon(lock)
            else:  # released, modified without failure, or settled without an outcome
                entity.release(lock)
        except LockLost:
            if not delivery.settled:
                delivery.local.condition = Condition(LOCK_LOST, "The lock on the message expired or was lost.")
                delivery.update(Disposition.REJECTED)
            delivery.settle()
            return
        if not delivery.settled and outcome in _OUTCOMES:
            # rcv-settle-mode second: the client waits for the broker to settle with the same outcome.
            if outcome == Disposition.MODIFIED:
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
            delivery.update(outcome)
        delivery.settle()

    @staticmethod
    def _dead_letter_details(condition: Condition | None) -> tuple[str | None, str | None]:
        if condition is None or condition.name != DEAD_LETTER_CONDITION:
            return None, condition.description if condition else None
        info = plain(condition.info) or {}
        reason = info.get("DeadLetterReason")
        description = info.get("DeadLetterErrorDescription", condition.description)
        return (
            str(reason) if reason is not None else None,
            str(description) if description is not None else None,
        )

    def _settle_through_management(self, lock: Lock, status: str) -> None:
        """Settle the link delivery of a lock that was settled with update-disposition."""
        delivery = lock.delivery
        if delivery is None:
            return
        lock.delivery = None
        self._deliveries.pop(delivery, None)
        state = self._links.get(delivery.link)
        if state is not None:
            state.deliveries.discard(delivery)
        if status == COMPLETED:
            delivery.update(Disposition.ACCEPTED)
        elif status in (ABANDONED, DEFERRED):
            delivery.local.failed = True
            delivery.local.undeliverable = status == DEFERRED
            delivery.update(Disposition.MODIFIED)
        else:
            delivery.update(Disposition.REJECTED)
        delivery.settle()

    # -- $cbs and $management -------------------------------------------------------

    def _answer_cbs(self, state: _LinkState, request: Message) -> None:
        """Accept every token: the local namespace does not authenticate."""
        operation = (request.properties or {}).get("operation")
        ok = operation == "put-token"
        self._reply(state, request, Message(properties={
            "status-code": int32(200 if ok else 400),
            "status-description": "OK" if ok else f"Unsupported CBS operation {operation!r}.",
        }))

    def _answer_management(self, state: _LinkState, request: Message) -> None:
        operation = (request.properties or {}).get("operation")
        body = plain(request.body)
        response = self._management.handle(state.entity, operation, body if isinstance(body, dict) else {})
        properties: dict[str, Any] = {
            "statusCode": int32(response.status),
            "statusDescription": response.description,
        }
        if response.condition:
            properties["errorCondition"] = symbol(response.condition)
        self._reply(state, request, Message(body=response.value, properties=properties))

    def _reply(self, state: _LinkState, request: Message, response: Message) -> None:
        response.correlation_id = request.id
        address = request.reply_to or state.address
        link = state.conn.reply_links.get(address)
        if link is None:  # tolerate a reply-to spelled differently from the response link's address
            wanted = parse_node(address)
            link = next((l for a, l in state.conn.reply_links.items() if parse_node(a) == wanted), None)
        if link is None:
            _log.warning("no response link for %r; dropping the response", address)
            return
        delivery = link.delivery(uuid.uuid4().bytes)
        link.send(response.encode())
        link.advance()
        delivery.settle()
