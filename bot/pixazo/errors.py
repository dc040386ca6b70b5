"""Typed errors raised by the Pixazo client.

Every error derives from :class:`PixazoError`. Each carries a short, user-safe
``message``; none of them ever contains the API key.
"""

from __future__ import annotations


class PixazoError(Exception):
    """Root of every error the Pixazo client raises."""

    #: whether trying the same call again later may succeed
    transient: bool = False
    #: whether the gateway provably did not take the request (nothing was, or could have
    #: been, charged): only such a paid submit may be sent again
    not_taken: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidRequest(PixazoError):
    """The request was rejected locally, before anything was sent."""

    not_taken = True


class BadRequest(PixazoError):
    """The gateway answered 400; ``message`` is the gateway's explanation."""


class Unauthorized(PixazoError):
    """The gateway answered 401 or 403: the API key is missing, wrong or not allowed."""


class InsufficientBalance(PixazoError):
    """The gateway answered 402: the Pixazo wallet is empty."""


class RateLimited(PixazoError):
    """The gateway answered 429. ``retry_after`` is in seconds when the gateway said."""

    transient = True
    not_taken = True  # the gateway turned the request away

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class ServerError(PixazoError):
    """The gateway answered 5xx."""

    transient = True


class NotFound(PixazoError):
    """The gateway does not know the request id (404)."""


class UnexpectedResponse(PixazoError):
    """The gateway answered something the API reference does not describe."""


class JobFailed(PixazoError):
    """The job ended FAILED or ERROR; ``error`` is the gateway's text (raised by the runner
    when a status says so)."""

    def __init__(self, job_status: str, error: str | None, *, request_id: str) -> None:
        text = error or "no reason given"
        super().__init__(f"job {job_status}: {text}")
        self.job_status = job_status
        self.error = error
        self.request_id = request_id


class PixazoTimeout(PixazoError):
    """A call took longer than allowed (a submit that timed out may have been taken)."""

    transient = True


class ConnectionFailed(PixazoError):
    """The gateway could not be reached.

    ``sent`` tells whether the request may have reached the gateway: when it is
    False, the connection failed before any byte of the request was sent.
    """

    transient = True

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent
        self.not_taken = not sent


class DownloadRejected(PixazoError):
    """A media download was refused: wrong origin, wrong type or too large."""
