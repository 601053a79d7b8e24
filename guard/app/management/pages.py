"""
The management page's HTML, rendered on the server from a snapshot
(guard.app.snapshot) and the recent refusals.  Pure functions: values in,
bytes out.  Every value is escaped (a peer chooses domains, certificate
subjects and addresses); no inline script or style (the CSP forbids both):
the one script and the one style sheet are files under /static/.
"""

from __future__ import annotations

import time
from html import escape

NO_VALUE = "\N{EM DASH}"


def text(value) -> str:
    """``value`` as HTML text: escaped, quotes too; None as a dash."""
    return NO_VALUE if value is None else escape(str(value), quote=True)


def moment(epoch) -> str:
    if not isinstance(epoch, (int, float)):
        return NO_VALUE
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return NO_VALUE
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    if days or hours or minutes:
        parts.append(f"{minutes} min")
    parts.append(f"{seconds} s")
    return " ".join(parts)


def document(title: str, body: str, script: bool = False) -> bytes:
    scripts = '<script src="/static/chart.js" defer></script>\n' if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{text(title)}</title>\n"
        '<link rel="stylesheet" href="/static/management.css">\n'
        f"{scripts}</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode("utf-8")


def table(headings, rows, empty: str) -> str:
    """An HTML table; ``rows`` are lists of cells already escaped."""
    if not rows:
        return f'<p class="empty">{text(empty)}</p>'
    head = "".join(f"<th>{text(heading)}</th>" for heading in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


def flat(value) -> str:
    """A nested value as one line of text: ``name=value`` pairs for a dict, commas for a list."""
    if isinstance(value, dict):
        return ", ".join(f"{name}={flat(item)}" for name, item in value.items()) or NO_VALUE
    if isinstance(value, (list, tuple)):
        return ", ".join(flat(item) for item in value) or NO_VALUE
    return NO_VALUE if value is None else str(value)


def fields(values: dict | None, empty: str) -> str:
    """A definition list of a dict (nested values shown as text), or ``empty``."""
    if not values:
        return f'<p class="empty">{text(empty)}</p>'
    items = "".join(f"<dt>{text(name)}</dt><dd>{text(flat(value))}</dd>" for name, value in values.items())
    return f"<dl>{items}</dl>"


def expiry(not_after, now: float) -> str:
    if not isinstance(not_after, (int, float)):
        return NO_VALUE
    days = (not_after - now) / 86400
    warning = ' class="warning"' if days < 14 else ""
    return f"<span{warning}>{moment(not_after)} ({days:.0f} days)</span>"


def service_section(snapshot: dict) -> str:
    service = snapshot.get("service") or {}
    state = service.get("state") or "unknown"
    books = snapshot.get("books") or {}
    reason = service.get("halted_reason")
    return (
        '<section id="service"><h2>Service</h2>'
        f'<p><span class="state state-{text(state)}" id="service-state">{text(state)}</span> '
        f"{text(service.get('name'))} {text(service.get('version'))}, "
        f"up {text(duration(service.get('uptime')))} (since {text(moment(service.get('started')))})</p>"
        + (f'<p class="warning">halted: {text(reason)}</p>' if reason else "")
        + audit_failures(snapshot.get("audit") or {})
        + "<h3>Books</h3>"
        + table(("accepted", "delivered", "bounced", "dropped", "in flight"),
                [[text(books.get(name)) for name in ("accepted", "delivered", "bounced", "dropped", "in_flight")]],
                "no books")
        + "</section>"
    )


def audit_failures(audit: dict) -> str:
    """A warning when audit records could not be written (relaying went on if the failure mode is "continue")."""
    failures = audit.get("write_failures") or 0
    if not failures:
        return ""
    return (f'<p class="warning" id="audit-write-failures">audit records not written: {text(failures)} '
            f"(audit_failure = {text(audit.get('failure_mode'))})</p>")


def peers_section(snapshot: dict, now: float) -> str:
    parts = ['<section id="peers"><h2>Peers connected now</h2>']
    for side, content in sorted((snapshot.get("sides") or {}).items()):
        rows = [[
            text(peer.get("peer_domain")), text(peer.get("direction")), text(peer.get("local_domain")),
            text(peer.get("authentication")), text(peer.get("certificate_subject")),
            expiry(peer.get("certificate_not_after"), now), text(duration(peer.get("age"))), text(peer.get("state")),
            f"{text(peer.get('stanzas_in'))} / {text(peer.get('stanzas_out'))}",
            f"{text(peer.get('bytes_in'))} / {text(peer.get('bytes_out'))}",
        ] for peer in content.get("peers") or []]
        parts.append(f'<h3>Side {text(side)}</h3><div class="side" data-side="{text(side)}">')
        parts.append(table(("peer", "direction", "our domain", "authentication", "certificate subject",
                            "certificate expires", "age", "state", "stanzas in / out", "bytes in / out"),
                           rows, "no peer connected"))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def carriers_section(snapshot: dict) -> str:
    rows = [[text(carrier.get(name)) for name in ("side", "sender", "receiver", "state", "queued", "queued_bytes",
                                                    "holding")]
            for carrier in snapshot.get("carriers") or []]
    return ('<section id="carriers"><h2>Outbound links and queues</h2>'
            + table(("side", "from", "to", "state", "queued stanzas", "queued bytes", "holding"), rows,
                    "no outbound link")
            + "</section>")


def links_section(snapshot: dict) -> str:
    return ('<section id="links"><h2>Pair link and HAG</h2>'
            + fields(snapshot.get("pair_link"), "not a pair half: no pair link")
            + "<h2>Release authority</h2>"
            + fields(snapshot.get("release_authority"), "no release authority configured")
            + "</section>")


def policies_section(snapshot: dict, reload_allowed: bool) -> str:
    rows = []
    for policy in snapshot.get("policies") or []:
        cases = policy.get("cases") or {}
        version = policy.get("version") or policy.get("digest")
        shown = f"sha256 {version[:12]}\N{HORIZONTAL ELLIPSIS}" if version == policy.get("digest") and version else version
        results = (f"{text(cases.get('passed'))} passed, {text(cases.get('failed'))} failed"
                   if cases.get("passed") or cases.get("failed") else "no cases")
        rows.append([text(policy.get("direction")), text(policy.get("name")), text(policy.get("file")),
                     text(moment(policy.get("loaded"))), f'<span title="{text(version)}">{text(shown)}</span>',
                     results])
    action = ('<p><a class="button" href="/reload" id="reload-link">Reload the policies\N{HORIZONTAL ELLIPSIS}</a></p>'
              if reload_allowed else '<p class="empty">read-only: reloading is not enabled here</p>')
    return ('<section id="policies"><h2>Policies in force</h2>'
            + table(("direction", "name", "file", "loaded", "version", "cases"), rows, "no policy")
            + action + "</section>")


def refusals_section(refusals: list[dict]) -> str:
    rows = [[text(moment(record.get("time"))), text(record.get("event")), text(record.get("rule")),
             text(record.get("direction")), text(record.get("kind")), text(record.get("sender")),
             text(record.get("recipient")), text(record.get("condition"))] for record in refusals]
    return ('<section id="refusals"><h2>Recent refusals</h2>'
            + table(("time", "event", "rule", "direction", "kind", "from", "to", "condition"), rows,
                    "no refusal in the audit trail's tail")
            + "</section>")


def irc_section(snapshot: dict) -> str:
    """The IRC gateway's bridges, IRC connections and refusals by rule (only in guard-irc's snapshot)."""
    irc = snapshot.get("irc")
    if irc is None:
        return ""
    bridges = [[text(bridge.get(name)) for name in ("room", "network", "channel", "occupants",
                                                    "occupant_connections", "irc_users", "bot_in_channel")]
               for bridge in irc.get("bridges") or []]
    connections = [[text(connection.get(name)) for name in ("key", "nick", "registered", "queue_lines", "queue_bytes",
                                                            "sent", "lost", "last_loss")]
                   for connection in irc.get("connections") or []]
    refusals = [[text(rule), text(count)] for rule, count in sorted((irc.get("refusals_by_rule") or {}).items())]
    return ('<section id="irc"><h2>IRC bridges</h2>'
            + table(("room", "network", "channel", "room occupants", "their IRC connections", "IRC users in the room",
                     "bot in channel"), bridges, "no bridge")
            + "<h3>IRC connections</h3>"
            + table(("connection", "nick", "registered", "queued lines", "queued bytes", "sent", "lost", "last loss"),
                    connections, "no IRC connection")
            + "<h3>Refusals by rule</h3>"
            + table(("rule", "refused"), refusals, "nothing refused")
            + "</section>")


def chart_section() -> str:
    return ('<section id="traffic"><h2>Stanzas per second</h2>'
            '<canvas id="rates-chart" width="900" height="220">stanzas per second by direction and verdict</canvas>'
            '<ul id="rates-legend"></ul>'
            '<p><output id="rates-now">waiting for the first reading</output></p>'
            "</section>")


def header(visitor_method: str | None) -> str:
    signed_out = ('<form method="post" action="/logout" class="inline"><button type="submit">Sign out</button></form>'
                  if visitor_method == "session" else "")
    return f'<header><h1>xmpp-guard</h1><nav><a href="/">status</a>{signed_out}</nav></header>'


def status_page(snapshot: dict, refusals: list[dict], reload_allowed: bool, now: float,
                visitor_method: str | None = None) -> bytes:
    body = (header(visitor_method) + "<main>" + service_section(snapshot) + chart_section()
            + peers_section(snapshot, now) + carriers_section(snapshot) + links_section(snapshot)
            + irc_section(snapshot)
            + policies_section(snapshot, reload_allowed) + refusals_section(refusals) + "</main>")
    return document("xmpp-guard: status", body, script=True)


def login_page(message: str | None = None) -> bytes:
    problem = f'<p class="warning" id="login-problem">{text(message)}</p>' if message else ""
    body = (header(None) + '<main><section id="login"><h2>Sign in</h2>' + problem
            + '<form method="post" action="/login">'
              '<label for="token">Management token</label> '
              '<input type="password" id="token" name="token" autocomplete="current-password" required> '
              '<button type="submit" id="sign-in">Sign in</button></form></section></main>')
    return document("xmpp-guard: sign in", body)


def reload_confirm_page(snapshot: dict, csrf: str, visitor_method: str | None) -> bytes:
    files = "".join(f"<li>{text(policy.get('direction'))}: {text(policy.get('file'))}</li>"
                    for policy in snapshot.get("policies") or [])
    body = (header(visitor_method) + '<main><section id="reload"><h2>Reload the policies?</h2>'
            f"<p>The guard checks the configuration and every policy it names (as <code>guard check-config</code> "
            f"does) and swaps them in only if all pass.</p><ul>{files}</ul>"
            '<form method="post" action="/reload">'
            f'<input type="hidden" name="csrf" value="{text(csrf)}">'
            '<input type="hidden" name="confirm" value="yes">'
            '<button type="submit" id="confirm-reload">Yes, reload</button> <a href="/">No, back</a>'
            "</form></section></main>")
    return document("xmpp-guard: reload", body)


def reload_result_page(reloaded: bool, message: str, visitor_method: str | None) -> bytes:
    outcome = "Policies reloaded" if reloaded else "Reload refused: the policies in force are unchanged"
    body = (header(visitor_method) + f'<main><section id="reload-result" data-reloaded="{str(reloaded).lower()}">'
            f"<h2>{text(outcome)}</h2>"
            f'<pre id="checker-message">{text(message)}</pre><p><a href="/">Back to the status</a></p>'
            "</section></main>")
    return document("xmpp-guard: reload", body)


def message_page(title: str, message: str) -> bytes:
    return document(f"xmpp-guard: {title}",
                    header(None) + f"<main><section><h2>{text(title)}</h2><p>{text(message)}</p></section></main>")
