"""Azurite's Table service as a child process on a free loopback port (in memory unless a folder is given)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEEDUPS = ROOT / "local" / "azurite_speedups.js"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def connection_string(host: str, port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"TableEndpoint=http://{host}:{port}/{ACCOUNT};")


def azurite_binary() -> str:
    """The azurite-table launcher installed by ``npm install`` (see package.json)."""
    local = ROOT / "node_modules" / ".bin" / "azurite-table"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-table")
    if found:
        return found
    raise RuntimeError("azurite-table not found: run `npm install` in the project root (make does it for you)")


class Azurite:
    """Starts and stops one Azurite Table service."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, location: str | None = None,
                 speedups: bool = True) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.location = location
        # Preload local/azurite_speedups.js so Azurite finds an entity by its key and pages a partition in RowKey
        # order, as Table Storage does (see that file). False runs stock Azurite, e.g. to measure what it changes.
        self.speedups = speedups
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The Azurite process (node), while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    def start(self, timeout: float = 30.0) -> "Azurite":
        args = [azurite_binary(), "--tableHost", self.host, "--tablePort", str(self.port),
                "--disableTelemetry", "--skipApiVersionCheck", "--silent", "--loose"]
        if self.location:
            args += ["--location", self.location]
        else:
            args += ["--inMemoryPersistence"]
        env = dict(os.environ)
        if self.speedups:
            env["NODE_OPTIONS"] = f'{env.get("NODE_OPTIONS", "")} --require "{SPEEDUPS}"'.strip()
        from .lifecycle import die_with_parent

        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True, cwd=str(ROOT), env=env, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"azurite exited with {self._proc.returncode}: {err[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"azurite did not listen on {self.host}:{self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
