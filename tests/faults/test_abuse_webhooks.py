"""Webhook URLs an attacker would use to make the app call inside its own network (SSRF), with loopback not allowed
(as in Azure): refused at creation, and a name that resolves to loopback is never contacted at send time."""
import socket

import pytest

from local.webhook_receiver import WebhookReceiver
from tests.faults import figures
from tests.faults.abuse import assert_error

pytestmark = pytest.mark.faults

HOSTILE = [
    "http://127.0.0.1:{port}/hooks", "https://127.0.0.1:{port}/hooks", "https://localhost:{port}/hooks",
    "https://LOCALHOST./hooks", "https://api.localhost/hooks", "https://[::1]/hooks", "https://[::ffff:7f00:1]/hooks",
    "https://169.254.169.254/metadata/instance", "https://[fd00:ec2::254]/latest", "https://168.63.129.16/machine",
    "https://10.0.0.4/hooks", "https://192.168.0.1/hooks", "https://172.31.255.255/hooks", "https://100.100.100.200/x",
    "https://0.0.0.0/hooks", "https://0/hooks", "https://2130706433/hooks", "https://0x7f.0.0.1/hooks",
    "https://user@portal.example.com/hooks", "https://portal.example.com:0/hooks", "http://portal.example.com/hooks",
    "https://{host}:{port}/hooks",  # this machine's own name: resolves to 127.0.0.1
    "file:///etc/passwd", "gopher://127.0.0.1:25/", "https://portal.example.com/\r\nX-Injected: 1",
]


def test_hostile_webhook_urls_are_refused_when_loopback_is_not_allowed(devhost, portal):
    receiver = WebhookReceiver().start()
    try:
        port = receiver.url.rsplit(":", 1)[1].split("/")[0]
        tried = 0
        for template in HOSTILE:
            url = template.format(port=port, host=socket.gethostname())
            response = portal.http.post(portal.api + "/webhooks", json={"url": url},
                                        headers={"Authorization": f"Bearer {portal.token}"})
            tried += 1
            assert_error(response, 400, "invalid_webhook_url")
        assert portal.call("GET", "/webhooks") == {"webhooks": []} and receiver.deliveries == []
        figures.tried("hostile webhook URLs (SSRF)", tried)
    finally:
        receiver.stop()
