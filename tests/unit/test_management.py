"""The management page without a browser: authentication, security headers, CSRF, reload, escaping and the
bounds on what it reads, through raw HTTP bytes in and out of its twisted.web channel."""

from __future__ import annotations

import json
import os
import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from guard.app.config import ConfigError, load_config
from guard.app.management.access import MAX_SESSIONS, SESSION_SECONDS, Access
from guard.app.management.rates import stanza_counts
from guard.app.management.refusals import recent_refusals
from guard.app.management.site import MAX_BODY_BYTES, SECURITY_HEADERS, ManagementPage, ReloadAction, management_site

TOKEN = "t" * 40
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HOSTILE = '<script>alert("x")</script>'


def a_snapshot(peer_domain="red.example", subject="CN=red.example"):
    """A snapshot of the documented shape (guard.app.snapshot) with one inbound peer on side red."""
    stream = {"id": "s1", "side": "red", "direction": "inbound", "peer_domain": peer_domain,
              "local_domain": "blue.example", "authentication": "certificate", "certificate_subject": subject,
              "certificate_not_after": 1_900_000_000, "started": 1_700_000_000, "age": 75, "state": "open",
              "stanzas_in": 12, "stanzas_out": 3, "bytes_in": 4096, "bytes_out": 700}
    return {
        "service": {"name": "xmpp-guard", "version": "0.1", "started": 1_700_000_000, "uptime": 3725,
                    "state": "running", "halted_reason": None},
        "books": {"accepted": 15, "delivered": 12, "bounced": 1, "dropped": 2, "in_flight": 0},
        "sides": {"red": {"peers": [stream]}, "blue": {"peers": []}},
        "carriers": [{"side": "blue", "sender": "red.example", "receiver": "blue.example", "state": "open",
                      "queued": 0, "queued_bytes": 0, "holding": False}],
        "pair_link": None,
        "release_authority": None,
        "policies": [{"direction": "red->blue", "file": "/etc/guard/red.toml", "name": "red export",
                      "loaded": 1_700_000_100, "version": "3", "cases": {"passed": 9, "failed": 0}}],
    }


class Harness:
    """A page on a fake clock, what it was asked, and one HTTP exchange at a time."""

    def __init__(self, snapshot=None, reload_answers=None, tls=False, token=TOKEN, refusals=()):
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)
        self.reloads = []
        self.snapshot = snapshot or a_snapshot()
        reload = None
        if reload_answers is not None:
            def reload():
                self.reloads.append("reload")
                return reload_answers
        self.counts = {"red->blue passed": 5.0}
        self.page = ManagementPage(Access(token, self.clock.seconds), lambda: self.snapshot, lambda: self.counts,
                                   lambda: list(refusals), self.clock.seconds, reload=reload, tls=tls)

    def exchange(self, raw: bytes):
        """(status, headers by lower-case name, body) of the response to ``raw``."""
        channel = management_site(self.page, self.clock).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower().decode(), []).append(value.strip().decode())
        channel.connectionLost(None)
        return status, headers, body

    def get(self, path, *extra):
        return self.exchange(request("GET", path, extra))

    def post(self, path, form: str, *extra):
        return self.exchange(request("POST", path, extra, form.encode()))

    def sign_in(self) -> str:
        status, headers, _ = self.post("/login", f"token={TOKEN}")
        assert status == 303
        return re.match(r"guard_session=([0-9a-f]+)", headers["set-cookie"][0]).group(1)

    def csrf(self, cookie_header: str) -> str:
        status, _, body = self.get("/reload", cookie_header)
        assert status == 200
        return re.search(rb'name="csrf" value="([0-9a-f]+)"', body).group(1).decode()


