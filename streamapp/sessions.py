"""The standalone app's cookie sessions: Flask's own, with the signer made once per key.

Flask builds a new signing serializer for every request, whether or not it
carries a session cookie; itsdangerous checks the serializer by encoding a
test value each time. On the stream and append paths that was a measurable
share of a request's time (issue 10). The cookie, its signature and its
rules are exactly Flask's; a changed ``SECRET_KEY`` or fallback list makes a
new signer.
"""

from __future__ import annotations

import typing as t

from flask.sessions import SecureCookieSessionInterface

if t.TYPE_CHECKING:
    from flask import Flask
    from itsdangerous import URLSafeTimedSerializer


class SignedCookieSessions(SecureCookieSessionInterface):
    """:class:`SecureCookieSessionInterface` whose serializer is kept while the keys stay the same."""

    def __init__(self) -> None:
        self._keys: tuple[t.Any, ...] | None = None
        self._serializer: URLSafeTimedSerializer | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, *(app.config["SECRET_KEY_FALLBACKS"] or ()))
        if keys != self._keys:
            self._serializer = super().get_signing_serializer(app)
            self._keys = keys
        return self._serializer
