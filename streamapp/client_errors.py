"""What ``follow`` raises: one tree under :class:`FollowError` (SPEC §6).

The tree is drawn in :mod:`streamapp.client`'s docstring, and
``streamapp.client`` re-exports every class here. Standard library only.
"""

from __future__ import annotations


class FollowError(Exception):
    """Base of everything ``follow`` raises; ``last_id`` is the cursor to resume from."""

    def __init__(self, message: str, last_id: int | str | None = None) -> None:
        super().__init__(message)
        self.last_id = last_id


class StatusError(FollowError):
    """The server refused the stream with ``status``; retrying would get the same answer."""

    def __init__(self, status: int, code: str, message: str, last_id: int | str | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}", last_id)
        self.status, self.code, self.message = status, code, message


class BadRequestError(StatusError):
    """400: a bad cursor, filter or poll_ms, or a long-lived token in the URL."""


class AuthenticationError(StatusError):
    """401: no token, a wrong or revoked one, or an expired ticket."""


class ForbiddenError(StatusError):
    """403: authenticated, but not allowed."""


class NotFoundError(StatusError):
    """404: no such execution, or not visible to this token (SPEC §5 does not say which)."""


class UnavailableError(FollowError):
    """No stream for ``max_wait`` seconds of continuous failure; ``reason`` is the last one."""

    def __init__(self, reason: str, waited: float, last_id: int | str | None = None) -> None:
        super().__init__(f"no stream for {waited:.1f} s: {reason}", last_id)
        self.reason, self.waited = reason, waited


class ProtocolError(FollowError):
    """The answer is not the event stream of one execution."""


#: The refusals that have their own class; any other is a plain :class:`StatusError`.
BY_STATUS: dict[int, type[StatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
}
