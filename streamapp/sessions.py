"""The standalone app's cookie sessions: Flask's own, with the signer made once per key.

Flask builds a new signing serializer for every request, whether or not it
carries a session cookie; itsdangerous checks the serializer by encoding a
test value each time. On the stream and append paths that was a measurable
share of a request's time (issue 10). The cookie, its signature and its
rules are exactly Flask's; a changed ``SECRET_KEY`` or fallback list makes a
new signer.

Most requests are API calls and stream connects with a bearer token and no
cookie at all. Their session is empty from start to end, and Flask still
parsed the missing cookie, read seven cookie settings and re-parsed the
``Vary`` header to learn that: a fifth of the worker's Flask overhead in a
profile under the append load (issue 10). Those requests take a shorter way to the same
result.
"""

from __future__ import annotations

import typing as t

from flask.sessions import SecureCookieSessionInterface

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask import Response
    from flask.sessions import SecureCookieSession
    from flask.sessions import SessionMixin
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

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()  # what Flask makes for a request without our cookie
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if session or session.modified:
            super().save_session(app, session, response)
        elif session.accessed:
            # As Flask does: the answer depended on the (missing) cookie.
            if "Vary" in response.headers:
                response.vary.add("Cookie")
            else:
                response.headers["Vary"] = "Cookie"