def request(method, path, extra=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if method == "POST":
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BEARER = f"Authorization: Bearer {TOKEN}"


# -- authentication -------------------------------------------------------------------------------------------------

def test_without_credentials_every_page_is_refused_and_shows_only_the_sign_in_form():
    """No token, no cookie: 401 with a Bearer challenge and the login form, nothing of the snapshot."""
    guard = Harness()
    for path in ("/", "/rates.json", "/reload", "/anything"):
        status, headers, body = guard.get(path)
        assert (status, headers["www-authenticate"]) == (401, ['Bearer realm="xmpp-guard"'])
        assert b'action="/login"' in body and b"red.example" not in body and b"passed" not in body


def test_a_wrong_bearer_token_is_refused_and_the_right_one_is_let_in():
    """The token in Authorization: Bearer is the credential; anything else is a 401."""
    guard = Harness()
    assert guard.get("/", f"Authorization: Bearer {'x' * 40}")[0] == 401
    assert guard.get("/", f"Authorization: Basic {TOKEN}")[0] == 401
    status, _, body = guard.get("/", BEARER)
    assert status == 200 and b"red.example" in body


def test_signing_in_sets_an_httponly_samesite_strict_cookie_that_opens_the_page():
    """The login form with the token answers 303 to / with a session cookie (HttpOnly, SameSite=Strict, not Secure
    over plain HTTP); the cookie opens the page; a wrong token is a 401 and sets nothing."""
    guard = Harness()
    status, headers, _ = guard.post("/login", "token=wrong")
    assert status == 401 and "set-cookie" not in headers
    status, headers, _ = guard.post("/login", f"token={TOKEN}")
    cookie = headers["set-cookie"][0]
    assert status == 303 and headers["location"] == ["/"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Secure" not in cookie
    session = re.match(r"guard_session=([0-9a-f]{64});", cookie).group(1)
    assert guard.get("/", f"Cookie: guard_session={session}")[0] == 200
    assert guard.get("/", f"Cookie: guard_session={'0' * 64}")[0] == 401


def test_the_session_cookie_is_secure_when_the_page_is_served_over_tls():
    """Over TLS the session cookie carries Secure."""
    status, headers, _ = Harness(tls=True).post("/login", f"token={TOKEN}")
    assert status == 303 and "; Secure" in headers["set-cookie"][0]


def test_a_session_expires_and_at_most_max_sessions_are_remembered():
    """A session is good for SESSION_SECONDS on the injected clock; the oldest is forgotten beyond MAX_SESSIONS."""
    clock = MemoryReactorClock()
    access = Access(TOKEN, clock.seconds, random_bytes=os.urandom)
    first = access.open_session()
    assert access.visitor(None, first.encode(), None).method == "session"
    clock.advance(SESSION_SECONDS)
    assert access.visitor(None, first.encode(), None) is None
    sessions = [access.open_session() for _ in range(MAX_SESSIONS + 3)]
    assert access.sessions == MAX_SESSIONS
    assert access.visitor(None, sessions[0].encode(), None) is None
    assert access.visitor(None, sessions[-1].encode(), None) is not None


def test_a_certificate_verified_by_the_client_ca_is_a_visitor_and_nothing_else_is():
    """A certificate subject (given only after OpenSSL verified it against the client CA) signs in; without a token
    configured, a bearer header does not."""
    access = Access(None, MemoryReactorClock().seconds)
    assert access.visitor(None, None, "CN=operator").identity == "certificate:CN=operator"
    assert access.visitor(b"Bearer anything", None, None) is None
    assert not access.token_matches("anything")


# -- security headers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, signed_in", [
    ("GET", "/", True), ("GET", "/", False), ("GET", "/rates.json", True), ("GET", "/nowhere", True),
    ("GET", "/static/chart.js", False), ("GET", "/static/management.css", False), ("GET", "/login", False),
    ("POST", "/login", False), ("GET", "/reload", True), ("POST", "/reload", True), ("DELETE", "/", True),
])
def test_every_response_carries_the_security_headers(method, path, signed_in):
    """The CSP, X-Frame-Options, nosniff, no-referrer and no-store are on every answer, refusals included."""
    guard = Harness()
    raw = request(method, path, (BEARER,) if signed_in else (), b"x=1" if method == "POST" else b"")
    _, headers, _ = guard.exchange(raw)
    assert headers["content-security-policy"] == [CSP]
    for name, value in SECURITY_HEADERS.items():
        assert headers[name.decode().lower()] == [value.decode()]


def test_the_pages_have_no_inline_script_or_style():
    """The CSP forbids inline code: the page links one script and one style sheet and has no style attribute,
    <style> or inline <script>."""
    _, _, body = Harness(reload_answers=(True, "")).get("/", BEARER)
    assert b"style=" not in body and b"<style" not in body and not re.search(rb"\son[a-z]+=", body)
    assert re.findall(rb"<script[^>]*>", body) == [b'<script src="/static/chart.js" defer>']
    assert b"</script>" in body and b"<script src=\"/static/chart.js\" defer></script>" in body


# -- the status page -------------------------------------------------------------------------------------------------

