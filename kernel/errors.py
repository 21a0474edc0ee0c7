"""One error hierarchy for the kernel and its plugins.

Every error a client can cause carries its HTTP status code, so a single exception
handler per error shape turns it into a response. Startup problems are `StartupError`,
which the CLI prints as one line and turns into a non-zero exit status.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base of every error the kernel raises on purpose; `status_code` is its HTTP status."""

    status_code: int = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(KernelError):
    """The request is malformed or does not match what the model or route expects."""

    status_code = 400


class Unauthorized(KernelError):
    """Missing, malformed, forged or expired credentials."""

    status_code = 401


class Forbidden(KernelError):
    """Valid credentials without the scope the route needs."""

    status_code = 403


class NotFound(KernelError):
    status_code = 404


class Conflict(KernelError):
    """A name means two things (for example a plain model name offered by two sources)."""

    status_code = 409


class PayloadTooLarge(KernelError):
    status_code = 413


class Unavailable(KernelError):
    """The server cannot take this request now; `retry_after` seconds is a hint for clients."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ModelError(KernelError):
    """A model failed to load or run for a reason that is not the client's."""

    status_code = 500


class StartupError(KernelError):
    """The server cannot start: a bad option, config value, plugin or secret.

    The message is meant to be read by a person at a terminal: it names what is wrong
    (the plugin, entry point, file, variable or option) and, where it can, how to fix it.
    `exit_code` is 2 for usage errors (unknown plugin or option), 1 otherwise.
    """

    def __init__(self, detail: str, *, exit_code: int = 1) -> None:
        super().__init__(detail)
        self.exit_code = exit_code
