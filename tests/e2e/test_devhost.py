"""The dev host itself: READY on free ports, health, the app's functions served, a clean stop."""
import signal

import httpx
import psutil
import pytest

from local.client import DevHostProcess


def test_dev_host_starts_serves_and_stops_leaving_nothing(tmp_path):
    host = DevHostProcess(outbox=str(tmp_path / "outbox")).start()
    try:
        ready = host.ready
        assert ready["api"].endswith("/api") and ready["graph"].endswith("/v1.0")
        assert ready["serviceBus"].startswith("Endpoint=sb://127.0.0.1:") and "UseDevelopmentEmulator=true" in ready["serviceBus"]
        assert "TableEndpoint=http://127.0.0.1:" in ready["tables"]
        health = httpx.get(ready["api"] + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert httpx.get(ready["api"] + "/users", timeout=10).status_code == 401
        assert httpx.get(ready["api"] + "/no/such/route", timeout=10).status_code == 404
        assert httpx.delete(ready["api"] + "/health", timeout=10).status_code == 405
        status = host.control("GET", "/status")
        children = psutil.Process(host.proc.pid).children(recursive=True)
        assert status["hostPid"] in {c.pid for c in children} and len(children) >= 2  # function host + Azurite
    finally:
        pid = host.proc.pid
        descendants = psutil.Process(pid).children(recursive=True)
        assert host.stop() == 0
    gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _port_open(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port)) == 0


def _gone(processes, timeout: float = 20) -> list:
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_every_child_ends_with_the_dev_host(sig, tmp_path):
    host = DevHostProcess(outbox=str(tmp_path), log=str(tmp_path / "devhost.log")).start()
    children = _descendants(host.proc.pid)
    assert len(children) >= 2  # the function host and Azurite at least
    ports = [host.ready["api"], host.ready["authority"], host.ready["control"]]
    assert all(_port_open(url) for url in ports)
    host.proc.send_signal(sig)
    host.proc.wait(timeout=30)
    # SIGKILL runs no handler: the children notice their parent died (PR_SET_PDEATHSIG) and end themselves.
    assert _gone(children) == [], [p.cmdline()[:3] for p in children if p.is_running()]
    assert not any(_port_open(url) for url in ports[:1])


def test_a_busy_port_stops_the_dev_host_at_once_naming_the_port(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "local", "--port", str(port), "--outbox", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 10
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"port {port} is in use: stop what listens there, or start with --port N (0: any free port)"]