def test_the_status_page_shows_the_snapshot():
    """State, uptime, books, the peer with its authentication, subject, age and counts, the carrier and the policy
    with its cases."""
    _, _, body = Harness().get("/", BEARER)
    page = body.decode()
    for expected in ("running", "1 h 2 min 5 s", "red.example", "inbound", "certificate", "CN=red.example",
                     "1 min 15 s", "12 / 3", "4096 / 700", "red export", "/etc/guard/red.toml", "9 passed, 0 failed",
                     "no peer connected", "not a pair half", "no release authority configured"):
        assert expected in page, expected


def test_audit_records_not_written_are_shown_with_the_failure_mode():
    """A trail that failed to write (relaying went on, audit_failure = "continue") is a warning on the status page
    with the count; none is shown while every record was written."""
    assert b"audit-write-failures" not in Harness().get("/", BEARER)[2]
    snapshot = {**a_snapshot(), "audit": {"write_failures": 7, "failure_mode": "continue"}}
    page = Harness(snapshot=snapshot).get("/", BEARER)[2].decode()
    assert ('<p class="warning" id="audit-write-failures">audit records not written: 7 (audit_failure = continue)</p>'
            in page)


def test_the_page_reads_the_audit_failures_of_the_process():
    """What the page is given of a process: its trail's write_failures and the configured failure mode."""
    from types import SimpleNamespace

    from guard.app.management import audit_status

    process = SimpleNamespace(audit=SimpleNamespace(write_failures=3),
                              config=SimpleNamespace(audit_failure="continue"))
    assert audit_status(process) == {"write_failures": 3, "failure_mode": "continue"}


