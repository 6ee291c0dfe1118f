"""What can go wrong when placing or looking up a call, as one small tree (exotel-protocol.md §7.4).

The split that matters to a caller is whether the call was placed::

    DialerError
    ├── ValidationError            bad input, caught before anything was sent (also a ConfigError)
    ├── InvalidCallback            a status callback body we cannot read
    └── ExotelApiError             Exotel's API answered with an error, or not at all
        ├── Unreachable            no connection was made: nothing was sent, nothing happened
        ├── RequestRejected        a 4xx: Exotel refused the request, no call was placed
        │   ├── BadRequest         400  missing or invalid parameter
        │   ├── PaymentRequired    402  plan limit or balance
        │   ├── AuthError          401  bad API key/token (or the wrong region)
        │   │   └── Forbidden      403  not allowed, e.g. Connect Voice AI not enabled on the account
        │   ├── NotFound           404  wrong account SID, path or region, or no such call
        │   ├── Conflict           409
        │   └── RateLimited        429  over 200 requests/min; ``retry_after`` seconds, when given
        ├── TemporaryFailure       a 5xx, timeout or unreadable answer to a read (safe to retry)
        └── OutcomeUnknown         the same for a dial: the call may or may not have been placed

``OutcomeUnknown`` is deliberately not a ``TemporaryFailure``: a dial must never be retried blindly, or
a customer gets called twice. Settle it first with ``Dialer.reconcile``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicebot.errors import ConfigError, VoicebotError

if TYPE_CHECKING:
    import datetime

    from voicebot.dialer.api import ConnectRequest

__all__ = [
    "AuthError",
    "BadRequest",
    "Conflict",
    "DialerError",
    "ExotelApiError",
    "Forbidden",
    "InvalidCallback",
    "NotFound",
    "OutcomeUnknown",
    "PaymentRequired",
    "RateLimited",
    "RequestRejected",
    "TemporaryFailure",
    "Unreachable",
    "ValidationError",
    "error_for_status",
]


class DialerError(VoicebotError):
    """Base class of the dialer's errors."""


class ValidationError(DialerError, ConfigError):
    """A dial parameter breaks one of Exotel's rules; nothing was sent.

    ``field`` is Exotel's parameter name (``From``, ``StreamUrl`` …) and ``rule`` says what it must be.
    """

    def __init__(self, field: str, rule: str, value: object = None) -> None:
        shown = "" if value is None else f", got {_preview(value)}"
        super().__init__(f"{field}: {rule}{shown}")
        self.field = field
        self.rule = rule


class InvalidCallback(DialerError, ValueError):
    """A status callback body that cannot be read as one (no CallSid, malformed JSON or multipart …)."""


class ExotelApiError(DialerError):
    """Exotel's API failed a request: ``status`` is the HTTP status (None when there was no answer),
    ``message`` Exotel's ``RestException.Message`` (or what went wrong), ``code`` its ``Code`` if any."""

    def __init__(
        self, message: str, *, status: int | None = None, code: int | None = None, body: str = ""
    ) -> None:
        prefix = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{prefix}{message}")
        self.status = status
        self.message = message
        self.code = code
        self.body = body
        """The start of the response body, for diagnosis."""


class Unreachable(ExotelApiError):
    """No connection could be made (DNS, refused, TLS, connect timeout): the request was never sent."""


class RequestRejected(ExotelApiError):
    """Exotel answered with a 4xx: the request was refused and nothing happened."""


class BadRequest(RequestRejected):
    """400: a parameter is missing or invalid."""


class AuthError(RequestRejected):
    """401: the API key or token is wrong (or the account is in the other region)."""


class Forbidden(AuthError):
    """403: the credentials may not do this (e.g. Connect Voice AI is not enabled on the account)."""


class PaymentRequired(RequestRejected):
    """402: a plan limit or an insufficient balance."""


class NotFound(RequestRejected):
    """404: wrong account SID, path or region, or no such call."""


class Conflict(RequestRejected):
    """409: the resource is in a conflicting state."""


class RateLimited(RequestRejected):
    """429: over Exotel's rate limit (200 requests/min per account). ``retry_after``: seconds to wait,
    from the ``Retry-After`` header, or None when Exotel gave none."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        code: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body)
        self.retry_after = retry_after


class TemporaryFailure(ExotelApiError):
    """A 5xx, a timeout or an unreadable answer to a request that changes nothing; safe to retry later."""


class OutcomeUnknown(ExotelApiError):
    """A dial request timed out, got a 5xx, or got a 200 we cannot read: the call may have been placed.

    Never retry blindly; ``Dialer.reconcile(error)`` asks Exotel what happened. ``call_sid`` is set when
    the answer carried one; ``request`` is what was sent and ``sent_at`` when (UTC).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        body: str = "",
        request: ConnectRequest | None = None,
        sent_at: datetime.datetime | None = None,
        call_sid: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body)
        self.request = request
        self.sent_at = sent_at
        self.call_sid = call_sid


_BY_STATUS: dict[int, type[RequestRejected]] = {
    400: BadRequest,
    401: AuthError,
    402: PaymentRequired,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


def error_for_status(status: int) -> type[ExotelApiError]:
    """The error class for an HTTP error status from a request that changes nothing (see the tree)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return RequestRejected
    return TemporaryFailure


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
