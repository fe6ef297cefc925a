"""An asyncio server on a daemon thread of its own: the lifecycle the local stand-ins share."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable


class ServerThread:
    """Subclasses implement ``_serve`` (bind, set ``self.port``) and ``_close``; start() returns once listening."""

    thread_name = "local-server"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Close the server's own resources; pending tasks are cancelled afterwards."""

    def start(self, timeout: float = 30.0) -> Any:
        """Start listening on the thread's loop; returns self once the port is bound (or raises why not)."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to the thread calling start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self._thread.join(timeout=5)
            self._thread = self._loop = None
            raise failure[0] if failure else RuntimeError(f"{type(self).__name__} did not start within {timeout:.0f}s")
        return self

    async def _shutdown(self) -> None:
        await self._close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()

    def stop(self) -> None:
        """Stop the server and its thread, releasing the port."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._thread = self._loop = None
        self.port = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the server's loop thread (where its state lives) and return its result."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn(*args)

        async def invoke() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout=60)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
