"""
Who may see the management page, and which forms they may submit.  No I/O:
the token is given (read by the service from a token file only the guard's
user can read), the clock and the randomness are injected.

A browser signs in once with the token (the login form) and gets a session:
a random cookie the guard remembers for ``SESSION_SECONDS``, at most
``MAX_SESSIONS`` at once (the oldest is forgotten first).  A script sends the
token itself in ``Authorization: Bearer``.  Over TLS with a client CA,
OpenSSL has already refused every connection without a certificate from that
CA, so a request that arrives with one is authenticated by it.

Every form that changes something carries a CSRF token: an HMAC, under a
secret drawn when the guard starts, of the identity that is signed in (its
session, its certificate), so a token is good only for the browser it was
given to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

SESSION_COOKIE = b"guard_session"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 32
FAILED_SIGN_INS = 10  # wrong tokens accepted per FAILED_SIGN_IN_SECONDS, from everyone together
FAILED_SIGN_IN_SECONDS = 60.0


@dataclass(frozen=True)
class Visitor:
    """Someone signed in, and how: ``method`` is "bearer", "session" or "certificate"; ``identity`` what the CSRF
    token is bound to."""

    method: str
    identity: str


class Access:
    def __init__(self, token: str | None, clock, random_bytes=secrets.token_bytes):
        self._token = token.encode("utf-8") if token is not None else None
        self._clock = clock
        self._random_bytes = random_bytes
        self._csrf_secret = random_bytes(32)
        self._sessions: OrderedDict[str, float] = OrderedDict()  # session -> expiry (clock seconds)
        self._failures: list[float] = []  # when the last wrong tokens were offered at the sign-in form

    def sign_in(self, offered: bytes | str | None) -> str | None:
        """A new session if ``offered`` is the token; None if not, or while FAILED_SIGN_INS wrong tokens in the last
        FAILED_SIGN_IN_SECONDS hold the form shut (then not even the right token is tried)."""
        now = self._clock()
        self._failures = [when for when in self._failures if now - when < FAILED_SIGN_IN_SECONDS]
        if len(self._failures) >= FAILED_SIGN_INS:
            return None
        if not self.token_matches(offered):
            self._failures.append(now)
            return None
        return self.open_session()

    @property
    def sign_in_held(self) -> bool:
        """Whether too many wrong tokens were offered lately for the form to try another."""
        now = self._clock()
        return sum(1 for when in self._failures if now - when < FAILED_SIGN_IN_SECONDS) >= FAILED_SIGN_INS

    @property
    def takes_tokens(self) -> bool:
        return self._token is not None

    def token_matches(self, offered: bytes | str | None) -> bool:
        """Whether ``offered`` is the token (compared in constant time)."""
        if self._token is None or offered is None:
            return False
        if isinstance(offered, str):
            offered = offered.encode("utf-8", "replace")
        return hmac.compare_digest(offered, self._token)

    def visitor(self, authorization: bytes | None, cookie: bytes | None, certificate_subject: str | None):
        """The Visitor these credentials prove, or None.  ``certificate_subject`` is given only for a client
        certificate OpenSSL verified against the configured client CA."""
        if certificate_subject is not None:
            return Visitor("certificate", "certificate:" + certificate_subject)
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer" and self.token_matches(credential.strip()):
                return Visitor("bearer", "bearer")
            return None
        if cookie is not None:
            session = cookie.decode("ascii", "replace")
            expiry = self._sessions.get(session)
            if expiry is not None and self._clock() < expiry:
                return Visitor("session", "session:" + session)
            self._sessions.pop(session, None)
        return None

    def open_session(self) -> str:
        """A new session for a browser that gave the token; the oldest is forgotten beyond MAX_SESSIONS."""
        now = self._clock()
        for session, expiry in list(self._sessions.items()):
            if expiry <= now:
                del self._sessions[session]
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session = self._random_bytes(32).hex()
        self._sessions[session] = now + SESSION_SECONDS
        return session

    def close_session(self, visitor: Visitor) -> None:
        if visitor.method == "session":
            self._sessions.pop(visitor.identity.removeprefix("session:"), None)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def csrf_token(self, visitor: Visitor) -> str:
        return hmac.new(self._csrf_secret, visitor.identity.encode("utf-8"), hashlib.sha256).hexdigest()

    def csrf_matches(self, visitor: Visitor, offered: bytes | str | None) -> bool:
        if offered is None:
            return False
        if isinstance(offered, bytes):
            offered = offered.decode("ascii", "replace")
        return hmac.compare_digest(offered, self.csrf_token(visitor))
