"""HTTP out to the portal's webhook endpoints (aiohttp), connecting only to addresses the use case vetted.

The host name is resolved here, every address is vetted, and the connection goes to the vetted addresses only (a
resolver that answers with them): a name that resolves to 169.254.169.254 or 127.0.0.1 at send time is refused,
and a second resolution between the check and the connection cannot swap the address (DNS rebinding). TLS still
verifies the certificate against the host name. Redirects are not followed.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from ..errors import DeliveryFailed
from ..ports import WebhookSender

MAX_ANSWER = 64 * 1024


class _Vetted(AbstractResolver):
    """Answers with the addresses already resolved and vetted, never asks DNS again."""

    def __init__(self, infos: list[dict[str, Any]]) -> None:
        self._infos = infos

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{**i, "hostname": host, "port": port} for i in self._infos]

    async def close(self) -> None:
        return None


class HttpWebhookSender(WebhookSender):
    async def addresses(self, host: str) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            return []
        return sorted({i[4][0] for i in infos})

    async def post(self, url: str, headers: dict[str, str], body: bytes, *, allowed: Callable[[str], bool],
                   timeout_s: float) -> int:
        host = (urlsplit(url).hostname or "").rstrip(".")
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout_s)
        except (socket.gaierror, UnicodeError, OSError, asyncio.TimeoutError) as exc:
            raise DeliveryFailed(f"the host did not resolve ({type(exc).__name__})") from None
        addresses = sorted({i[4][0] for i in infos})
        if not addresses or not all(allowed(a) for a in addresses):
            raise DeliveryFailed("the host resolves to an address a webhook may not reach")
        vetted = [{"host": i[4][0], "family": i[0], "proto": 0, "flags": socket.AI_NUMERICHOST} for i in infos]
        connector = aiohttp.TCPConnector(resolver=_Vetted(vetted), use_dns_cache=False, force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                             trust_env=False) as session:
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                    await response.content.read(MAX_ANSWER)
                    return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"the endpoint did not answer ({type(exc).__name__})") from None

    async def close(self) -> None:
        return None
