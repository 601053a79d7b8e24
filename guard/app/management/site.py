"""
The management page on twisted.web: a thin resource that authenticates the
request (guard.app.management.access), asks for a snapshot and the recent
refusals, and writes what guard.app.management.pages renders.  Every
response carries the security headers; every form that changes something
needs its CSRF token; requests with a body larger than ``MAX_BODY_BYTES``
(or chunked) are refused before the body is read.
"""

from __future__ import annotations

import json
from importlib import resources
from urllib.parse import parse_qs

from twisted.protocols.policies import ThrottlingFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import pages
from .access import SESSION_COOKIE, SESSION_SECONDS, Access

SECURITY_HEADERS = {
    b"Content-Security-Policy": (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}
MAX_BODY_BYTES = 4096
TOO_MANY_REQUESTS = 429
MAX_CONNECTIONS = 16  # open connections to the page at once; more are closed as they come
HTML = b"text/html; charset=utf-8"
STATIC = {
    b"/static/chart.js": ("chart.js", b"text/javascript; charset=utf-8"),
    b"/static/management.css": ("management.css", b"text/css; charset=utf-8"),
}


def static_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class ReloadAction:
    """The reload the page offers: ``check`` raises with the checker's message (the check ``guard check-config``
    and ``guard reload`` run), then ``reload`` swaps the policies in (False if it refused)."""

    def __init__(self, check, reload, refusal=Exception):
        self._check = check
        self._reload = reload
        self._refusal = refusal

    def __call__(self) -> tuple[bool, str]:
        try:
            summary = self._check()
        except self._refusal as problem:
            return False, str(problem)
        if not self._reload():
            return False, "the guard refused to swap the policies in (see its log); the policies in force are unchanged"
        return True, f"checked and reloaded ({summary})"


class ManagementPage(Resource):
    """Every path of the management page, behind the security headers and authentication."""

    isLeaf = True

    def __init__(self, access: Access, snapshot_of, counts_of, refusals_of, clock, reload=None, tls=False,
                 client_certificates=False):
        super().__init__()
        self.access = access
        self.snapshot_of = snapshot_of
        self.counts_of = counts_of
        self.refusals_of = refusals_of
        self.clock = clock
        self.reload = reload
        self.tls = tls
        self.client_certificates = client_certificates

    # -- dispatch -------------------------------------------------------------

    def render(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        path, method = request.path, request.method
        if path in STATIC:
            if method not in (b"GET", b"HEAD"):
                return self._refuse(request, http.NOT_ALLOWED, "method not allowed", "use GET")
            name, content_type = STATIC[path]
            request.setHeader(b"Content-Type", content_type)
            return static_file(name)
        if path == b"/login":
            return self._login(request)
        visitor = self.access.visitor(request.getHeader(b"authorization"), request.getCookie(SESSION_COOKIE),
                                      self._certificate_subject(request))
        if visitor is None:
            request.setResponseCode(http.UNAUTHORIZED)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="xmpp-guard"')
            request.setHeader(b"Content-Type", HTML)
            problem = "wrong or missing credentials" if request.getHeader(b"authorization") else None
            return pages.login_page(problem)
        route = {
            (b"GET", b"/"): self._status,
            (b"GET", b"/rates.json"): self._rates,
            (b"GET", b"/reload"): self._confirm_reload,
            (b"POST", b"/reload"): self._reload,
            (b"POST", b"/logout"): self._logout,
        }.get((method, path))
        if route is None:
            known = path in (b"/", b"/rates.json", b"/reload", b"/logout")
            return self._refuse(request, http.NOT_ALLOWED if known else http.NOT_FOUND,
                                "method not allowed" if known else "not found", "no such page")
        return route(request, visitor)

    # -- pages ----------------------------------------------------------------

    def _status(self, request, visitor):
        request.setHeader(b"Content-Type", HTML)
        return pages.status_page(self.snapshot_of(), self.refusals_of(), self.reload is not None, self.clock(),
                                 visitor.method)

    def _rates(self, request, visitor):
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"time": self.clock(), "counts": self.counts_of()}, sort_keys=True).encode("utf-8")

    def _confirm_reload(self, request, visitor):
        if self.reload is None:
            return self._refuse(request, http.FORBIDDEN, "read-only", "reloading is not enabled (allow_reload)")
        request.setHeader(b"Content-Type", HTML)
        return pages.reload_confirm_page(self.snapshot_of(), self.access.csrf_token(visitor), visitor.method)

    def _reload(self, request, visitor):
        if self.reload is None:
            return self._refuse(request, http.FORBIDDEN, "read-only", "reloading is not enabled (allow_reload)")
        form = self._form(request)
        if not self.access.csrf_matches(visitor, form.get("csrf")):
            return self._refuse(request, http.FORBIDDEN, "refused", "the form's CSRF token is missing or wrong")
        if form.get("confirm") != "yes":
            return self._refuse(request, http.BAD_REQUEST, "not confirmed", "confirm the reload first")
        reloaded, message = self.reload()
        request.setResponseCode(http.OK if reloaded else http.CONFLICT)
        request.setHeader(b"Content-Type", HTML)
        return pages.reload_result_page(reloaded, message, visitor.method)

    def _logout(self, request, visitor):
        if not self.access.csrf_matches(visitor, self._form(request).get("csrf")):
            return self._refuse(request, http.FORBIDDEN, "refused", "the form's CSRF token is missing or wrong")
        self.access.close_session(visitor)
        self._set_session_cookie(request, "", max_age=0)
        return self._redirect(request, b"/login")

    def _login(self, request):
        if request.method == b"GET":
            request.setHeader(b"Content-Type", HTML)
            return pages.login_page()
        if request.method != b"POST":
            return self._refuse(request, http.NOT_ALLOWED, "method not allowed", "use GET or POST")
        held = self.access.sign_in_held
        session = self.access.sign_in(self._form(request).get("token"))
        if session is None:
            request.setResponseCode(TOO_MANY_REQUESTS if held else http.UNAUTHORIZED)
            request.setHeader(b"Content-Type", HTML)
            return pages.login_page("too many wrong tokens: wait a minute" if held else "wrong token")
        self._set_session_cookie(request, session, max_age=SESSION_SECONDS)
        return self._redirect(request, b"/")

    # -- small effects --------------------------------------------------------

    def _set_session_cookie(self, request, session: str, max_age: int):
        request.addCookie(SESSION_COOKIE, session.encode("ascii"), path=b"/", max_age=str(max_age).encode("ascii"),
                          httpOnly=True, secure=self.tls, sameSite="strict")

    @staticmethod
    def _redirect(request, location: bytes):
        request.setResponseCode(http.SEE_OTHER)
        request.setHeader(b"Location", location)
        request.setHeader(b"Content-Type", HTML)
        return pages.message_page("moved", "see " + location.decode("ascii"))

    @staticmethod
    def _refuse(request, code: int, title: str, message: str):
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", HTML)
        return pages.message_page(title, message)

    @staticmethod
    def _form(request) -> dict[str, str]:
        """The urlencoded form in the body (bounded by the channel): the first value of each field."""
        request.content.seek(0)
        body = request.content.read(MAX_BODY_BYTES + 1)[:MAX_BODY_BYTES]
        try:
            parsed = parse_qs(body.decode("ascii"), max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            return {}
        return {name: values[0] for name, values in parsed.items()}

    def _certificate_subject(self, request) -> str | None:
        """The subject of the client certificate OpenSSL verified (only when a client CA is configured)."""
        if not self.client_certificates:
            return None
        transport = getattr(request.channel, "transport", None)
        get = getattr(transport, "getPeerCertificate", None)
        certificate = get() if get is not None else None
        if certificate is None:
            return None
        return ",".join(f"{name.decode()}={value.decode('utf-8', 'replace')}"
                        for name, value in certificate.get_subject().get_components())


class BoundedChannel(http.HTTPChannel):
    """An HTTP channel that refuses, before reading it, a body over MAX_BODY_BYTES or of unknown length."""

    def headerReceived(self, line):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            self._respondToBadRequestAndDisconnect()
            return False
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                self._respondToBadRequestAndDisconnect()
                return False
        return super().headerReceived(line)


def management_site(page: ManagementPage, reactor=None) -> Site:
    """The HTTP factory serving ``page`` (``reactor`` runs its connection timeouts)."""
    site = Site(page, reactor=reactor)
    site.protocol = BoundedChannel
    site.displayTracebacks = False
    site.noisy = False
    return site


def at_most_connections(factory, limit: int = MAX_CONNECTIONS):
    """``factory`` behind a bound on the connections open at once (the one past it is closed at once)."""
    return ThrottlingFactory(factory, maxConnectionCount=limit)
