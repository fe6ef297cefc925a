"""Which links from Microsoft Graph (``@odata.nextLink``, ``@odata.deltaLink``) the app follows.

A link is sent with the tenant's Graph token, and what it answers is ingested: a link to another host, or to another
port of Graph's host, would receive the token; one to another Graph path would be read as members. So a link must
have the configured Graph origin (scheme, host and port) and stay under the path the request was for. ``https``
only, except when the configured Graph itself is ``http`` on a loopback address (the local fake Graph).
"""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORTS = {"https": 443, "http": 80}


def is_graph_link(link: object, base_url: str, under: str) -> bool:
    """Whether ``link`` may be followed: the origin of ``base_url``, https, and a path at or below ``base_url``'s path
    plus ``under`` (e.g. ``/groups/<id>/transitiveMembers``), compared case-insensitively as Graph does."""
    if not isinstance(link, str) or len(link) > 8192 or any(ord(c) < 33 or c == "\\" for c in link):
        return False
    try:
        want, got = urlsplit(base_url), urlsplit(link)
        want_port = want.port or DEFAULT_PORTS.get(want.scheme)
        got_port = got.port or DEFAULT_PORTS.get(got.scheme)
    except ValueError:  # a port that is not a number or out of range
        return False
    secure = want.scheme == "https" or (want.scheme == "http" and want.hostname in LOOPBACK)
    if not secure or got.scheme != want.scheme or got.username is not None or got.password is not None:
        return False
    if (got.hostname or "").lower() != (want.hostname or "").lower() or got_port != want_port:
        return False
    path = unquote(got.path)
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    prefix = (want.path.rstrip("/") + "/" + under.strip("/")).lower()
    return path.lower() == prefix or path.lower().startswith(prefix + "/")
