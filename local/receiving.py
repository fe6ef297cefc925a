"""The receive loop of a Service Bus queue trigger, shared by the local function host and the benchmark's workers.

Like the Functions host with ``maxConcurrentCalls``: at most ``limit`` messages are in hand at once, each delivered
by its own task, and a new receive asks for as many messages as there are free slots.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


async def receive_into(receiver: Any, slots: asyncio.Semaphore, limit: int, stopping: asyncio.Event,
                       deliver: Callable[[Any], Awaitable[None]], running: set[asyncio.Task]) -> None:
    """Receive until ``stopping`` is set; ``deliver(message)`` runs as a task and must release one slot when done.

    On return the deliveries still running have had up to 30 seconds to settle; an exception from the receiver
    (its connection was lost) is raised after giving back the slots it held, for the caller to reconnect.
    """
    while not stopping.is_set():
        await slots.acquire()
        free = 1
        while free < limit and not slots.locked():
            await slots.acquire()  # a free slot: returns at once
            free += 1
        try:
            messages = await receiver.receive_messages(max_message_count=free, max_wait_time=1)
        except BaseException:
            for _ in range(free):
                slots.release()
            raise
        for _ in range(free - len(messages)):
            slots.release()
        for message in messages:
            task = asyncio.create_task(deliver(message))
            running.add(task)
            task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(set(running), timeout=30)
