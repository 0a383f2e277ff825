"""The pooled connection to Ollama: one aiohttp session for the life of the app."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

import aiohttp
from yarl import URL

# Headers aiohttp would invent when the client sent none; the client's request must reach
# Ollama as the client wrote it.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class Upstream:
    """Where Ollama lives and the keep-alive pool that reaches it.

    The session must be created inside a running event loop, so ``open()`` is called from the
    app's lifespan and ``close()`` on shutdown.
    """

    def __init__(self, base_url: str, *, connect_timeout: float, max_connections: int) -> None:
        parts = urlsplit(base_url)
        self.host_header = parts.netloc.rpartition("@")[2]
        # Requests, logs, errors and /test use the URL without the credentials it may carry;
        # those travel as an Authorization header instead (e.g. an auth proxy before Ollama).
        self.public_url = base_url.replace(parts.netloc, self.host_header, 1)
        self.authorization: str | None = None
        if parts.username is not None:
            user = unquote(parts.username)
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.authorization = "Basic " + token
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.open() was not called")
        return self._session

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=60,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            # No read timeout: a cold model load can take minutes before the first byte.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout, sock_read=None
            ),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, raw_path: bytes, query_string: bytes) -> URL:
        """The upstream URL for a client's request target, kept exactly as the client sent it."""
        target = raw_path.decode("latin-1")
        if query_string:
            target += "?" + query_string.decode("latin-1")
        # encoded=True: yarl must not normalise or re-quote what the client sent.
        return URL(self.public_url + target, encoded=True)
