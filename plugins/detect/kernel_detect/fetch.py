"""Fetching frames by URL (/infer URL mode, /detect_urls).

The server fetches whatever URL a client names, so: only http and https, an optional
allow-list, a whole-fetch deadline, a size cap, a bounded number of redirects (each hop
checked again), and no credentials in messages or logs (`redact`). Errors are `FetchError`s
whose text is safe to show a client.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("kernel.detect")

_SECRET_KEYS = re.compile(r"(token|auth|pass|pwd|secret|key|user|credential|session)", re.IGNORECASE)


class FetchError(Exception):
    """A frame could not be fetched; the message names no URL and no credential."""


def redact(url: str) -> str:
    """`url` with user info and the values of credential-like query keys hidden."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        query = [(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))
    except ValueError:
        return "<unparsable url>"


def with_auth(url: str, zm_auth: str) -> str:
    """pyzm's way: append `zm_auth` (`token=...`) as a query string."""
    if not zm_auth:
        return url
    return f"{url}{'&' if '?' in url else '?'}{zm_auth}"


class _RedactURLs(logging.Filter):
    """httpx logs every request's full URL at INFO; hide the credentials in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(str(a)) if "://" in str(a) else a for a in record.args)
        return True


_redacting = _RedactURLs()


class Fetcher:
    def __init__(self, timeout: float, max_bytes: int, max_redirects: int, allow: list[str]) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.allow = [a.strip().lower() for a in allow if a.strip()]
        self._clients: dict[bool, httpx.AsyncClient] = {}

    async def start(self) -> None:
        import httpx

        for name in ("httpx", "httpcore"):
            logging.getLogger(name).addFilter(_redacting)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
        for verify in (True, False):
            self._clients[verify] = httpx.AsyncClient(
                verify=verify, follow_redirects=False, timeout=self.timeout, limits=limits, trust_env=False,
            )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def check(self, url: str) -> None:
        """Refuse a URL that is not http(s) or not on the allow-list."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            raise FetchError("the URL is not valid") from None
        if parts.scheme not in ("http", "https") or not host:
            raise FetchError("only http and https URLs are fetched")
        if self.allow and not any(self._allowed(entry, url, host, port) for entry in self.allow):
            raise FetchError("the URL's host is not on the fetch allow-list")

    @staticmethod
    def _allowed(entry: str, url: str, host: str, port: int | None) -> bool:
        if "://" in entry:
            return url.lower().startswith(entry)
        if ":" in entry:
            return entry == f"{host}:{port}"
        return entry == host

    async def fetch(self, url: str, verify: bool = True) -> bytes:
        """The body of `url`, following at most `max_redirects` redirects."""
        import httpx

        if not self._clients:
            raise FetchError("the fetcher is not running")
        client = self._clients[verify]
        try:
            async with asyncio.timeout(self.timeout):
                for _ in range(self.max_redirects + 1):
                    self.check(url)
                    async with client.stream("GET", url) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        if response.status_code >= 400:
                            raise FetchError(f"HTTP {response.status_code}")
                        return await self._read(response)
                raise FetchError(f"more than {self.max_redirects} redirects")
        except TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            # httpx messages can hold the URL, and with it zm_auth: name the kind only.
            raise FetchError(f"request failed ({type(exc).__name__})") from None

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"the frame is larger than {self.max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"the frame is larger than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