def test_what_a_peer_controls_is_escaped():
    """A domain, a certificate subject and a refusal's addresses with markup in them come out as text."""
    refusal = {"time": 1_700_000_000, "event": "drop", "rule": HOSTILE, "direction": "red->blue",
               "sender": HOSTILE, "recipient": "a@b", "condition": None}
    guard = Harness(snapshot=a_snapshot(peer_domain=HOSTILE, subject=f'CN="{HOSTILE}"'), refusals=[refusal])
    _, _, body = guard.get("/", BEARER)
    assert HOSTILE.encode() not in body and b"<script>alert" not in body
    assert body.count(b"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 4


def test_the_rates_endpoint_gives_the_counts_and_the_time():
    """/rates.json answers the stanza counts (from the metrics registry) and the clock, as JSON."""
    status, headers, body = Harness().get("/rates.json", BEARER)
    assert status == 200 and headers["content-type"] == ["application/json"]
    assert json.loads(body) == {"time": 1_700_000_000, "counts": {"red->blue passed": 5.0}}


def test_the_stanza_counts_sum_the_metrics_counter_over_kinds():
    """stanza_counts sums (direction, kind, verdict) counts per direction and verdict."""
    totals = {("red->blue", "message", "passed"): 3, ("red->blue", "presence", "passed"): 2,
              ("blue->red", "iq", "dropped"): 1}
    assert stanza_counts(totals) == {"red->blue passed": 5, "blue->red dropped": 1}
    assert stanza_counts({}) == {}


# -- reload: read-only, CSRF, confirmation, the checker's message ----------------------------------------------------

def test_read_only_offers_no_reload_and_refuses_one():
    """Without allow_reload the page has no reload link and /reload answers 403 to GET and POST."""
    guard = Harness()
    _, _, body = guard.get("/", BEARER)
    assert b'href="/reload"' not in body and b"read-only" in body
    assert guard.get("/reload", BEARER)[0] == 403
    assert guard.post("/reload", "confirm=yes", BEARER)[0] == 403


def test_a_reload_needs_the_csrf_token_of_the_same_session_and_a_confirmation():
    """A POST without the CSRF token, with another session's, or unconfirmed, reloads nothing."""
    guard = Harness(reload_answers=(True, "checked and reloaded"))
    mine, theirs = guard.sign_in(), guard.sign_in()
    token = guard.csrf(f"Cookie: guard_session={mine}")
    other = guard.csrf(f"Cookie: guard_session={theirs}")
    cookie = f"Cookie: guard_session={mine}"
    assert guard.post("/reload", "confirm=yes", cookie)[0] == 403
    assert guard.post("/reload", f"csrf={other}&confirm=yes", cookie)[0] == 403
    assert guard.post("/reload", f"csrf={token}", cookie)[0] == 400
    assert guard.reloads == []
    status, _, body = guard.post("/reload", f"csrf={token}&confirm=yes", cookie)
    assert status == 200 and guard.reloads == ["reload"] and b"Policies reloaded" in body


def test_a_refused_reload_shows_the_checkers_message_escaped():
    """The checker's refusal comes back as a 409 with its message, escaped."""
    guard = Harness(reload_answers=(False, f"policy.toml: rules[0].id: {HOSTILE}"))
    status, _, body = guard.post("/reload", f"csrf={guard.csrf(BEARER)}&confirm=yes", BEARER)
    assert status == 409 and b"Reload refused" in body
    assert b"rules[0].id: &lt;script&gt;" in body and HOSTILE.encode() not in body


def test_signing_out_needs_the_csrf_token_and_forgets_the_session():
    """POST /logout with the session's CSRF token ends the session; without it nothing changes."""
    guard = Harness(reload_answers=(True, ""))
    session = guard.sign_in()
    cookie = f"Cookie: guard_session={session}"
    assert guard.post("/logout", "", cookie)[0] == 403
    assert guard.post("/logout", f"csrf={guard.csrf(cookie)}", cookie)[0] == 303
    assert guard.get("/", cookie)[0] == 401


def test_the_reload_action_answers_the_checkers_message_and_reloads_only_after_it_passes():
    """ReloadAction runs the check first: its ConfigError is the message and nothing reloads; then the reload."""
    reloads = []

    def refusing():
        raise ConfigError("guard.toml: sides.red.policy: broken")

    assert ReloadAction(refusing, lambda: reloads.append(1) or True, ConfigError)() == (
        False, "guard.toml: sides.red.policy: broken")
    assert reloads == []
    assert ReloadAction(lambda: "red: 1 domains", lambda: reloads.append(1) or True, ConfigError)() == (
        True, "checked and reloaded (red: 1 domains)")
    assert reloads == [1]


# -- bounds -------------------------------------------------------------------------------------------------------

def test_a_body_over_the_bound_or_chunked_is_refused_before_it_is_read():
    """Content-Length over MAX_BODY_BYTES, or chunked transfer, is a 400 and reaches no page."""
    guard = Harness()
    raw = (f"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    assert guard.exchange(raw)[0] == 400
    raw = b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntoken\r\n0\r\n\r\n"
    assert guard.exchange(raw)[0] == 400
    status, _, _ = guard.post("/login", "token=" + "x" * (MAX_BODY_BYTES - 6))
    assert status == 401


def record(number, event="drop", **extra):
    entry = {"time": 1_700_000_000 + number, "event": event, "rule": f"rule-{number}", "rev": 1,
             "direction": "red->blue", "kind": "message", "sender": f"a{number}@red.example",
             "recipient": "b@blue.example", "text": "a peer's words", "detail": "body text", "hash": "ab" * 32}
    entry.update(extra)
    return json.dumps(entry)


def test_the_recent_refusals_are_the_newest_first_without_bodies_or_peer_words(tmp_path):
    """Drops, bounces and lost bounces, newest first, at most ``shown``; passes, start records and unreadable lines
    skipped; only rule, direction, addresses and condition kept (no text, no detail); unknown fields ignored."""
    trail = tmp_path / "audit.jsonl"
    lines = [record(n, "bounce" if n % 2 else "drop", condition="not-allowed") for n in range(8)]
    lines[3:3] = [record(100, "pass"), "not json", json.dumps({"event": "start", "rule": "guard:start"}), "[1]"]
    trail.write_text("\n".join(lines) + "\n")
    found = recent_refusals(str(trail), shown=5)
    assert [entry["rule"] for entry in found] == ["rule-7", "rule-6", "rule-5", "rule-4", "rule-3"]
    assert set(found[0]) == {"time", "event", "rule", "direction", "kind", "sender", "recipient", "condition"}
    assert found[0]["condition"] == "not-allowed" and found[0]["event"] == "bounce"
    assert recent_refusals(str(tmp_path / "absent.jsonl")) == [] and recent_refusals(None) == []


def test_only_the_tail_of_the_audit_file_is_read(tmp_path):
    """Past ``tail_bytes`` from the end nothing is read, and the line cut at the start of the tail is skipped."""
    trail = tmp_path / "audit.jsonl"
    lines = [record(n) for n in range(200)]
    trail.write_text("\n".join(lines) + "\n")
    tail_bytes = sum(len(line) + 1 for line in lines[-10:]) + 5  # ten whole lines and the end of another
    found = recent_refusals(str(trail), tail_bytes=tail_bytes, shown=100)
    assert [entry["rule"] for entry in found] == [f"rule-{n}" for n in range(199, 189, -1)]


# -- configuration ------------------------------------------------------------------------------------------------

def management_config(tmp_path, block: str, token_mode=0o600, token=TOKEN):
    from guard.lab.topology import render_guard_config

    from .streams.sides import pki

    token_file = tmp_path / "management.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, token_mode)
    path = tmp_path / "guard.toml"
    path.write_text(render_guard_config(pki(), "certificate", log_level="info")
                    + "\n[management]\n" + block.replace("TOKEN_FILE", str(token_file)))
    return str(path), str(token_file)


def test_the_management_table_is_off_unless_listen_is_set_and_listens_on_loopback_by_default(tmp_path):
    """No [management]: no page; a tcp: listen without interface= gets 127.0.0.1; read-only by default."""
    from guard.lab.topology import render_guard_config

    from .streams.sides import pki

    plain = tmp_path / "plain.toml"
    plain.write_text(render_guard_config(pki(), "certificate", log_level="info"))
    assert load_config(str(plain)).management is None
    path, token_file = management_config(tmp_path, 'listen = "tcp:9270"\ntoken_file = "TOKEN_FILE"\n')
    management = load_config(path).management
    assert management.listen == "tcp:9270:interface=127.0.0.1" and management.token_file == token_file
    assert management.allow_reload is False and management.tls is False


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_token_file_readable_by_group_or_others_is_refused_naming_file_and_key(tmp_path, mode):
    """The guard refuses to start with a token file that anyone but its user can read, naming file and key."""
    path, token_file = management_config(tmp_path, 'listen = "tcp:9270"\ntoken_file = "TOKEN_FILE"\n', mode)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "management.token_file" in str(refused.value) and token_file in str(refused.value)
    assert f"{mode:04o}" in str(refused.value)


@pytest.mark.parametrize("block, message", [
    ('listen = "tcp:9270"\n', "management: needs token_file or client_ca"),
    ('token_file = "TOKEN_FILE"\n', "management.listen: is required"),
    ('listen = "nonsense:1"\ntoken_file = "TOKEN_FILE"\n', "management.listen: not a Twisted server endpoint"),
    ('listen = "tcp:9270"\ntoken_file = "TOKEN_FILE"\nallow_reload = "yes"\n', "management.allow_reload: must be"),
    ('listen = "tcp:9270"\nclient_ca = "TOKEN_FILE"\n', "management.client_ca: client certificates need TLS"),
    ('listen = "tcp:9270"\ntoken_file = "TOKEN_FILE"\nport = 1\n', "management.port: unknown key"),
])
def test_a_management_table_that_would_serve_without_authentication_or_is_wrong_is_refused(tmp_path, block, message):
    """Each mistake in [management] is a ConfigError naming the key."""
    path, _ = management_config(tmp_path, block)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_a_short_token_is_refused(tmp_path):
    """A token file must hold at least 32 characters."""
    path, _ = management_config(tmp_path, 'listen = "tcp:9270"\ntoken_file = "TOKEN_FILE"\n', token="short")
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_config(path)


def test_after_too_many_wrong_tokens_the_sign_in_form_is_held_for_a_minute():
    """FAILED_SIGN_INS wrong tokens within FAILED_SIGN_IN_SECONDS hold the form (429, even for the right token);
    once they are older, the right token signs in again."""
    from guard.app.management.access import FAILED_SIGN_IN_SECONDS, FAILED_SIGN_INS

    guard = Harness()
    for _ in range(FAILED_SIGN_INS):
        assert guard.post("/login", "token=wrong")[0] == 401
    status, headers, body = guard.post("/login", f"token={TOKEN}")
    assert status == 429 and "set-cookie" not in headers and b"too many wrong tokens" in body
    guard.clock.advance(FAILED_SIGN_IN_SECONDS)
    assert guard.post("/login", f"token={TOKEN}")[0] == 303


def test_the_page_takes_at_most_max_connections_at_once():
    """The listener's factory builds MAX_CONNECTIONS connections; the next is refused until one closes."""
    from guard.app.management.site import MAX_CONNECTIONS, at_most_connections

    guard = Harness()
    factory = at_most_connections(management_site(guard.page, guard.clock))
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    opened = [factory.buildProtocol(address) for _ in range(MAX_CONNECTIONS)]
    for protocol in opened:
        protocol.makeConnection(StringTransport())
    assert None not in opened and factory.buildProtocol(address) is None
    opened[0].connectionLost(None)
    assert factory.buildProtocol(address) is not None
