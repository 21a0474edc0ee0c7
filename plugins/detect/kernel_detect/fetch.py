"""Fetching frames by URL (/infer URL mode, /detect_urls).

The server fetches whatever URL a client names, so: only http and https, of at most
`MAX_URL` characters, an optional allow-list, a whole-fetch deadline, a size cap, a bounded
number of redirects (each hop checked again), and no credentials in messages or logs
(`redact`). Errors are `FetchError`s whose text is safe to show a client.

The allow-list is matched against the URL as httpx parses it, the host and port it will
connect to, never against the URL's text: `http://allowed:80@elsewhere/` starts with an
allowed prefix but goes to `elsewhere`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kernel import StartupError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("kernel.detect")

_SECRET_KEYS = re.compile(r"(token|auth|pass|pwd|secret|key|user|credential|session)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longer URLs are refused (servers commonly allow 8 kB), so none fills a log or a cache key.
MAX_URL = 8192


class FetchError(Exception):
    """A frame could not be fetched; the message names no URL and no credential."""


def redact(url: str) -> str:
    """`url` with user info and the values of credential-like query keys hidden."""
    if len(url) > MAX_URL:
        return f"<a URL of {len(url)} characters>"  # refused by `check`: not worth a log's space
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


class Allowed(NamedTuple):
    """One allow-list entry: a host, a host:port, or a URL prefix (scheme, host, port and
    leading path segments). None and "" match anything."""

    host: str
    port: int | None = None
    scheme: str | None = None
    path: str = ""

    @classmethod
    def parse(cls, entry: str) -> Allowed:
        """`zm.example.com`, `zm.example.com:8080`, `[::1]:8080` or `https://zm.example.com/zm/`."""
        is_url = "://" in entry
        try:
            parts = urlsplit(entry if is_url else "//" + entry)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if (parts is None or not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment
                or (is_url and parts.scheme not in _DEFAULT_PORTS) or (not is_url and parts.path)):
            raise StartupError(f"--detect-fetch-allow: {entry!r} is not a host, host:port or http(s) URL prefix")
        if not is_url:
            return cls(parts.hostname, port)
        return cls(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], parts.scheme, parts.path.rstrip("/"))

    def mismatch(self, url: httpx.URL) -> str | None:
        """The first part of `url` (one of `PARTS`) that this entry refuses; None: admitted."""
        if url.host != self.host:
            return "host"
        if self.scheme is not None and url.scheme != self.scheme:
            return "scheme"
        if self.port is not None and (url.port or _DEFAULT_PORTS[url.scheme]) != self.port:
            return "port"
        # Whole segments: `/zm` admits `/zm/index.php`, not `/zmadmin`.
        if self.path and url.path != self.path and not url.path.startswith(self.path + "/"):
            return "path"
        return None


#: The parts of a URL an allow-list entry compares, in the order it compares them.
PARTS = ("host", "scheme", "port", "path")


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
        self.allow = [Allowed.parse(a.strip()) for a in allow if a.strip()]
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

    def check(self, url: str | httpx.URL) -> httpx.URL:
        """`url` as the client will fetch it; refused when not http(s) or not on the allow-list."""
        import httpx

        if len(str(url)) > MAX_URL:
            raise FetchError(f"the URL is longer than {MAX_URL} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise FetchError("the URL is not valid") from None
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise FetchError("only http and https URLs are fetched")
        if self.allow:
            misses = [entry.mismatch(parsed) for entry in self.allow]
            if None not in misses:
                # Named by the entry that came closest: the part to change to be admitted.
                part = max(misses, key=PARTS.index)
                if part == "host":
                    raise FetchError("the URL's host is not on the fetch allow-list")
                raise FetchError(f"the URL's {part} does not match the fetch allow-list entries for its host")
        return parsed

    async def fetch(self, url: str, verify: bool = True) -> bytes:
        """The body of `url`, following at most `max_redirects` redirects."""
        import httpx

        if not self._clients:
            raise FetchError("the fetcher is not running")
        client = self._clients[verify]
        try:
            async with asyncio.timeout(self.timeout):
                target = self.check(url)
                for _ in range(self.max_redirects + 1):
                    async with client.stream("GET", target) as response:
                        if response.is_redirect and "location" in response.headers:
                            target = self.check(target.join(response.headers["location"]))
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
