"""The dev host itself: READY on free ports, health, the app's functions served, a clean stop."""
import httpx
import psutil

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
