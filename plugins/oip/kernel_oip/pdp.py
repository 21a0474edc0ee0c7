"""Asking a policy decision point whether a principal may act on a model.

Modelled on aiSSEMBLE's PDP: a POST of `{"jwt", "resource", "action"}` answered with the
decision `PERMIT` (plain text or a JSON string). Anything else, including no answer
within the timeout, is a denial.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kernel import Forbidden

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("kernel.oip.pdp")


class PolicyDecisionPoint:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self, token: str, resource: str, action: str) -> None:
        """Return when the PDP permits `action` on `resource`; `Forbidden` otherwise."""
        import httpx

        assert self._client is not None, "the policy decision point client is not started"
        body = {"jwt": token, "resource": resource, "action": action}
        try:
            # The whole exchange: httpx's own timeout bounds each read, not a trickled answer.
            async with asyncio.timeout(self.timeout):
                answer = await self._client.post(self.url, json=body)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("policy decision point unreachable (%s); denying %s on %s", type(exc).__name__, action, resource)
            raise Forbidden("the policy decision point could not be reached; access denied") from None
        decision = answer.text.strip().strip('"').upper() if answer.status_code == 200 else ""
        if decision != "PERMIT":
            log.info("policy decision point denied %s on %s (HTTP %d)", action, resource, answer.status_code)
            raise Forbidden(f"the policy decision point denied {action} on {resource!r}")
